"""Features on disk, keyed by the photo's content hash: a retrain after moving files reuses every vector."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .faces import Face

__all__ = ["PhotoFeatures", "FeatureCache", "default_cache_dir"]


@dataclass
class PhotoFeatures:
    """Everything the heads need from one photo."""

    sha256: str
    size: tuple[int, int]  # width, height of the upright photo
    boxes: np.ndarray  # (n, 4) int: left, top, right, bottom; largest face first
    scores: np.ndarray  # (n,) detector scores
    face_vectors: np.ndarray  # (n, 128) unit length
    image_vector: np.ndarray  # (1280,) EfficientNet-Lite0 pooled features

    def faces(self) -> list[Face]:
        return [Face(box=[int(v) for v in b], score=float(s), vector=f)
                for b, s, f in zip(self.boxes, self.scores, self.face_vectors)]

    @property
    def n_faces(self) -> int:
        return len(self.boxes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XORY_CACHE") or Path.home() / ".cache" / "xory")


class FeatureCache:
    """One small .npz per photo under root/key/ab/<sha256>.npz; key names the extractors' versions."""

    def __init__(self, key: str, root: Path | None = None):
        self.dir = Path(root or default_cache_dir()) / key

    def _path(self, sha256: str) -> Path:
        return self.dir / sha256[:2] / f"{sha256}.npz"

    def get(self, sha256: str) -> PhotoFeatures | None:
        path = self._path(sha256)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return PhotoFeatures(sha256=sha256, size=(int(z["size"][0]), int(z["size"][1])), boxes=z["boxes"],
                                     scores=z["scores"], face_vectors=z["face_vectors"], image_vector=z["image_vector"])
        except Exception:  # a damaged cache entry is recomputed, never trusted
            return None

    def put(self, feats: PhotoFeatures) -> None:
        path = self._path(feats.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez(tmp, size=np.asarray(feats.size), boxes=np.asarray(feats.boxes, np.int32).reshape(-1, 4),
                     scores=np.asarray(feats.scores, np.float32), face_vectors=np.asarray(feats.face_vectors, np.float32),
                     image_vector=np.asarray(feats.image_vector, np.float32))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
