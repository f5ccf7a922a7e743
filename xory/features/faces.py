"""Faces: dlib HOG detector, 5-point alignment, 128-d ResNet descriptor (weights from face_recognition_models)."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Face", "FaceEmbedder", "models_dir", "MIN_FACE_PX"]

MIN_FACE_PX = 20  # faces narrower than this (in photo pixels) give unreliable descriptors
DETECT_MAX_SIDE = 1600  # larger photos are shrunk for detection; boxes are mapped back
DETECT_THRESHOLD = -0.2  # dlib's adjust_threshold: slightly more permissive than its default 0
# When a photo shows no face, look again: one more upsampling (small faces), then tilted by +-30 degrees
# (heads on a pillow, selfies at an angle). Costs time only on photos without a face.
RETRIES = [(0, 1), (30, 0), (-30, 0)]  # (degrees counter-clockwise, extra upsampling)


@dataclass
class Face:
    """One face in a photo. box = [left, top, right, bottom] in pixels of the upright photo."""

    box: list[int]
    score: float
    vector: np.ndarray = field(repr=False)
    label: str | None = None
    group: str | None = None
    confidence: float | None = None

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]


def models_dir() -> Path:
    """The models/ folder of face_recognition_models, found without importing it (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("the package face_recognition_models is not installed (pip install face_recognition_models)")
    return Path(spec.origin).parent / "models"


def _upsample_times(longest_side: int) -> int:
    """HOG finds faces of about 80 px and up: upsample small photos (tight face crops, small group photos)."""
    if longest_side < 300:
        return 2
    if longest_side < 1100:
        return 1
    return 0


class FaceEmbedder:
    """Detect faces, align them on 5 landmarks and embed each as a unit-length 128-d vector."""

    dim = 128

    def __init__(self) -> None:
        import dlib  # imported here so that modules that only read bundles do not pay for it

        folder = models_dir()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))

    def detect(self, image: Image.Image, extra_upsample: int = 0) -> list[tuple[list[int], float]]:
        """Boxes and detector scores, largest face first."""
        work, scale = _shrunk(image)
        upsample = _upsample_times(max(work.size)) + extra_upsample
        rects, scores, _ = self.detector.run(np.asarray(work), upsample, DETECT_THRESHOLD)
        found = []
        for r, s in zip(rects, scores):
            box = [r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale]
            box = [int(round(max(0, min(v, lim)))) for v, lim in zip(box, [image.width, image.height] * 2)]
            if box[2] - box[0] >= MIN_FACE_PX and box[3] - box[1] >= MIN_FACE_PX:
                found.append((box, float(s)))
        found.sort(key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))
        return found

    def embed_boxes(self, image: Image.Image, boxes: list[list[int]]) -> np.ndarray:
        """(n, 128) descriptors for the given boxes, aligned on 5 landmarks."""
        if not boxes:
            return np.zeros((0, self.dim), np.float32)
        arr = np.asarray(image)
        shapes = self._dlib.full_object_detections()
        for left, top, right, bottom in boxes:
            shapes.append(self.shapes(arr, self._dlib.rectangle(left, top, right, bottom)))
        vecs = np.asarray(self.encoder.compute_face_descriptor(arr, shapes), dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)

    def faces(self, image: Image.Image) -> list[Face]:
        """Every face, largest first; boxes in the photo's pixels (a tilted find is boxed upright)."""
        found = self.detect(image)
        if found:
            vecs = self.embed_boxes(image, [b for b, _ in found])
            return [Face(box=b, score=s, vector=v) for (b, s), v in zip(found, vecs)]
        small, scale = _shrunk(image)  # tilted retries rotate the shrunk photo: a rotated long strip of a full
        # photo would expand to gigapixels
        for angle, extra in RETRIES:
            if extra and max(image.size) > DETECT_MAX_SIDE // 2:
                continue
            work = small.rotate(angle, resample=Image.BILINEAR, expand=True) if angle else image
            found = self.detect(work, extra)
            if found:
                vecs = self.embed_boxes(work, [b for b, _ in found])
                if not angle:
                    return [Face(box=b, score=s, vector=v) for (b, s), v in zip(found, vecs)]
                return [Face(box=[int(round(min(c / scale, lim))) for c, lim in
                                  zip(_unrotate(b, angle, small.size, work.size), [image.width, image.height] * 2)],
                             score=s, vector=v) for (b, s), v in zip(found, vecs)]
        return []


def _shrunk(image: Image.Image) -> tuple[Image.Image, float]:
    """The photo at most DETECT_MAX_SIDE on its longest side (never 0 px on the other), and the scale used."""
    if max(image.size) <= DETECT_MAX_SIDE:
        return image, 1.0
    scale = DETECT_MAX_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR), scale


def _unrotate(box: list[int], angle: float, size: tuple[int, int], rotated_size: tuple[int, int]) -> list[int]:
    """The upright bounding box, in the original photo, of a box found in the photo rotated by `angle`."""
    if not angle:
        return box
    t = math.radians(angle)
    cx, cy, rx, ry = size[0] / 2, size[1] / 2, rotated_size[0] / 2, rotated_size[1] / 2
    xs, ys = [], []
    for x, y in [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]:
        xs.append(cx + (x - rx) * math.cos(t) - (y - ry) * math.sin(t))
        ys.append(cy + (x - rx) * math.sin(t) + (y - ry) * math.cos(t))
    return [int(round(max(0, min(v, lim)))) for v, lim in
            zip([min(xs), min(ys), max(xs), max(ys)], [size[0], size[1], size[0], size[1]])]
