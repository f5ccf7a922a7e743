"""The cleaner's logic as plain functions on temporary copies (rank by loss, move, quarantine, keep, undo, retrain),
and its Gradio page built without launching it."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from xory.cli import main
from xory.data.clean import Cleaner, _tile, build_cleaner_app
from xory.draw import BAD
from xory.features.extract import extract_many
from xory.model import Model


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "_quarantine" not in p.parts}


@pytest.fixture(scope="module")
def jimin_photo(small_kpop, small_model) -> str:
    """The name of the Jimin photo of small_kpop that the small model names Jimin most surely."""
    model = Model.load(small_model)
    paths = [str(p) for p in sorted((small_kpop / "bts" / "jimin").iterdir())]
    feats = extract_many(paths, progress=False)

    def confidence(path: str) -> float:
        faces = model.predict_features(feats[path], path).faces
        return faces[0].confidence if faces and faces[0].label == "jimin" else 0.0

    return Path(max(paths, key=confidence)).name


@pytest.fixture()
def setup(small_kpop, small_others, small_model, jimin_photo, tmp_path):
    """Copies of the small data with that Jimin photo put in Kai's folder."""
    data, negatives = tmp_path / "kpop", tmp_path / "others"
    shutil.copytree(small_kpop, data)
    shutil.copytree(small_others, negatives)
    wrong = data / "exo" / "kai" / jimin_photo
    shutil.move(data / "bts" / "jimin" / jimin_photo, wrong)
    return data, negatives, wrong, small_model


def test_the_mislabelled_photo_comes_first_with_its_face_boxed(setup):
    data, negatives, wrong, model = setup
    c = Cleaner(model, data, negatives, out=data.parent / "model")
    worst = c.worst("exo/kai")
    assert worst[0].path == str(wrong)
    assert worst[0].wrong == (0,) and worst[0].answer.startswith("bts/jimin ")
    assert worst[0].loss > 3 * worst[1].loss and worst[0].loss > 2.0  # -log p(exo) - log p(kai), both small
    assert [it.loss for it in worst] == sorted((it.loss for it in worst), reverse=True)
    folders = c.folders()
    assert folders["exo/kai"] == len(worst) and "bts/_group" in folders
    assert any(k.startswith("neither:") for k in folders)
    assert list(folders)[-1].startswith("neither:")  # negatives listed last


def test_move_quarantine_keep_and_undo(setup, capsys):
    data, negatives, wrong, model = setup
    before = files(data)
    c = Cleaner(model, data, negatives, out=data.parent / "model")
    n = len(c.items)
    bad_loss = c.find(str(wrong)).loss

    c.move(str(wrong), "bts/jimin")
    back = data / "bts" / "jimin" / wrong.name
    assert back.is_file() and not wrong.exists()
    assert c.find(str(back)).label == ("bts", "jimin") and c.find(str(back)).loss < bad_loss / 5
    with pytest.raises(ValueError, match="already in bts/jimin"):
        c.move(str(back), "bts/jimin")
    with pytest.raises(ValueError, match="not a folder name under the data folder"):
        c.move(str(back), "../elsewhere")

    victim = c.worst("exo/kai")[0]
    c.quarantine(victim.path)
    q = data / "_quarantine" / Path(victim.path).relative_to(data)
    assert q.is_file() and not Path(victim.path).exists() and len(c.items) == n - 1

    kept = c.worst("exo/kai")[0]
    c.keep(kept.path)
    assert kept.path not in [it.path for it in c.worst("exo/kai")] and Path(kept.path).is_file()

    log = [json.loads(line) for line in (data / "_quarantine" / "log.jsonl").read_text().splitlines()]
    assert [e["action"] for e in log] == ["move", "quarantine", "keep"]
    assert log[0]["moves"] == [{"src": f"exo/kai/{wrong.name}", "dst": f"bts/jimin/{wrong.name}"}]
    assert log[0]["folder_to"] == "bts/jimin" and len(log[0]["sha256"]) == 64

    assert [e["undone_action"] for e in c.undo()] == ["keep"]
    assert kept.path in [it.path for it in c.worst("exo/kai")]
    assert [e["undone_action"] for e in c.undo()] == ["quarantine"]
    assert Path(victim.path).is_file() and not q.exists() and len(c.items) == n
    # the last one from the command line, as a user would
    assert main(["clean", "--undo", str(data), "--all"]) == 0
    assert "undid move #1: 1 photo(s) back" in capsys.readouterr().out
    assert files(data) == before  # every photo where it was, bytes unchanged


def test_retrain_reuses_the_cache_and_writes_a_new_model(setup):
    data, negatives, wrong, model = setup
    out = data.parent / "model"
    c = Cleaner(model, data, negatives, out=out)
    c.move(str(wrong), "bts/jimin")
    seconds, metrics = c.retrain()
    m = Model.load(out)
    assert c.model_dir == out and m.manifest["training"]["counts"]["bts/jimin"] == \
        len(list((data / "bts" / "jimin").iterdir()))
    assert m.manifest["training"]["negatives"] == str(negatives.resolve())
    assert m.manifest["mode"] == "faces" and seconds > 0
    assert c.find(str(data / "bts" / "jimin" / wrong.name)).prediction.faces[0].label == "jimin"
    assert not list(data.parent.glob(".model.*"))  # the atomic save left no temp folder


def test_the_page_builds_without_launching(setup):
    import gradio as gr

    data, negatives, wrong, model = setup
    c = Cleaner(model, data, negatives, out=data.parent / "model")
    demo = build_cleaner_app(c, per_page=6)
    assert isinstance(demo, gr.Blocks)
    config = demo.get_config_file()
    types = [comp["type"] for comp in config["components"]]
    assert types.count("gallery") == 1 and types.count("dropdown") == 2 and types.count("button") == 5
    dropdown = next(comp for comp in config["components"] if comp["type"] == "dropdown")
    assert ("exo/kai (%d)" % c.folders()["exo/kai"], "exo/kai") in [tuple(x) for x in dropdown["props"]["choices"]]

    # the tile of the mislabelled photo: scaled to 320 px, its face boxed in red (the others would be green)
    it = c.find(str(wrong))
    tile = _tile(it)
    assert max(tile.size) == 320 or max(tile.size) == max(it.feats.size)
    scale = max(tile.size) / max(it.feats.size)
    left, top, right, bottom = (round(v * scale) for v in it.prediction.faces[0].box)
    edge = [tile.getpixel((x, bottom)) for x in range(left + 2, right - 2)]
    assert sum(px == BAD for px in edge) > 0.9 * len(edge)


def test_clean_cli_usage_errors(tmp_path, capsys):
    assert main(["clean", str(tmp_path)]) == 2
    assert "usage: xory clean MODEL DATA_DIR" in capsys.readouterr().err
    assert main(["clean", "--undo", str(tmp_path), "extra"]) == 2
    assert "usage: xory clean --undo DATA_DIR [--all]" in capsys.readouterr().err
