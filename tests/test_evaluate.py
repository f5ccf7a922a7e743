"""Metrics: hand-computed values on a tiny case; on real photos they agree with `xory predict`; `xory evaluate`
measures held-out photos and writes its files; the training table (k-fold) is in the manifest."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import BEARS, photos
from xory.cli import main
from xory.evaluate import evaluate, head_scores, level_metrics


def test_level_metrics_equal_hand_computed_values():
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    m = level_metrics(true, pred, ["a", "b", "c", "d"])
    assert m["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["error"] == pytest.approx(2 / 6)
    assert m["balanced_error"] == pytest.approx(1 - (2 / 3 + 1 / 2 + 1) / 3)  # d has no photo: not averaged
    assert m["per_class"]["a"] == {"support": 3, "predicted": 2, "precision": 1.0, "recall": pytest.approx(2 / 3)}
    assert m["per_class"]["c"]["precision"] == 0.5 and m["per_class"]["c"]["recall"] == 1.0
    assert m["per_class"]["d"] == {"support": 0, "predicted": 0, "precision": None, "recall": None}
    # a predicted class the list did not name is added at the end
    assert level_metrics(["a"], ["z"], ["a"])["classes"] == ["a", "z"]


def test_members_are_assigned_jointly_by_hand():
    """Two faces both most like a/x: the surer one keeps x, the other gets its next member of group a (y), not a
    member of group b; an unknown face and a 'neither' face take no member; a face alone in its group keeps its best."""
    from xory.heads import assign_members

    classes = ["a/x", "a/y", "b/z", "neither"]
    p = np.array([[0.60, 0.30, 0.05, 0.05],   # a/x
                  [0.90, 0.05, 0.03, 0.02],   # a/x, surer: keeps it
                  [0.50, 0.10, 0.30, 0.10],   # a/x but unknown: keeps its best leaf, takes nothing
                  [0.10, 0.10, 0.20, 0.60],   # neither
                  [0.10, 0.20, 0.60, 0.10]])  # b/z, alone in b
    unknown = np.array([False, False, True, False, False])
    assert [classes[j] for j in assign_members(p, classes, unknown)] == ["a/y", "a/x", "a/x", "neither", "b/z"]
    # more faces of a group than members: the extra face keeps its best member
    three = np.array([[0.7, 0.3, 0, 0], [0.8, 0.2, 0, 0], [0.6, 0.4, 0, 0]])
    assert sorted(classes[j] for j in assign_members(three, classes)) == ["a/x", "a/x", "a/y"]
    # one person twice (a collage): the other member is too unlikely (below RENAME_MIN), so both stay a/x
    twice = np.array([[0.95, 0.03, 0.01, 0.01], [0.90, 0.05, 0.03, 0.02]])
    assert [classes[j] for j in assign_members(twice, classes)] == ["a/x", "a/x"]


def test_head_scores_equal_hand_computed_values():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    s = head_scores(proba, ["x", "y", "z"], ["x", "y", "y", "w"])  # w: a class the head never saw
    assert s["rows"] == 3 and s["unseen"] == 1
    assert s["loss"] == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.4)) / 3)
    assert s["error"] == pytest.approx(1 / 3)


def test_metrics_agree_with_xory_predict(small_model, small_kpop, small_others, capsys):
    ev = evaluate(small_model, small_kpop, small_others, progress=False)
    m = ev.metrics
    assert "records no split" in ev.note and m["photos"] == len(ev.scored) == len(ev.samples)
    by_path = {r.sample.path: r for r in ev.scored}
    negative = next(p for p in sorted(small_others.rglob("*")) if p.is_file())
    picks = [str(photos(small_kpop / "bts" / "jimin")[0]), str(photos(small_kpop / "exo" / "_group")[0]), str(negative)]
    assert main(["predict", "--model", str(small_model), "--json", *picks]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == picks
    for line in lines:
        assert by_path[line["path"]].prediction.to_json() == line  # exactly the same answer, to the last digit
    # the headline numbers are counts over those same answers
    pos = [r for r in ev.scored if not r.sample.negative]
    assert m["top_error"] == pytest.approx(np.mean([r.prediction.label != r.sample.group for r in pos]))
    neg = [r for r in ev.scored if r.sample.negative]
    assert m["neither_share"] == pytest.approx(np.mean([r.prediction.label == "neither" for r in neg]))
    group = m["levels"]["group"]
    assert np.asarray(group["confusion"]).sum() == m["photos"]
    assert sum(c["support"] for c in group["per_class"].values()) == m["photos"]
    member = m["levels"]["member"]
    assert set(member["classes"]) >= {"bts/jimin", "exo/chanyeol"}
    assert 1 - member["error"] == pytest.approx(
        np.average([c["accuracy"] for c in m["member_accuracy"].values()],
                   weights=[c["photos"] for c in m["member_accuracy"].values()]))


def test_evaluate_cli_uses_the_held_out_photos_and_writes_its_files(heldout_model, small_kpop, small_others,
                                                                     tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(heldout_model), str(small_kpop), "--negatives", str(small_others),
                 "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    manifest = json.loads((heldout_model / "manifest.json").read_text())
    held = manifest["training"]["heldout_photos"]
    assert f"evaluated on {held} photos the model did not train on ({held} held out, 0 never seen" in text
    assert "member level" in text and "precision" in text
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "predictions.jsonl", "confusion_group.png", "confusion_group.json",
            "confusion_member.png", "confusion_member.json"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["photos"] == held
    # the numbers training printed for its hold-out are the numbers evaluate finds
    for key in ("top_error", "top_balanced_error", "neither_share"):
        assert metrics[key] == pytest.approx(manifest["metrics"]["heldout"][key])
    assert metrics["wrong_photos"] == 0 or "top_losses.png" in names
    for loss in metrics["top_losses"]:
        assert loss["label"] != loss["true"].split("/")[0] or any(f["wrong"] for f in loss["faces"])
    assert json.loads((out / "confusion_group.json").read_text())["classes"] == \
        metrics["levels"]["group"]["classes"]


def test_evaluate_refuses_labels_the_model_does_not_know(small_model, tmp_path, capsys):
    assert main(["evaluate", str(small_model), str(BEARS), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "black, grizzly, teddy are not classes of the model (bts, exo, neither)" in err
    assert not (tmp_path / "e").exists()


def test_training_table_is_in_the_manifest(heldout_model):
    t = json.loads((heldout_model / "manifest.json").read_text())["training"]
    assert t["validation"]["k"] == 3
    assert [(r["fold"], r["head"]) for r in t["folds"]] == [(f, h) for f in (1, 2, 3) for h in ("face", "image")]
    for r in t["folds"]:
        assert r["valid_rows"] > 0 and 0 <= r["error"] <= 1 and r["train_loss"] >= 0 and r["valid_loss"] > 0
    assert sum(r["valid_rows"] for r in t["folds"] if r["head"] == "image") == t["train_photos"]
    assert set(t["validation"]["heads"]) == {"face", "image"}


def test_folds_keep_duplicates_together(small_kpop):
    from xory.crossval import group_folds
    from xory.dataset import scan
    from xory.train import TrainConfig, load_table

    table = load_table(TrainConfig(data=str(small_kpop), out="", progress=False), scan(small_kpop),
                       log=lambda s: None)
    samples, feats = list(table.samples), list(table.feats)
    for i in (0, 40, 80):  # the same photo again under another name: a copy
        samples.append(samples[i])
        feats.append(feats[i])
    fold = group_folds(samples, feats, k=4)
    n = len(table.samples)
    assert [fold[i] for i in (0, 40, 80)] == fold[n:]
    assert sorted(set(fold)) == [0, 1, 2, 3]
