"""Fine-tuning (the [finetune] extra) on a tiny real subset of the bears: it learns, the exported ONNX inside the
bundle gives torch's answers, and the bundle loads and predicts through the core package without importing torch.
Skipped where torch is not installed, except the check that `xory train --finetune` then says what to install."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BEARS, copy_subset, photos

HAS_TORCH = importlib.util.find_spec("torch") is not None
BEAR_CLASSES = {"black", "grizzly", "teddy"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A network fine-tuned on 8 photos of each bear (2 of them watched for early stopping): 1 frozen epoch and
    2 unfrozen, 3 steps each."""
    pytest.importorskip("torch")
    pytest.importorskip("kornia")
    from xory.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("ft")
    data = copy_subset(BEARS, root / "bears", per_folder=8)
    cfg = FinetuneConfig(data=str(data), out=str(root / "model"), epochs=2, frozen_epochs=1, batch_size=6,
                         valid=0.25, progress=False)
    return finetune(cfg, log=lambda s: None)


def unseen_bears(n: int = 2) -> list[Path]:
    """Photos the tiny model never saw (the subset took the first 8 of each folder)."""
    return [p for c in sorted(BEAR_CLASSES) for p in photos(BEARS / c)[20:20 + n]]


def test_loss_goes_down(tuned):
    ft = tuned.manifest["training"]["finetune"]
    history = ft["history"]
    assert [r["phase"] for r in history] == ["frozen", "unfrozen", "unfrozen"]
    assert all(len(r["step_losses"]) == 3 for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = min(r["valid_loss"] for r in history)
    assert best < ft["before"]["valid_loss"] - 0.05
    assert ft["best_epoch"] == min(history, key=lambda r: r["valid_loss"])["epoch"]


def test_bundle_is_an_image_bundle_with_its_backbone(tuned):
    m = json.loads((tuned.folder / "manifest.json").read_text())
    assert m["mode"] == "image" and m["heads"]["face"] is None
    assert m["features"]["image"]["file"] == "backbone.onnx"
    assert set(m["files"]) == {"heads.npz", "backbone.onnx"}
    assert m["heads"]["image"]["classes"] == sorted(BEAR_CLASSES)
    assert m["training"]["finetune"]["onnx_max_abs_diff"] < 1e-3


def test_onnx_gives_torch_answers(tuned):
    import onnxruntime as ort
    import torch

    from xory.bundle import ModelBundle
    from xory.features.image import preprocess
    from xory.heads import LinearHead
    from xory.images import open_image
    from xory.torchnet import Backbone

    x = np.stack([preprocess(open_image(p).image) for p in unseen_bears()])
    with torch.no_grad():
        t_feat, t_map, t_logits = (t.numpy() for t in Backbone(tuned.net).eval()(torch.from_numpy(x)))
    sess = ort.InferenceSession(str(tuned.folder / "backbone.onnx"), providers=["CPUExecutionProvider"])
    o_feat, o_map, o_logits = sess.run(["features", "feature_map", "logits"], {"image": x})
    assert o_logits.shape == (6, 3) and o_map.shape == (6, 1280, 7, 7)
    np.testing.assert_allclose(o_logits, t_logits, atol=1e-3)
    np.testing.assert_allclose(o_feat, t_feat, atol=1e-3)
    assert np.array_equal(o_logits.argmax(1), t_logits.argmax(1))
    # The stored image head is the classifier layer itself, and features are the map's mean: the whole-image
    # answer and the class activation map come from the ONNX outputs alone.
    b = ModelBundle.load(tuned.folder)
    head = LinearHead.from_arrays("image", b.manifest["heads"]["image"]["classes"], b.arrays)
    np.testing.assert_allclose(head.logits(o_feat), o_logits, atol=1e-4)
    np.testing.assert_allclose(o_map.mean(axis=(2, 3)), o_feat, atol=1e-4)


PREDICT_WITHOUT_TORCH = """
import json, sys
import xory
m = xory.load(sys.argv[1])
out = [m.predict(p).to_json() for p in sys.argv[2:]]
print(json.dumps({"torch": "torch" in sys.modules, "kornia": "kornia" in sys.modules, "predictions": out}))
"""


def test_bundle_predicts_through_xory_without_torch(tuned):
    import torch

    from xory.features.image import preprocess
    from xory.images import open_image
    from xory.torchnet import Backbone

    paths = unseen_bears(1)
    r = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TORCH, str(tuned.folder), *map(str, paths)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["kornia"] is False
    x = np.stack([preprocess(open_image(p).image) for p in paths])
    with torch.no_grad():
        want = torch.softmax(Backbone(tuned.net).eval()(torch.from_numpy(x))[2], dim=1).numpy()
    classes = sorted(BEAR_CLASSES)
    for p, pred, w in zip(paths, out["predictions"], want):
        assert pred["error"] is None and pred["faces"] == []
        assert pred["label"] == classes[int(np.argmax(w))]
        for c, v in zip(classes, w):
            assert pred["confidences"][c] == pytest.approx(float(v), abs=2e-3)


def test_one_label_is_refused(tmp_path):
    pytest.importorskip("torch")
    from xory.finetune import FinetuneConfig, finetune

    (tmp_path / "only" / "teddy").mkdir(parents=True)
    for f in photos(BEARS / "teddy")[:3]:
        shutil.copy2(f, tmp_path / "only" / "teddy" / f.name)
    data = tmp_path / "only"
    with pytest.raises(ValueError, match="need at least two labels to fine-tune, found \\['teddy'\\]"):
        finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "m"), progress=False), log=lambda s: None)
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(HAS_TORCH, reason="checks the message shown when the [finetune] extra is missing")
def test_finetune_without_torch_says_what_to_install(tmp_path):
    r = subprocess.run([sys.executable, "-m", "xory.cli", "train", str(BEARS), "--out", str(tmp_path / "m"),
                        "--finetune"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "fine-tuning needs the [finetune] extra: pip install -e '.[finetune]'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()
