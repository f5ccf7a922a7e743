"""Why this answer? Three honest measurements, each exact for what it claims:

- faces: the photo's distribution is the width-weighted mean of its faces' distributions (xory.heads), so each
  face's contribution to a class is weight_i * p_i(class), and the contributions add up to the answer exactly;
- a face: occlusion sensitivity on the aligned face chip the descriptor sees (dlib's 150x150 chip): grey out each
  cell of a grid, re-embed, and measure how much the named member's probability drops;
- no face (whole-image head): a class activation map. The head is linear on the standardised mean of
  EfficientNet's last feature map, so class c's logit is mean_hw(sum_k W[c,k] / scale[k] * map[k,h,w]) + const:
  the map inside the mean, CAM_c(h, w), is exactly each cell's share of the logit. Upsampled, normalised to
  [0, 1], laid over the photo."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .features.faces import Face
from .heads import face_weights, top_of
from .images import ImageError, Photo, open_photo
from .model import Model, Prediction

__all__ = ["Explanation", "FaceExplanation", "explain", "class_activation_map", "face_occlusion"]

CHIP = 150  # dlib's descriptor input: 150x150, padding 0.25 (compute_face_descriptor's defaults)
PADDING = 0.25
GREY = 128
MAX_FACES = 4  # occlusion maps for the largest faces only (grid^2 + 1 descriptor runs each)


@dataclass
class FaceExplanation:
    face: Face  # box, member, group, confidence
    weight: float  # this face's share of the photo's answer (its width over the faces' total width)
    contributions: dict[str, float]  # top-level class -> weight * p_face(class); summed over faces: the answer
    importance: np.ndarray | None = field(default=None, repr=False)  # (g, g) drop of p(member) when greyed
    base_probability: float | None = None  # p(member) on the intact chip
    chip: Image.Image | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        f = self.face
        out = {"box": [int(v) for v in f.box], "label": f.label, "group": f.group,
               "confidence": round(float(f.confidence), 4), "weight": round(self.weight, 4),
               "contributions": {k: round(v, 4) for k, v in self.contributions.items()}}
        if self.importance is not None:
            out["occlusion"] = {"grid": list(self.importance.shape),
                                "base_probability": round(self.base_probability, 4),
                                "drop": np.round(self.importance, 4).tolist()}
        return out


@dataclass
class Explanation:
    """Why a photo got its answer. Shows as a picture in Jupyter; `to_json()` is the /explain API answer."""

    prediction: Prediction
    faces: list[FaceExplanation]
    cam: np.ndarray | None = field(default=None, repr=False)  # (H, W) in [0, 1], when the whole-image head answered
    cam_class: str | None = None
    image: Image.Image | None = field(default=None, repr=False)  # the rendered explanation

    @property
    def heat_map_shows(self) -> str:
        """What the class activation map shows (for an unfamiliar photo: the head's class, not the answer's)."""
        if self.prediction.method == "unfamiliar":
            return f"where the whole-image head, which alone would answer '{self.cam_class}', found its evidence"
        return f"where the evidence for '{self.cam_class}' lies"

    def to_json(self, heatmap: bool = False) -> dict:
        p = self.prediction
        out = {**p.to_json(), "method": p.method, "similarity": p.similarity,
               "faces": [f.to_json() for f in self.faces], "cam_class": self.cam_class}
        if heatmap and self.image is not None:
            from .draw import data_url

            out["heatmap"] = data_url(self.image)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the rendered explanation as PNG (temp file, then rename)."""
        from .draw import png_bytes
        from .evaluate import write_atomic

        if self.image is None:
            raise ValueError(f"{self.prediction.path}: nothing to save ({self.prediction.error})")
        path = Path(path)
        if path.suffix.lower() not in ("", ".png"):
            raise ValueError(f"{path}: the explanation is a PNG picture; give a name ending in .png")
        if path.is_dir():
            raise ValueError(f"{path}: is a folder; give a file name ending in .png")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, png_bytes(self.image))
        return path

    def _repr_png_(self) -> bytes | None:
        from .draw import png_bytes

        return png_bytes(self.image) if self.image is not None else None

    def __str__(self) -> str:
        p = self.prediction
        if p.error:
            return f"{p.path}: error: {p.error}"
        lines = [f"{p.path}: {p.label} (" + ", ".join(f"{k} {v:.0%}" for k, v in p.confidences.items()) + ")"]
        if self.faces:
            lines.append(f"  {len(self.faces)} face(s); each counts by its width; contribution to "
                         f"'{p.label}' (they add up to {p.confidences[p.label]:.2f}):")
            for i, f in enumerate(self.faces, 1):
                part = (f" — the chip cell that matters most drops p({f.face.label}) by {f.importance.max():.2f}"
                        if f.importance is not None else "")
                lines.append(f"  #{i} {f.face.label} ({f.face.group}) {f.face.confidence:.0%}, box {f.face.box}, "
                             f"weight {f.weight:.2f}, adds {f.contributions.get(p.label, 0):.3f}{part}")
        else:
            lines.append(f"  {p.how}; the heat map shows {self.heat_map_shows} (class activation map)")
        return "\n".join(lines)


def class_activation_map(model: Model, photo: Photo, leaf: str | None = None) -> tuple[np.ndarray, str]:
    """(CAM at the photo's size in [0, 1], the image-head class it is for: `leaf`, or the most likely one)."""
    head = model.image_head
    _, fmap = model.extractor.image.feature_map(photo.image)  # (1280, 7, 7): the ONNX output feature_map
    if leaf is None:
        vec = fmap.reshape(fmap.shape[0], -1).mean(axis=1)
        leaf = head.classes[int(np.argmax(head.proba(vec)[0]))]
    c = head.classes.index(leaf)
    cam = np.tensordot(head.W[c] / head.scale, fmap.astype(np.float64), axes=1)  # (7, 7)
    big = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(photo.image.size,
                                                                               Image.Resampling.BICUBIC))
    span = float(big.max() - big.min())
    return ((big - big.min()) / span if span > 0 else np.zeros_like(big)).astype(np.float32), leaf


def face_occlusion(model: Model, photo: Photo, face: Face, grid: int = 7) -> tuple[Image.Image, np.ndarray, float]:
    """(the aligned chip, (grid, grid) drop of p(face's member) when each cell is greyed, p on the intact chip)."""
    import dlib

    emb = model.extractor.faces
    arr = np.asarray(photo.image)
    shape = emb.shapes(arr, dlib.rectangle(*[int(v) for v in face.box]))
    chip = dlib.get_face_chip(arr, shape, size=CHIP, padding=PADDING)
    edges = np.linspace(0, CHIP, grid + 1).round().astype(int)
    chips = [chip]
    for r in range(grid):
        for c in range(grid):
            x = chip.copy()
            x[edges[r]:edges[r + 1], edges[c]:edges[c + 1]] = GREY
            chips.append(x)
    vecs = np.asarray(emb.encoder.compute_face_descriptor(chips), np.float64)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
    from .evaluate import face_leaf

    head = model.face_head
    j = head.classes.index(face_leaf(face))
    p = head.proba(vecs)[:, j]
    return Image.fromarray(chip), (p[0] - p[1:]).reshape(grid, grid), float(p[0])


def explain(model: Model, source, name: str | None = None, grid: int = 7,
            max_faces: int = MAX_FACES) -> Explanation:
    """The prediction, each face's contribution and occlusion map, or the CAM when no face answered."""
    if not 1 <= grid <= 30:
        raise ValueError(f"the occlusion grid must be 1 to 30 cells a side, not {grid}")
    try:
        photo = open_photo(source, name)
    except ImageError as e:
        return Explanation(Prediction(path=e.path, label=None, confidences={}, error=e.reason, method="none"), [])
    path = photo.path
    feats = model.features(photo)
    pred = model.predict_features(feats, path)
    faces: list[FaceExplanation] = []
    cam, cam_class = None, None
    if pred.faces:
        weights = face_weights([f.width for f in pred.faces])
        _, face_top = model.face_distributions(np.stack([f.vector for f in pred.faces]))
        for i, f in enumerate(pred.faces):
            contrib = {t: float(weights[i] * face_top[i, k]) for k, t in enumerate(model.top)}
            faces.append(FaceExplanation(face=f, weight=float(weights[i]), contributions=contrib))
        for fx in sorted(faces, key=lambda fx: -fx.weight)[:max_faces]:
            with model._lock:
                fx.chip, fx.importance, fx.base_probability = face_occlusion(model, photo, fx.face, grid)
    else:  # the CAM of the answer's most likely leaf (bears: the class itself); for a photo unlike every training
        # photo, of the class the head alone would have answered (the answer came from the similarity, not the head)
        head = model.image_head
        leaf_p = head.proba(feats.image_vector)[0]
        wanted = [c for c in head.classes if pred.method == "unfamiliar" or top_of(c) == pred.label]
        leaf = max(wanted, key=lambda c: leaf_p[head.classes.index(c)])
        with model._lock:
            cam, cam_class = class_activation_map(model, photo, leaf)
    ex = Explanation(pred, faces, cam, cam_class)
    ex.image = render(photo, ex)
    return ex


def _header(p: Prediction, note: str, width: int) -> Image.Image:
    """The answer line, and the note wrapped to `width` (a narrow picture gets more lines, never a cut sentence)."""
    from .draw import INK, font

    small = font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in note.split():
        if lines and measure.textlength(f"{lines[-1]} {word}", font=small) <= width - 20:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    out = Image.new("RGB", (width, 40 + 18 * len(lines)), "white")
    d = ImageDraw.Draw(out)
    rest = "   ".join(f"{k} {v:.0%}" for k, v in list(p.confidences.items())[1:])
    d.text((10, 6), f"Answer: {p.label} {p.confidences[p.label]:.0%}    ({rest})", fill=INK, font=font(20))
    for i, line in enumerate(lines):
        d.text((10, 34 + 18 * i), line, fill=(80, 80, 80), font=small)
    return out


def render(photo: Photo, ex: Explanation, side: int = 640) -> Image.Image:
    """One picture a person can read: the photo with faces numbered; per face its chip, where the chip mattered,
    and what it added to each class; or, without faces, the photo beside its class activation map."""
    from .draw import INK, PALETTE, boxes_image, font, overlay, thumbnail

    p = ex.prediction
    image, scale = photo.image, 1.0
    if max(image.size) < side // 2:  # a small photo is shown larger (boxes follow)
        scale = (side // 2) / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    if not ex.faces:
        small = thumbnail(image, side)
        heat = overlay(small, np.asarray(Image.fromarray(ex.cam, mode="F").resize(small.size)), alpha=0.55)
        body = Image.new("RGB", (small.width * 2 + 30, small.height + 30), "white")
        body.paste(small, (10, 10))
        body.paste(heat, (small.width + 20, 10))
        note = f"{p.how[0].upper() + p.how[1:]}. Right: {ex.heat_map_shows} (class activation map; yellow = most)."
        header = _header(p, note, body.width)
        out = Image.new("RGB", (body.width, body.height + header.height), "white")
        out.paste(header, (0, 0))
        out.paste(body, (0, header.height))
        return out
    boxed = boxes_image(image, [[v * scale for v in f.face.box] for f in ex.faces],
                        [f"{i} {f.face.label}" for i, f in enumerate(ex.faces, 1)], max_side=side)
    row_h, panel_w = 132, 560
    rows = Image.new("RGB", (panel_w, max(boxed.height, row_h * len(ex.faces)) + 10), "white")
    d = ImageDraw.Draw(rows)
    order = p.confidences
    for i, f in enumerate(ex.faces):
        y = 5 + i * row_h
        color = PALETTE[i % len(PALETTE)]
        d.rectangle([0, y, 5, y + 120], fill=color)
        if f.chip is not None:
            chip = f.chip.resize((120, 120))
            rows.paste(chip, (12, y))
            scaled = np.clip(f.importance / max(float(f.importance.max()), 1e-6), 0, 1)
            rows.paste(overlay(chip, scaled, alpha=0.55), (138, y))
            text_x = 268
        else:
            text_x = 12
        d.text((text_x, y), f"{i + 1}  {f.face.label} ({f.face.group}) {f.face.confidence:.0%}", fill=INK,
               font=font(16))
        d.text((text_x, y + 24), f"weight {f.weight:.0%} of the answer (face width)", fill=(80, 80, 80),
               font=font(12))
        for n, (cls, _) in enumerate(list(order.items())[:3]):
            v = f.contributions[cls]
            vote = v / f.weight if f.weight else 0.0
            yy = y + 46 + n * 18
            d.text((text_x, yy), f"{cls}", fill=INK, font=font(12))
            d.rectangle([text_x + 70, yy + 2, text_x + 70 + 120, yy + 13], outline=(200, 200, 200))
            d.rectangle([text_x + 70, yy + 2, text_x + 70 + 120 * vote, yy + 13], fill=color)
            d.text((text_x + 196, yy), f"{vote:4.0%}   +{v:.2f}", fill=INK, font=font(12))
        if f.chip is not None:
            d.text((text_x, y + 104), f"grey cell: p({f.face.label}) {f.base_probability:.2f} drops up to "
                   f"{float(f.importance.max()):.2f}", fill=(80, 80, 80), font=font(11))
    footer = ("Bars: each face's vote; +x: what it adds to the answer (vote x weight; they add up to the answer). "
              "Heat: where greying out the face lowers its member's probability (yellow = most).")
    width = max(boxed.width + panel_w + 30, int(ImageDraw.Draw(rows).textlength(footer, font=font(12))) + 20)
    note = f"{len(ex.faces)} face(s): the answer is the mean of the faces' votes, each weighted by its width."
    header = _header(p, note, width)
    out = Image.new("RGB", (width, max(boxed.height, rows.height) + header.height + 32), "white")
    out.paste(header, (0, 0))
    out.paste(boxed, (10, header.height + 10))
    out.paste(rows, (boxed.width + 20, header.height + 10))
    ImageDraw.Draw(out).text((10, out.height - 18), footer, fill=(80, 80, 80), font=font(12))
    return out
