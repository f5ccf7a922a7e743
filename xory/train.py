"""Folder of labelled photos -> model bundle.

Faces mode (chosen when at least half of the labelled photos show a face): a face head at the finest label
(member), trained on the largest face of each member photo and on every face of a negative photo, plus a
whole-image head at the top level for photos without a face. Image mode (bears, pets): one whole-image head at
the finest label."""
from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .bundle import ARRAYS_FILE, ModelBundle, file_sha256, owned_model_files
from .crossval import HeadRecipe, cross_validate
from .dataset import NEITHER, Dataset, Sample, scan
from .evaluate import evaluate_split, format_metrics
from .features.cache import FeatureCache, PhotoFeatures
from .features.extract import extract_many, extractor_key
from .features.image import BACKBONE_PATH
from .heads import LinearHead
from .model import Model
from .split import holdout_split, load_split, save_split

__all__ = ["TrainConfig", "train", "evaluate_split", "load_table", "fit_bundle", "check_config", "FACE_C", "IMAGE_C", "SPLIT_FILE",
           "FAMILIAR_AT"]

FACE_C = 30.0  # face descriptors are unit-length and well separated: a weakly regularised head (C swept on 3 splits)
IMAGE_C = 0.05  # 1280 standardised CNN features: strongly regularised
# With negatives: a face whose best member is below this is "neither". Held-out (seed 0): "neither" for unseen
# people 0.16 -> 0.58, BTS/EXO photos answered "neither" 1% -> 3%; the table is in the README.
UNKNOWN_BELOW = 0.25
# With negatives: a photo without a face is "neither" when its whole-image vector is unlike every training photo's
# (cosine to the nearest below this). Held-out (seed 0): 0 of 22 BTS/EXO photos without a face fall below it; of the
# bears and pets (never seen in training), 98 % and 97 % do: they were a confident "bts" or "exo" before.
FAMILIAR_AT = 0.5
REFERENCE_MAX = 4000  # reference vectors kept in the bundle (float16: 2.5 kB each); a seeded sample beyond this
FACES_MODE_MIN_SHARE = 0.5
SPLIT_FILE = "split.json"


@dataclass
class TrainConfig:
    data: str
    out: str
    negatives: str | None = None
    holdout: float = 0.0
    split: str | None = None  # a split file (xory data split): its "test" photos are held out
    seed: int = 0
    mode: str = "auto"  # "auto", "faces" or "image"
    folds: int = 5  # k-fold cross-validation of the heads on the training photos (the training table); 0: none
    face_C: float = FACE_C
    unknown_below: float = UNKNOWN_BELOW
    image_C: float = IMAGE_C
    workers: int | None = None
    cache_dir: str | None = None
    progress: bool = True


@dataclass
class _Table:
    samples: list[Sample]
    feats: list[PhotoFeatures]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _leaf_depths(samples: list[Sample]) -> dict[str, int]:
    """The label depth of each top-level class's members (bts -> 2 when bts/jimin exists)."""
    depth: dict[str, int] = {}
    for s in samples:
        depth[s.group] = max(depth.get(s.group, 0), len(s.label))
    return depth


def _face_rows(samples, feats) -> tuple[np.ndarray, list[str]]:
    """Face head training rows: the largest face of a photo with a full label; every face of a negative."""
    depth = _leaf_depths(samples)
    X, y = [], []
    for s, f in zip(samples, feats):
        if not f.n_faces:
            continue
        if s.negative:
            X.extend(f.face_vectors)
            y.extend([NEITHER] * f.n_faces)
        elif len(s.label) == depth[s.group]:
            X.append(f.face_vectors[0])
            y.append(s.leaf)
    return np.asarray(X, np.float32).reshape(-1, 128), y


def _image_rows(samples, feats, mode: str) -> tuple[np.ndarray, list[str]]:
    depth = _leaf_depths(samples)
    X, y = [], []
    for s, f in zip(samples, feats):
        if mode == "faces":
            X.append(f.image_vector), y.append(s.group)
        elif len(s.label) == depth[s.group]:
            X.append(f.image_vector), y.append(s.leaf)
    return np.asarray(X, np.float32), y


def reference_vectors(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Unit-length float16 copies of the training photos' image vectors (at most REFERENCE_MAX, a seeded sample)."""
    if len(X) > REFERENCE_MAX:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), REFERENCE_MAX, replace=False))]
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float16)


def head_recipes(cfg: TrainConfig, mode: str) -> dict[str, HeadRecipe]:
    """The heads fit_bundle fits, as (rows, C, standardize): cross-validation refits them exactly."""
    recipes: dict[str, HeadRecipe] = {}
    if mode == "faces":
        recipes["face"] = (_face_rows, cfg.face_C, False)
    recipes["image"] = (lambda samples, feats: _image_rows(samples, feats, mode), cfg.image_C, True)
    return recipes


def fit_bundle(samples: list[Sample], feats: list[PhotoFeatures], cfg: TrainConfig, mode: str,
               log: Callable[[str], None] = print) -> ModelBundle:
    top = sorted({s.group for s in samples}, key=lambda g: (g == NEITHER, g))
    arrays: dict[str, np.ndarray] = {}
    heads: dict[str, dict | None] = {"face": None, "image": None}
    if mode == "faces":
        X, y = _face_rows(samples, feats)
        face = LinearHead.fit(X, y, C=cfg.face_C, standardize=False)
        arrays.update(face.to_arrays("face"))
        heads["face"] = {"classes": face.classes, "input": "face_descriptor_128", "C": cfg.face_C,
                         "unknown_below": cfg.unknown_below if NEITHER in face.classes else 0.0,
                         "rows": len(y)}
        log(f"face head: {len(y)} faces, {len(face.classes)} classes")
    X, y = _image_rows(samples, feats, mode)
    image = LinearHead.fit(X, y, C=cfg.image_C)
    arrays.update(image.to_arrays("image"))
    heads["image"] = {"classes": image.classes, "input": "efficientnet_lite0_1280", "C": cfg.image_C, "rows": len(y)}
    log(f"image head: {len(y)} photos, {len(image.classes)} classes")
    if mode == "faces" and NEITHER in top:
        ref = reference_vectors(np.stack([f.image_vector for f in feats]), cfg.seed)
        arrays["image_ref"] = ref
        heads["image"]["familiar_at"] = FAMILIAR_AT
        log(f"familiar photos: {len(ref)} reference vectors; a photo without a face below cosine {FAMILIAR_AT} "
            "to all of them is 'neither'")
    tree: dict[str, list[str]] = {t: [] for t in top}
    for s in samples:
        if len(s.label) > 1:
            tree[s.group].append("/".join(s.label[1:]))
    manifest = {
        "labels": {"top": top, "tree": {k: sorted(set(v)) for k, v in tree.items()}},
        "mode": mode,
        "features": {
            "faces": {"detector": "dlib HOG frontal", "landmarks": "shape_predictor_5_face_landmarks",
                      "descriptor": "dlib_face_recognition_resnet_model_v1 (128-d)"} if mode == "faces" else None,
            "image": {"name": "efficientnet_lite0", "file": None, "sha256": file_sha256(BACKBONE_PATH),
                      "input": "224x224 squash, (x-127.5)/127.5"},
        },
        "heads": heads,
        "aggregation": "faces: width-weighted mean of the faces' top-level distributions (a top-level class is "
                       "the sum of its members); no face: the whole-image head, or 'neither' for a photo unlike every "
                       "training photo (heads.image.familiar_at)",
    }
    return ModelBundle(manifest=manifest, arrays=arrays)


def load_table(cfg: TrainConfig, ds: Dataset, log: Callable[[str], None] = print) -> _Table:
    cache = FeatureCache(extractor_key(BACKBONE_PATH), Path(cfg.cache_dir) if cfg.cache_dir else None)
    results = extract_many([s.path for s in ds.samples], cache=cache, workers=cfg.workers, progress=cfg.progress)
    table = _Table(samples=[], feats=[], skipped=list(ds.skipped))
    for s in ds.samples:
        r = results[s.path]
        if isinstance(r, str):
            table.skipped.append((s.path, r))
        else:
            table.samples.append(s)
            table.feats.append(r)
    return table


def check_config(cfg: TrainConfig, writes: tuple[str, ...] = (ARRAYS_FILE,)) -> set[str] | None:
    """Refuse bad options (--holdout, --split, --out, --folds, --unknown-below, --workers) before any work; the split
    file's held-out hashes, if one is given. `writes`: the files the save will put in --out besides manifest.json
    and split.json (a user's entry of that name there is refused now, not after the training)."""
    if cfg.folds < 0 or cfg.folds == 1:
        raise ValueError(f"--folds {cfg.folds}: give 0 (no cross-validation) or at least 2")
    if not 0 <= cfg.unknown_below < 1:
        raise ValueError(f"--unknown-below {cfg.unknown_below}: give a probability from 0 up to (not including) 1")
    if cfg.workers is not None and cfg.workers < 1:
        raise ValueError(f"--workers {cfg.workers}: give at least 1")
    if not 0 <= cfg.holdout < 1:
        raise ValueError(f"--holdout {cfg.holdout}: give the share of photos to hold out, from 0 up to (not "
                         "including) 1, e.g. 0.2")
    if cfg.split and cfg.holdout:
        raise ValueError("give --split or --holdout, not both (a split file already says which photos are held out)")
    # --out pointed at photos, a file, or a model folder holding a user's split.json: refused now, not after minutes
    owned_model_files(Path(cfg.out).resolve(), [*writes, *([SPLIT_FILE] if cfg.split or cfg.holdout else [])])
    return load_split(cfg.split)["test"] if cfg.split else None


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Scan, extract (cached), fit, measure on the hold-out (if any), save the bundle. Returns (folder, summary)."""
    t0 = time.time()
    test = check_config(cfg)
    ds = scan(cfg.data, cfg.negatives)
    log(f"{len(ds.samples)} photos in {len(ds.counts())} labels under {cfg.data}"
        + (f" (+ negatives from {cfg.negatives})" if cfg.negatives else ""))
    table = load_table(cfg, ds, log)
    t_feat = time.time() - t0
    for path, reason in table.skipped:
        log(f"skipped {path}: {reason}")
    if not table.samples:
        raise ValueError(f"{cfg.data}: no readable photos")
    with_face = np.mean([f.n_faces > 0 for s, f in zip(table.samples, table.feats) if not s.negative])
    mode = cfg.mode if cfg.mode != "auto" else ("faces" if with_face >= FACES_MODE_MIN_SHARE else "image")
    log(f"{with_face:.0%} of the photos show a face: {mode} mode")
    train_idx, held_idx = list(range(len(table.samples))), []
    if test is not None:
        held_idx = [i for i, f in enumerate(table.feats) if f.sha256 in test]
        train_idx = [i for i, f in enumerate(table.feats) if f.sha256 not in test]
        log(f"split {cfg.split}: {len(held_idx)} photos held out, {len(train_idx)} for training")
    elif cfg.holdout > 0:
        train_idx, held_idx = holdout_split(table.samples, table.feats, cfg.holdout, cfg.seed)
        log(f"hold-out: {len(held_idx)} photos (whole duplicate clusters and people), {len(train_idx)} for training")
    pick = lambda idx, xs: [xs[i] for i in idx]  # noqa: E731
    cv, t_cv = None, time.time()
    if cfg.folds >= 2:
        cv = cross_validate(pick(train_idx, table.samples), pick(train_idx, table.feats), head_recipes(cfg, mode),
                            k=cfg.folds, seed=cfg.seed, log=log)
    t1 = time.time()
    bundle = fit_bundle(pick(train_idx, table.samples), pick(train_idx, table.feats), cfg, mode, log)
    t_fit = time.time() - t1
    summary = {
        "data": str(cfg.data), "negatives": cfg.negatives, "photos": len(table.samples),
        "counts": {**ds.counts()}, "skipped": [{"path": p, "reason": r} for p, r in table.skipped],
        "mode": mode, "face_share": float(with_face), "holdout": cfg.holdout, "split": cfg.split, "seed": cfg.seed,
        "train_photos": len(train_idx), "heldout_photos": len(held_idx),
        "seconds": {"features": round(t_feat, 1), "fit": round(t_fit, 2)}, "python": platform.python_version(),
    }
    if cv is not None:
        summary["seconds"]["cross_validation"] = round(t1 - t_cv, 1)
        summary["folds"] = cv["folds"]
        summary["validation"] = {"k": cv["k"], "seed": cv["seed"], "heads": cv["summary"]}
    bundle.manifest["training"] = summary
    if held_idx:
        bundle.folder = None
        metrics = evaluate_split(Model(bundle), pick(held_idx, table.samples), pick(held_idx, table.feats))
        bundle.manifest["metrics"] = {"heldout": metrics}
        log(format_metrics(metrics))
    with tempfile.TemporaryDirectory() as tmp:
        if held_idx:  # the bundle remembers which photos it never saw, so `xory evaluate` can measure on them
            bundle.extra_files[SPLIT_FILE] = save_split(
                Path(tmp) / SPLIT_FILE, [table.feats[i].sha256 for i in train_idx],
                [table.feats[i].sha256 for i in held_idx], cfg.seed, cfg.holdout)
            bundle.manifest["split_file"] = SPLIT_FILE
        folder = bundle.save(cfg.out)
    summary["seconds"]["total"] = round(time.time() - t0, 1)
    log(f"saved {folder} in {summary['seconds']['total']} s (features {t_feat:.1f} s, fit {t_fit:.2f} s)")
    if table.skipped:
        log(f"{len(table.skipped)} file(s) skipped (listed above with the reason, and in the manifest)")
    return folder, bundle.manifest
