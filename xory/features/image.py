"""Whole-image features: EfficientNet-Lite0 (ImageNet) through onnxruntime.

The ONNX file is made once by ``scripts/export_backbone.py``; this module needs only
onnxruntime, numpy and Pillow (no torch). The network sees the whole photo squashed to
224x224 (no crop), so the 7x7 feature map lines up with the whole photo for CAMs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

__all__ = ["ImageEmbedder", "BACKBONE_PATH", "preprocess"]

BACKBONE_PATH = Path(__file__).resolve().parent.parent / "assets" / "efficientnet_lite0.onnx"

SIZE = 224
_MEAN = 127.5
_STD = 127.5


def preprocess(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> (3, 224, 224) float32: squashed (bilinear, no crop), scaled (x-127.5)/127.5."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - _MEAN) / _STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageEmbedder:
    """EfficientNet-Lite0 feature extractor: 1280-d vector, 1280x7x7 map and ImageNet logits."""

    dim: int = 1280

    def __init__(self, onnx_path: Path = BACKBONE_PATH, threads: int = 1) -> None:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(
                f"backbone ONNX file not found: {onnx_path}; "
                "create it with `python scripts/export_backbone.py` (needs torch)"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self.onnx_path = onnx_path
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def _run(self, names: list[str], imgs: list[Image.Image]) -> list[np.ndarray]:
        """Run the network on a batch of PIL images and return the named outputs."""
        if not imgs:
            raise ValueError("no images given")
        batch = np.stack([preprocess(im) for im in imgs])
        return self.session.run(names, {"image": batch})

    def embed(self, img: Image.Image) -> np.ndarray:
        """One image -> (1280,) float32 pooled feature vector."""
        return self._run(["features"], [img])[0][0]

    def embed_batch(self, imgs: list[Image.Image]) -> np.ndarray:
        """N images -> (N, 1280) float32 feature vectors (an empty list gives (0, 1280))."""
        if len(imgs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._run(["features"], list(imgs))[0]

    def feature_map(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """One image -> (vector (1280,), map (1280, 7, 7)); the vector is the map's mean over H, W."""
        vec, fmap = self._run(["features", "feature_map"], [img])
        return vec[0], fmap[0]

    def imagenet_logits(self, img: Image.Image) -> np.ndarray:
        """One image -> (1000,) float32 ImageNet logits (before softmax)."""
        return self._run(["logits"], [img])[0][0]
