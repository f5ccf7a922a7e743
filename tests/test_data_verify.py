"""xory data verify on a temporary copy of a few real photos with faults put in: a truncated JPEG, a text file
named .jpg, an exact copy, a smaller re-encoded copy, a mirrored copy, one photo under two labels, a tiny photo and
a bear in a face folder. --fix moves exactly the offenders to _quarantine/ with a log; undo puts them back."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import BEARS, KPOP, photos
from xory.cli import main
from xory.data.moves import ActionLog, move_file
from xory.data.verify import NEAR_BITS, fix, hamming, phash, verify
from xory.images import open_image


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tree(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256 of its bytes)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# four photos of each, none a near-duplicate of another (checked with `xory data verify` on all of kpop)
PICKS = {"bts/jimin": photos(KPOP / "bts" / "jimin")[::5][:4], "bts/v": photos(KPOP / "bts" / "v")[:4],
         "exo/kai": photos(KPOP / "exo" / "kai")[:4]}


@pytest.fixture()
def faulty(tmp_path) -> Path:
    root = tmp_path / "kpop"
    picks = PICKS
    for label, files in picks.items():
        (root / label).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, root / label / f.name)
    jimin, v = picks["bts/jimin"], picks["bts/v"]
    (root / "bts/jimin/zz-copy.jpg").write_bytes(jimin[0].read_bytes())
    small = open_image(jimin[1]).image
    (root / "bts/jimin/zz-small.jpg").write_bytes(jpeg(small.resize((small.width * 3 // 4, small.height * 3 // 4)), 60))
    flipped = ImageOps.mirror(open_image(v[0]).image)
    flipped = flipped.resize((flipped.width * 9 // 10, flipped.height * 9 // 10))
    (root / "bts/v/zz-mirror.jpg").write_bytes(jpeg(flipped))
    (root / "exo/kai/zz-jimin.jpg").write_bytes(jimin[2].read_bytes())
    data = v[1].read_bytes()
    (root / "bts/v/zz-truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    (root / "bts/v/zz-text.jpg").write_bytes(b"this is not a photo\n")
    other = open_image(photos(KPOP / "exo" / "chen")[0]).image
    (root / "exo/kai/zz-tiny.jpg").write_bytes(jpeg(other.resize((48, 60))))
    shutil.copy2(photos(BEARS / "grizzly")[0], root / "bts/jimin/zz-bear.jpg")
    (root / "bts/jimin/notes.txt").write_text("where these came from\n")
    return root


def test_phash_sees_resized_recompressed_and_mirrored_copies_but_not_other_photos():
    a, b = (open_image(p).image for p in photos(KPOP / "bts" / "jimin")[:2])
    ha = phash(a)[None]
    resized = open_image(jpeg(a.resize((a.width // 2, a.height // 2)), 50)).image
    assert hamming(ha, phash(resized)[None])[0, 0] <= 2
    assert hamming(ha, phash(ImageOps.mirror(ImageOps.mirror(a)))[None])[0, 0] == 0
    mirrored = ImageOps.mirror(a)
    assert hamming(ha, phash(mirrored)[None])[0, 0] > 3 * NEAR_BITS  # a mirror image needs the mirror hash ...
    assert hamming(phash(ImageOps.mirror(mirrored))[None], ha)[0, 0] == 0  # ... which verify also keeps
    assert hamming(ha, phash(b)[None])[0, 0] > 3 * NEAR_BITS
    assert phash(a).dtype == np.uint8 and phash(a).shape == (8,)


def test_verify_finds_each_fault(faulty):
    r = verify(faulty, progress=False)
    p = lambda rel: str(faulty / rel)  # noqa: E731
    jimin, v = photos(faulty / "bts/jimin"), photos(faulty / "bts/v")
    assert r.photos == 20 and r.ignored == [(p("bts/jimin/notes.txt"), "not an image file (suffix '.txt')")]
    got = {(f.kind, Path(f.path).relative_to(faulty).as_posix()): f.reason for f in r.findings}
    originals = [q.name for q in PICKS["bts/jimin"]]
    v_first = PICKS["bts/v"][0].name
    assert got == {
        ("unreadable", "bts/v/zz-text.jpg"): "not an image (unrecognised format)",
        ("unreadable", "bts/v/zz-truncated.jpg"): "truncated or damaged image",
        ("tiny", "exo/kai/zz-tiny.jpg"): "48x60 px",
        ("duplicate", "bts/jimin/zz-copy.jpg"): f"copy of {p('bts/jimin/' + originals[0])}",
        ("near-duplicate", "bts/jimin/zz-small.jpg"): f"copy of {p('bts/jimin/' + originals[1])}",
        ("near-duplicate", "bts/v/zz-mirror.jpg"): f"copy of {p('bts/v/' + v_first)}",
        ("conflict", "bts/jimin/" + originals[2]): "same photo under another label (bts/jimin, exo/kai)",
        ("conflict", "exo/kai/zz-jimin.jpg"): "same photo under another label (bts/jimin, exo/kai)",
        ("no-face", "bts/jimin/zz-bear.jpg"): "no face found",
        ("no-face", "exo/kai/zz-tiny.jpg"): "no face found",
    }
    assert r.counts() == {"unreadable": 2, "tiny": 1, "duplicate": 1, "near-duplicate": 2, "conflict": 2,
                               "no-face": 2, "duplicate_groups": 1, "near_duplicate_groups": 2, "conflict_groups": 1,
                               "crops": 0}
    conflict = next(g for g in r.groups if g.kind == "conflict")
    assert conflict.keep is None and conflict.how == "same bytes"
    assert sorted(conflict.labels) == ["bts/jimin", "exo/kai"]
    assert r.face_share == pytest.approx(16 / 18)  # of the readable photos, the bear and the tiny one show no face
    assert len(jimin) == 8 and len(v) == 7
    text = str(r)
    assert "conflicts (one photo under two labels): 1 groups, 2 photos" in text
    assert "unreadable: " + p("bts/v/zz-truncated.jpg") + ": truncated or damaged image" in text


def test_fix_quarantines_the_offenders_and_undo_brings_them_back(faulty, capsys):
    before = tree(faulty)
    assert main(["data", "verify", str(faulty), "--fix", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "moved 7 photos to _quarantine/" in printed and f"xory clean --undo {faulty}" in printed
    after = tree(faulty)
    quarantined = sorted(k for k in after if k.startswith("_quarantine/") and not k.endswith(".jsonl"))
    assert len(quarantined) == 7
    assert "_quarantine/bts/v/zz-truncated.jpg" in quarantined and "_quarantine/exo/kai/zz-jimin.jpg" in quarantined
    # nothing lost: every file is still there, under its old or its quarantine name, with the same bytes
    moved_back = {k.removeprefix("_quarantine/"): h for k, h in after.items() if k.startswith("_quarantine/")}
    assert {**{k: h for k, h in after.items() if not k.startswith("_quarantine/")}, **moved_back} == \
        {**before, "log.jsonl": moved_back["log.jsonl"]}
    assert "bts/jimin/zz-bear.jpg" in after and "exo/kai/zz-tiny.jpg" in after  # reported, not moved by default
    log = [json.loads(line) for line in (faulty / "_quarantine/log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["action"] == "verify-fix" and len(log[0]["moves"]) == 7
    assert {"src": "bts/v/zz-text.jpg", "dst": "_quarantine/bts/v/zz-text.jpg"} in log[0]["moves"]

    again = verify(faulty, progress=False)
    assert again.offenders() == [] and again.counts()["no-face"] == 2 and again.photos == 13

    assert main(["clean", "--undo", str(faulty)]) == 0
    assert "undid verify-fix #1: 7 photo(s) back" in capsys.readouterr().out
    restored = tree(faulty)
    assert {k: h for k, h in restored.items() if not k.startswith("_quarantine/")} == before
    assert ActionLog(faulty).pending() == []
    assert main(["clean", "--undo", str(faulty)]) == 0
    assert "nothing to undo" in capsys.readouterr().out


def test_fix_can_move_other_kinds_and_never_overwrites(faulty):
    r = verify(faulty, faces=False, progress=False)
    assert r.face_share is None and r.counts()["no-face"] == 0
    occupied = faulty / "_quarantine" / "exo" / "kai" / "zz-tiny.jpg"
    occupied.parent.mkdir(parents=True)
    occupied.write_bytes(b"an earlier quarantined file")
    moved = dict(fix(r, faulty, kinds=["tiny"]))
    assert moved == {str((faulty / "exo/kai/zz-tiny.jpg").resolve()):
                     str((faulty / "_quarantine/exo/kai/zz-tiny-1.jpg").resolve())}
    assert occupied.read_bytes() == b"an earlier quarantined file"


def test_move_file_adds_a_suffix_instead_of_overwriting(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"A")
    (tmp_path / "b.jpg").write_bytes(b"B")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.jpg").write_bytes(b"X")
    assert move_file(tmp_path / "a.jpg", tmp_path / "out" / "x.jpg") == tmp_path / "out" / "x-1.jpg"
    assert move_file(tmp_path / "b.jpg", tmp_path / "out" / "x.jpg") == tmp_path / "out" / "x-2.jpg"
    assert [(p.name, p.read_bytes()) for p in sorted((tmp_path / "out").iterdir())] == \
        [("x-1.jpg", b"A"), ("x-2.jpg", b"B"), ("x.jpg", b"X")]
    with pytest.raises(FileNotFoundError, match="a.jpg: file not found"):
        move_file(tmp_path / "a.jpg", tmp_path / "out" / "y.jpg")
