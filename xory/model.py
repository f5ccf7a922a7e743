"""Model = embedders + heads: predict(photo) -> Prediction. The one Prediction shape feeds the CLI, the API and
the web page, so they never disagree."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .bundle import BundleError, ModelBundle, default_model_dir, file_sha256
from .dataset import NEITHER
from .features.cache import PhotoFeatures
from .features.faces import Face
from .features.image import BACKBONE_PATH
from .heads import LinearHead, assign_members, combine_faces, face_top_distributions, roll_up, top_of
from .images import ImageError, Photo, open_image, open_photo

__all__ = ["Model", "Prediction", "load"]


@dataclass
class Prediction:
    """One photo's answer. `to_json()` is exactly the `xory predict --json` line and the /predict_faces answer."""

    path: str
    label: str | None
    confidences: dict[str, float]
    faces: list[Face] = field(default_factory=list)
    error: str | None = None
    method: str = "faces"  # "faces", "image" (no face found, or an image-only model) or "unfamiliar" (no face,
    # and the photo is unlike every training photo: "neither")
    similarity: float | None = None  # no face: cosine of its image vector to the nearest training photo's
    faces_searched: bool = True  # False for an image-only model (bears), which never looks for faces

    @property
    def how(self) -> str:
        """One line on which part of the model answered (the CLI, the app and the explanation say it alike)."""
        if self.method == "faces":
            return f"{len(self.faces)} face(s) found; the answer combines them"
        if self.method == "unfamiliar":
            return (f"no face found, and the photo is unlike every training photo (similarity {self.similarity:.2f}):"
                    " neither")
        if not self.faces_searched:
            return "the answer comes from the whole photo (an image-only model)"
        return "no face found: the answer comes from the whole photo"

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "confidences": {k: round(float(v), 4) for k, v in self.confidences.items()},
            "faces": [{"box": [int(v) for v in f.box], "label": f.label, "group": f.group,
                       "confidence": round(float(f.confidence), 4)} for f in self.faces],
            "error": self.error,
        }

    def to_label(self) -> dict:
        """The gr.Label shape: {"label": ..., "confidences": [{"label": ..., "confidence": ...}]}, best first."""
        return {"label": self.label,
                "confidences": [{"label": k, "confidence": round(float(v), 4)} for k, v in self.confidences.items()]}

    def image(self, max_side: int = 768):
        """The photo with each face boxed and named, reopened from `path` (None when it cannot be)."""
        from .draw import boxes_image

        try:
            photo = open_image(self.path)
        except ImageError:
            return None
        return boxes_image(photo.image, [f.box for f in self.faces],
                           [f"{f.label} {f.confidence:.0%}" for f in self.faces], max_side=max_side)

    def _repr_png_(self) -> bytes | None:
        from .draw import png_bytes

        img = None if self.error else self.image()
        return png_bytes(img) if img is not None else None

    def _repr_html_(self) -> str:
        from html import escape

        from .draw import data_url

        if self.error:
            return f"<p><b>{escape(self.path)}</b>: error: {escape(self.error)}</p>"
        img = self.image(max_side=480)
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.1%}</td></tr>" for k, v in self.confidences.items())
        faces = "".join(f"<li>{escape(str(f.label))} ({escape(str(f.group))}) {f.confidence:.0%}, box {f.box}</li>"
                        for f in self.faces) or f"<li>{escape(self.how)}</li>"
        pic = f'<img src="{data_url(img, "JPEG")}" style="max-width:480px">' if img is not None else ""
        return (f"<div><p><b>{escape(str(self.label))}</b> &mdash; {escape(self.path)}</p>"
                f"<table>{rows}</table><ul>{faces}</ul>{pic}</div>")

    def __str__(self) -> str:
        if self.error:
            return f"{self.path}: error: {self.error}"
        best = ", ".join(f"{k} {v:.0%}" for k, v in list(self.confidences.items())[:3])
        faces = "; ".join(f"{f.label} ({f.confidence:.0%})" for f in self.faces)
        how = f"{len(self.faces)} face(s): {faces}" if self.faces else self.how
        return f"{self.path}: {self.label}  [{best}]  {how}"


class Model:
    """A loaded bundle. Thread-safe predict (the embedders run one photo at a time)."""

    def __init__(self, bundle: ModelBundle):
        try:
            self._read(bundle)
        except BundleError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            raise BundleError(f"{bundle.folder}: manifest.json does not describe a usable model "
                              f"({type(e).__name__}: {e})") from None

    def _read(self, bundle: ModelBundle) -> None:
        m = bundle.manifest
        where = f"{bundle.folder}: manifest.json"
        top, heads = m["labels"]["top"], m["heads"]
        if not isinstance(top, list) or len(top) < 2 or not all(isinstance(t, str) for t in top):
            raise BundleError(f"{where}: labels.top must list at least two class names")
        if m.get("mode") not in ("faces", "image"):
            raise BundleError(f"{where}: mode {m.get('mode')!r} is not 'faces' or 'image'")
        if not heads.get("image") or (m["mode"] == "faces" and not heads.get("face")):
            raise BundleError(f"{where}: a {m['mode']}-mode model needs "
                              + ("a face head and an image head" if m["mode"] == "faces" else "an image head"))
        if len(set(top)) != len(top):
            raise BundleError(f"{where}: labels.top names a class twice ({top})")
        for name, head in heads.items():
            if head and not {top_of(c) for c in head["classes"]} <= set(top):
                raise BundleError(f"{where}: head {name!r} has classes outside labels.top {top}")
        dims = {"face": 128, "image": 1280}
        for name in ("face", "image"):
            if heads.get(name):
                k, d = len(heads[name]["classes"]), dims[name]
                shapes = {"W": (k, d), "b": (k,), "mean": (d,), "scale": (d,)}
                for part, shape in shapes.items():
                    a = bundle.arrays.get(f"{name}_{part}")
                    if a is None or a.shape != shape or not np.isfinite(a).all():
                        raise BundleError(f"{bundle.folder}: heads.npz: {name}_{part} must be {shape} finite numbers"
                                          f" (found {None if a is None else a.shape})")
        backbone_file = m["features"]["image"].get("file")
        if backbone_file and backbone_file not in {*(m.get("files") or {}), *bundle.extra_files}:
            raise BundleError(f"{where}: the backbone {backbone_file!r} is not one of the bundle's checked files")
        self.bundle = bundle
        self.manifest = m
        self.top: list[str] = list(m["labels"]["top"])
        heads = m["heads"]
        self.face_head = (LinearHead.from_arrays("face", heads["face"]["classes"], bundle.arrays)
                          if heads.get("face") else None)
        self.image_head = (LinearHead.from_arrays("image", heads["image"]["classes"], bundle.arrays)
                           if heads.get("image") else None)
        self.unknown_below = float((heads.get("face") or {}).get("unknown_below", 0.0))
        ref = bundle.arrays.get("image_ref")
        self.familiar_at = float(heads["image"].get("familiar_at", 0.0))
        if self.familiar_at > 0:
            if ref is None or ref.ndim != 2 or ref.shape[1] != 1280 or not len(ref) or not np.isfinite(ref).all():
                raise BundleError(f"{bundle.folder}: heads.npz: image_ref must be (n, 1280) finite numbers "
                                  f"(found {None if ref is None else ref.shape})")
            if NEITHER not in self.top:
                raise BundleError(f"{where}: heads.image.familiar_at needs a {NEITHER!r} class")
        self.image_ref = ref.astype(np.float32) if self.familiar_at > 0 else None
        backbone = m["features"]["image"]
        self.backbone_path = (bundle.folder / backbone["file"]) if backbone.get("file") else BACKBONE_PATH
        self._extractor = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "Model":
        model = cls(ModelBundle.load(folder or default_model_dir()))  # cls() refuses a manifest that makes no model
        backbone = model.manifest["features"]["image"]
        if not backbone.get("file"):
            if not BACKBONE_PATH.is_file() or file_sha256(BACKBONE_PATH) != backbone.get("sha256"):
                raise BundleError(f"{model.bundle.folder}: the model was trained with another backbone "
                                  f"({backbone.get('name')} sha256 {str(backbone.get('sha256'))[:12]}...) than "
                                  "this xory ships")
        return model

    @property
    def extractor(self):
        if self._extractor is None:
            from .features.extract import Extractor

            self._extractor = Extractor(self.backbone_path, threads=2)
        return self._extractor

    def features(self, photo: Photo) -> PhotoFeatures:
        with self._lock:
            return self.extractor(photo)

    def face_distributions(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face descriptors -> (member probabilities, top-level distributions with the unknown-face rule)."""
        leaf_p = self.face_head.proba(vectors)
        return leaf_p, face_top_distributions(leaf_p, self.face_head.classes, self.top, self.unknown_below)

    def predict_features(self, feats: PhotoFeatures, path: str = "") -> Prediction:
        """The answer for already-extracted features (used by predict, training metrics and evaluation)."""
        faces = feats.faces() if self.face_head is not None else []
        similarity = None
        if faces:
            leaf_p, face_top = self.face_distributions(np.stack([f.vector for f in faces]))
            n = self.top.index(NEITHER) if NEITHER in self.top else -1
            unknown = face_top[:, n] > 0.5 if n >= 0 else np.zeros(len(faces), bool)  # see face_top_distributions
            chosen = assign_members(leaf_p, self.face_head.classes, unknown)
            for i, f in enumerate(faces):
                j = int(chosen[i])
                leaf = self.face_head.classes[j]
                if leaf != NEITHER and unknown[i]:
                    faces[i] = replace(f, label=NEITHER, group=NEITHER, confidence=float(face_top[i, n]))
                else:
                    faces[i] = replace(f, label=leaf.rsplit("/", 1)[-1], group=top_of(leaf),
                                       confidence=float(leaf_p[i, j]))
            dist = combine_faces(face_top, [f.width for f in faces])
            method = "faces"
        else:
            leaf_p = self.image_head.proba(feats.image_vector[None])
            dist = roll_up(leaf_p, self.image_head.classes, self.top)[0]
            method = "image"
            if self.image_ref is not None:
                v = feats.image_vector / max(float(np.linalg.norm(feats.image_vector)), 1e-12)
                similarity = float(np.clip((self.image_ref @ v).max(), 0.0, 1.0))
                if similarity < self.familiar_at:  # a bear, a cat, a chart: the head never saw its like
                    dist = similarity * dist  # the head keeps a share as large as the photo is familiar
                    dist[self.top.index(NEITHER)] += 1.0 - similarity
                    method = "unfamiliar"
        order = np.argsort(-dist, kind="stable")
        confidences = {self.top[i]: float(dist[i]) for i in order}
        return Prediction(path=path, label=self.top[int(order[0])], confidences=confidences, faces=faces,
                          method=method, similarity=similarity, faces_searched=self.face_head is not None)

    def predict(self, source, name: str | None = None) -> Prediction:
        """A Prediction for a file path, bytes, Photo, PIL image or (H, W, 3) array; a photo that cannot be read
        gives one with `error` set."""
        path = name or (str(source) if isinstance(source, (str, Path)) else "<photo>")
        try:
            photo = open_photo(source, name)
            path = photo.path
            return self.predict_features(self.features(photo), path)
        except ImageError as e:
            return Prediction(path=e.path, label=None, confidences={}, faces=[], error=e.reason, method="none")
        except Exception as e:  # one strange photo never stops a batch or the server
            return Prediction(path=path, label=None, confidences={}, faces=[], method="none",
                              error=f"could not process the photo ({type(e).__name__}: {e})")

    def explain(self, source, name: str | None = None, grid: int = 7,
                max_faces: int = 4):
        """Why this answer (an Explanation): each face's contribution to the answer and, for the `max_faces`
        largest, which part of the face mattered (a grid x grid occlusion map); without a face, the whole-image
        class activation map. See xory.explain."""
        from .explain import explain

        return explain(self, source, name, grid=grid, max_faces=max_faces)

    @property
    def groups(self) -> list[str]:
        return [t for t in self.top if t != NEITHER]


def load(folder: str | Path | None = None) -> Model:
    """Load a model bundle (default: the bundled BTS-or-EXO model)."""
    return Model.load(folder)
