"""Train end to end on real photos, then predict photos the model never saw."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import xory
from conftest import BEARS, KPOP, OTHERS, photos

MEMBER_FOLDERS = [p for g in ("bts", "exo") for p in sorted((KPOP / g).iterdir())
                  if not p.name.startswith("_") and len(photos(p)) >= 20]


def unseen(folder, n=3):
    """Photos 12.. of a folder: the small fixtures copy photos 0..11 only."""
    return photos(folder)[12:12 + n]


def test_small_model_names_groups_of_unseen_photos(small_model):
    m = xory.load(small_model)
    assert m.top == ["bts", "exo", "neither"] and m.face_head is not None
    preds = [(f.parent.parent.name, m.predict(f)) for folder in MEMBER_FOLDERS for f in unseen(folder, 4)]
    acc = np.mean([p.label == group for group, p in preds])
    assert len(preds) == 4 * len(MEMBER_FOLDERS) == 56
    print(f"group accuracy on {len(preds)} unseen photos: {acc:.3f}")
    assert acc >= 0.75, [(g, p.label, p.path) for g, p in preds if p.label != g]


def test_training_summary_lists_skipped_files(small_kpop, tmp_path):
    from xory.train import TrainConfig, train

    data = tmp_path / "data"
    for member in ("jimin", "chanyeol"):
        (data / member).mkdir(parents=True)
        for f in photos(small_kpop / ("bts" if member == "jimin" else "exo") / member)[:6]:
            (data / member / f.name).write_bytes(f.read_bytes())
    (data / "jimin" / "notes.txt").write_text("not a photo")
    (data / "jimin" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    folder, manifest = train(TrainConfig(data=str(data), out=str(tmp_path / "m"), progress=False), log=lambda s: None)
    skipped = {s["path"].split("/")[-1]: s["reason"] for s in manifest["training"]["skipped"]}
    assert skipped == {"notes.txt": "not an image file (suffix '.txt')", "broken.jpg": "truncated or damaged image"}
    assert manifest["labels"]["top"] == ["chanyeol", "jimin"]  # depth-1 labels are the top level
    assert xory.load(folder).predict(unseen(KPOP / "bts" / "jimin", 1)[0]).label in ("chanyeol", "jimin")


def test_bears_train_image_mode_automatically(tmp_path):
    from xory.train import TrainConfig, train

    folder, manifest = train(TrainConfig(data=str(BEARS), out=str(tmp_path / "bears"), holdout=0.2, progress=False),
                             log=lambda s: None)
    assert manifest["mode"] == "image" and manifest["heads"]["face"] is None
    metrics = manifest["metrics"]["heldout"]
    assert metrics["photos"] >= 45 and metrics["top_error"] <= 0.12
    p = xory.load(folder).predict(photos(BEARS / "teddy")[5])
    assert p.label == "teddy" and p.method == "image" and p.faces == []
    assert "the answer comes from the whole photo (an image-only model)" in str(p)


def test_predict_json_lines_and_exit_status(small_model, tmp_path):
    bad = tmp_path / "text.jpg"
    bad.write_text("no")
    group = photos(KPOP / "bts" / "_group")[40]
    out = subprocess.run([sys.executable, "-m", "xory.cli", "predict", str(group), str(bad), "--model", str(small_model),
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [list(line) for line in lines] == [["path", "label", "confidences", "faces", "error"]] * 2
    good, err = lines
    assert good["error"] is None and len(good["faces"]) >= 3
    assert set(good["confidences"]) == {"bts", "exo", "neither"}
    assert abs(sum(good["confidences"].values()) - 1) < 1e-3
    for face in good["faces"]:
        assert list(face) == ["box", "label", "group", "confidence"] and len(face["box"]) == 4
    assert err == {"path": str(bad), "label": None, "confidences": {}, "faces": [], "error": "not an image (unrecognised format)"}


def test_negatives_are_answered_neither_sometimes(small_model):
    """Not a quality bar (see the README's measured figures): the 'neither' class exists and is used."""
    m = xory.load(small_model)
    others = [f for g in sorted(OTHERS.iterdir()) for member in sorted(g.iterdir()) if member.is_dir()
              for f in photos(member)[6:8]]
    labels = [m.predict(f).label for f in others[:30]]
    assert "neither" in labels


def run_xory(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xory.cli", *args], capture_output=True, text=True)


def test_predict_goes_on_past_strange_shapes_and_empty_folders(tmp_path):
    from PIL import Image

    Image.new("RGB", (100_000, 16), (120, 90, 60)).save(tmp_path / "wide.png")
    (tmp_path / "empty").mkdir()
    good = photos(KPOP / "bts" / "jimin")[20]
    r = run_xory("predict", str(tmp_path / "wide.png"), str(tmp_path / "empty"), str(good), "--json")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(tmp_path / "wide.png"), str(tmp_path / "empty"), str(good)]
    assert lines[1]["error"].startswith("folder holds no photos (.bmp .gif")
    assert lines[2]["error"] is None and lines[2]["label"] == "bts"
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_bad_train_and_serve_options_are_refused_up_front(small_kpop, tmp_path):
    r = run_xory("train", str(small_kpop), "--out", str(tmp_path / "m"), "--holdout", "2")
    assert r.returncode == 2 and "--holdout 2.0: give the share of photos to hold out" in r.stderr
    r = run_xory("train", str(small_kpop), "--out", str(tmp_path / "m"), "--holdout", "0.2", "--split", "s.json")
    assert r.returncode == 2 and "give --split or --holdout, not both" in r.stderr
    r = run_xory("train", str(small_kpop), "--out", str(tmp_path / "m"), "--split", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "none.json: split file not found" in r.stderr
    r = run_xory("train", str(small_kpop), "--out", str(tmp_path / "m"), "--folds", "1")
    assert r.returncode == 2 and "--folds 1: give 0 (no cross-validation) or at least 2" in r.stderr
    r = run_xory("evaluate", str(tmp_path), str(small_kpop), "--out", str(small_kpop / "bts" / "jimin"))
    assert r.returncode == 2 and "is inside the data folder" in r.stderr
    r = run_xory("serve", "--port", "99999")
    assert r.returncode == 2 and "99999 is not a port (1-65535)" in r.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_xory("serve", "--port", str(port))
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()
