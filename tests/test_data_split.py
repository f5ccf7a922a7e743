"""xory data split on temporary copies of small subsets: the file holds content hashes only, each side stratified,
reproducible, near-duplicates and each negative person on one side, and `xory train --split` reads it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from xory.cli import main
from xory.data import split_folder
from xory.dataset import scan
from xory.images import open_image
from xory.split import load_split


def sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(small_kpop, tmp_path_factory) -> Path:
    """small_kpop plus a smaller, re-encoded copy of one Jimin photo beside it (a near-duplicate)."""
    root = tmp_path_factory.mktemp("split") / "kpop"
    shutil.copytree(small_kpop, root)
    first = sorted((root / "bts" / "jimin").iterdir())[0]
    img = open_image(first).image
    buf = io.BytesIO()
    img.resize((img.width * 4 // 5, img.height * 4 // 5), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=70)
    (root / "bts" / "jimin" / "zz-near-copy.jpg").write_bytes(buf.getvalue())
    return root


def test_split_file_is_stratified_reproducible_and_leak_free(data, small_others, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert main(["data", "split", str(data), "--holdout", "0.25", "--seed", "3", "--negatives", str(small_others),
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert set(doc) == {"format", "version", "seed", "holdout", "train", "test"}
    assert (doc["format"], doc["version"], doc["seed"], doc["holdout"]) == ("xory-split", 1, 3, 0.25)
    ds = scan(data, small_others)
    hashes = {s.path: sha(s.path) for s in ds.samples}
    train, test = set(doc["train"]), set(doc["test"])
    assert not train & test and train | test == set(hashes.values())  # every photo on exactly one side
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in train | test)  # hashes, never paths or copies
    assert f"wrote {out}: {len(train)} photos to train on, {len(test)} held out" in printed

    # about a quarter of each label held out (whole clusters at a time, so not exactly)
    per_label: dict[str, list[int]] = {}
    for s in ds.samples:
        per_label.setdefault(s.leaf, [0, 0])[hashes[s.path] in test] += 1
    for label, (n_train, n_test) in per_label.items():
        if n_train + n_test >= 8 and label != "neither":
            assert 0.1 <= n_test / (n_train + n_test) <= 0.4, (label, n_train, n_test)
    assert 0.15 <= len(test) / len(hashes) <= 0.35

    # the near-duplicate sits with its original; each negative person is on one side
    jimin = data / "bts" / "jimin"
    assert (sha(sorted(jimin.iterdir())[0]) in test) == (sha(jimin / "zz-near-copy.jpg") in test)
    for person in {s.source for s in ds.samples if s.negative}:
        sides = {hashes[s.path] in test for s in ds.samples if s.source == person}
        assert len(sides) == 1, person

    # reproducible: the same seed gives the same file; another seed another test side
    again = split_folder(data, tmp_path / "again.json", 0.25, seed=3, negatives=small_others, progress=False)
    assert (tmp_path / "again.json").read_bytes() == out.read_bytes()
    assert again.test == len(test) and sum(b for _, b in again.counts.values()) == len(test)
    other = split_folder(data, tmp_path / "other.json", 0.25, seed=4, negatives=small_others, progress=False)
    assert load_split(other.path)["test"] != test

    # moving a photo to another label keeps its side: the file names photos by content
    moved = data / "exo" / "kai" / "moved.jpg"
    shutil.move(jimin / "zz-near-copy.jpg", moved)
    try:
        assert (sha(moved) in load_split(out)["test"]) == (sha(sorted(jimin.iterdir())[0]) in test)
    finally:
        shutil.move(moved, jimin / "zz-near-copy.jpg")


def test_the_same_seed_gives_the_same_file_in_any_process(data, small_others, tmp_path):
    """Python salts str hashes per process: nothing in the split may depend on set or dict-of-str order."""
    outs = []
    for hash_seed in ["1", "2", "3"]:
        out = tmp_path / f"split-{hash_seed}.json"
        subprocess.run([sys.executable, "-m", "xory.cli", "data", "split", str(data), "--negatives", str(small_others),
                        "--holdout", "0.25", "--seed", "5", "--out", str(out), "--quiet"], check=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed}, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_train_accepts_the_split_file(data, tmp_path):
    from xory.train import TrainConfig, train

    split = split_folder(data, tmp_path / "split.json", 0.3, seed=0, progress=False)
    folder, manifest = train(TrainConfig(data=str(data), out=str(tmp_path / "model"), split=str(split.path),
                                         progress=False), log=lambda s: None)
    assert manifest["training"]["heldout_photos"] == split.test
    assert manifest["training"]["train_photos"] == split.train
    assert manifest["metrics"]["heldout"]["photos"] == split.test


def test_bad_split_arguments_get_clear_errors(data, tmp_path, capsys):
    assert main(["data", "split", str(data), "--holdout", "1.5", "--out", str(tmp_path / "s.json")]) == 2
    assert "--holdout must be between 0 and 1 (got 1.5)" in capsys.readouterr().err
    assert main(["data", "split", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.json")]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    mine = tmp_path / "mine.json"  # a file of the user's is never written over; an earlier split file may be
    mine.write_text('{"my": "settings"}\n')
    assert main(["data", "split", str(data), "--out", str(mine)]) == 2
    assert "mine.json: exists and is not a split file; nothing was changed" in capsys.readouterr().err
    assert mine.read_text() == '{"my": "settings"}\n'
    assert main(["data", "split", str(data), "--out", str(tmp_path)]) == 2
    assert "is a folder; give the split file's name" in capsys.readouterr().err
    (tmp_path / "bare.json").write_text('{"format": "xory-split"}')  # the format key alone is not a split file
    assert main(["data", "split", str(data), "--out", str(tmp_path / "bare.json")]) == 2
    assert "bare.json: exists and is not a split file" in capsys.readouterr().err
    os.mkfifo(tmp_path / "pipe")  # never opened (reading it would hang)
    assert main(["data", "split", str(data), "--out", str(tmp_path / "pipe")]) == 2
    assert "pipe: exists and is not a regular file" in capsys.readouterr().err
    for bad, message in [(tmp_path / "pipe", "not a split file (a special file"),
                         (tmp_path, "not a split file (a folder"),
                         (tmp_path / "deep.json", "not a split file (nested too deeply)")]:
        if bad.name == "deep.json":
            bad.write_text("[" * 100_000 + "]" * 100_000)
        assert main(["train", str(data), "--split", str(bad), "--out", str(tmp_path / "m"), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / ".s.json.tmp").write_text("precious")  # a user's file named like a temp file is never touched
    assert main(["data", "split", str(data), "--out", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert (tmp_path / ".s.json.tmp").read_text() == "precious" and load_split(tmp_path / "s.json")["test"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.json.") and p.name != ".s.json.tmp"]


def test_a_models_own_split_file_is_never_overwritten(data, tmp_path, capsys):
    """The split a model was trained on is in its manifest's checksums: a new split there would break the model;
    a user's own split file in a model folder is never replaced by a retrain either."""
    from xory.train import TrainConfig, train

    folder, _ = train(TrainConfig(data=str(data), out=str(tmp_path / "m"), holdout=0.3, folds=0, progress=False),
                      log=lambda s: None)
    before = (folder / "split.json").read_bytes()
    assert main(["data", "split", str(data), "--seed", "5", "--out", str(folder / "split.json")]) == 2
    assert "is the split a model was trained on" in capsys.readouterr().err
    assert (folder / "split.json").read_bytes() == before

    mine = tmp_path / "m2"
    train(TrainConfig(data=str(data), out=str(mine), folds=0, progress=False), log=lambda s: None)  # no split.json
    assert main(["data", "split", str(data), "--seed", "7", "--out", str(mine / "split.json")]) == 0
    capsys.readouterr()
    users = (mine / "split.json").read_bytes()
    assert main(["train", str(data), "--holdout", "0.2", "--out", str(mine), "--quiet"]) == 2
    assert "split.json: is not the model's" in capsys.readouterr().err
    assert (mine / "split.json").read_bytes() == users


def test_a_tied_cluster_gets_the_same_main_label_in_any_process():
    """A cluster with as many photos of two labels: the tie is broken by name, not by Python's salted set order."""
    code = "from xory.split import main_label; print(main_label(['bts/v', 'bts/jin', 'bts/v', 'bts/jin', 'bts/rm']))"
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": h}, check=True,
                           capture_output=True, text=True).stdout.strip() for h in ["1", "2", "3", "4", "5"]}
    assert outs == {"bts/jin"}
