"""Look at a model: the one place for metrics. Error rate, balanced error, per-class precision and recall and a
confusion matrix at each label level (group, member); the share of negatives answered "neither"; the top losses.

Every photo is scored by Model.predict_features on its cached features, so these numbers agree exactly with
`xory predict`. A photo's member is its largest face (the one its folder names); its loss is -log of the
probability given to its true label at the finest level it has (the worse of group and member)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from .dataset import NEITHER, Sample, scan
from .features.cache import FeatureCache, PhotoFeatures
from .features.faces import Face
from .model import Model, Prediction

__all__ = ["Scored", "Evaluation", "level_metrics", "score_photos", "evaluate_split", "head_scores", "evaluate",
           "save_evaluation", "format_metrics", "load_photos", "write_atomic", "top_losses_image", "confusion_images", "face_leaf"]

MIN_P = 1e-6  # probabilities are clipped here before the log, so one certain mistake does not read as infinity


def face_leaf(face: Face) -> str:
    """The leaf class a face was given: 'bts/jimin', or 'neither'."""
    return face.group if face.label == face.group else f"{face.group}/{face.label}"


@dataclass
class Scored:
    """One photo's prediction next to its truth."""

    sample: Sample
    prediction: Prediction
    loss: float
    member_row: bool  # its label names a member and a face was found: it counts at the member level
    wrong_faces: list[int] = field(default_factory=list)  # faces named wrongly (by index in prediction.faces)

    @property
    def wrong(self) -> bool:
        return self.prediction.label != self.sample.group or bool(self.wrong_faces and self.member_row)


def _depths(samples: list[Sample]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for s in samples:
        depth[s.group] = max(depth.get(s.group, 0), len(s.label))
    return depth


def score_photos(model: Model, samples: list[Sample], feats: list[PhotoFeatures]) -> list[Scored]:
    depth = _depths(samples)
    out = []
    for s, f in zip(samples, feats):
        p = model.predict_features(f, s.path)
        loss = -math.log(max(p.confidences.get(s.group, 0.0), MIN_P))
        member_row = not s.negative and len(s.label) == depth[s.group] > 1 and bool(p.faces)
        wrong: list[int] = []
        if member_row:
            head = model.face_head
            p_true = head.proba(p.faces[0].vector)[0][head.classes.index(s.leaf)] if s.leaf in head.classes else 0
            loss = max(loss, -math.log(max(float(p_true), MIN_P)))
            wrong = [0] if face_leaf(p.faces[0]) != s.leaf else []
        else:  # a group photo or a negative: every face should belong to its group
            wrong = [i for i, face in enumerate(p.faces) if face.group != s.group]
        out.append(Scored(s, p, float(loss), member_row, wrong))
    return out


def level_metrics(true: list[str], pred: list[str], classes: list[str] | None = None) -> dict:
    """Error rate, balanced error (1 - mean recall over the classes present), per-class precision / recall /
    support, and the confusion matrix (rows: true, columns: predicted). Precision is None for a class never
    predicted; classes default to the union of both lists."""
    classes = list(classes or [])
    classes += sorted({c for c in [*true, *pred] if c not in classes})
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), int)
    for t, p in zip(true, pred):
        m[index[t], index[p]] += 1
    per_class = {}
    for c, i in index.items():
        support, predicted = int(m[i].sum()), int(m[:, i].sum())
        per_class[c] = {"support": support, "predicted": predicted,
                        "precision": m[i, i] / predicted if predicted else None,
                        "recall": m[i, i] / support if support else None}
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    n = len(true)
    return {"photos": n, "error": float(1 - np.trace(m) / n) if n else None,
            "balanced_error": float(1 - np.mean(recalls)) if recalls else None,
            "per_class": {c: {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}
                          for c, d in per_class.items()},
            "classes": classes, "confusion": m.tolist()}


def _prune(level: dict) -> dict:
    """Drop classes that are neither true nor predicted anywhere (a 20-class head on a 3-class folder)."""
    m = np.asarray(level["confusion"])
    keep = [i for i in range(len(m)) if m[i].sum() or m[:, i].sum()]
    return {**level, "classes": [level["classes"][i] for i in keep], "confusion": m[np.ix_(keep, keep)].tolist(),
            "per_class": {level["classes"][i]: level["per_class"][level["classes"][i]] for i in keep}}


def evaluate_split(model: Model, samples: list[Sample], feats: list[PhotoFeatures], top_n: int = 16,
                   scored: list[Scored] | None = None) -> dict:
    """Metrics for labelled photos: `levels` (group, member) in full, the top losses, and the headline numbers
    (top_error / top_balanced_error over labelled photos, member_accuracy per group, neither_share of negatives)."""
    scored = scored if scored is not None else score_photos(model, samples, feats)
    pos = [r for r in scored if not r.sample.negative]
    out: dict = {"photos": len(scored)}
    if pos:
        top = level_metrics([r.sample.group for r in pos], [r.prediction.label for r in pos], model.top)
        out["top_error"], out["top_balanced_error"] = top["error"], top["balanced_error"]
        out["top_recall"] = {g: {"photos": c["support"], "recall": c["recall"]}
                             for g, c in top["per_class"].items() if c["support"]}
    levels = {"group": _prune(level_metrics([r.sample.group for r in scored],
                                            [r.prediction.label for r in scored], model.top))}
    rows = [r for r in scored if r.member_row]
    if rows:
        classes = model.face_head.classes if model.face_head else None
        levels["member"] = _prune(level_metrics([r.sample.leaf for r in rows],
                                                [face_leaf(r.prediction.faces[0]) for r in rows], classes))
        out["member_accuracy"] = {}
        for g in sorted({r.sample.group for r in rows}):
            mine = [r for r in rows if r.sample.group == g]
            out["member_accuracy"][g] = {"photos": len(mine), "accuracy": float(np.mean([not r.wrong_faces
                                                                                           for r in mine]))}
    neg = [r for r in scored if r.sample.negative]
    if neg:
        out["neither_share"] = float(np.mean([r.prediction.label == NEITHER for r in neg]))
        out["negatives"] = len(neg)
    out["no_face_share"] = float(np.mean([r.prediction.method != "faces" for r in scored])) if scored else 0.0
    out["levels"] = levels
    out["top_losses"] = [_loss_json(r) for r in sorted((r for r in scored if r.wrong), key=lambda r: -r.loss)[:top_n]]
    out["wrong_photos"] = sum(r.wrong for r in scored)
    return out


def _loss_json(r: Scored) -> dict:
    p = r.prediction
    faces = [{**f, "wrong": i in r.wrong_faces} for i, f in enumerate(p.to_json()["faces"])]
    return {"path": p.path, "true": r.sample.leaf, "label": p.label,
            "confidence": round(p.confidences.get(p.label, 0.0), 4), "loss": round(r.loss, 4), "method": p.method,
            "faces": faces}


def head_scores(proba: np.ndarray, classes: list[str], y: list[str]) -> dict:
    """Mean cross-entropy and error rate of a head's probabilities on rows with labels y. Rows whose class the
    head never saw (a class thin enough to fall wholly in one fold) cannot be scored: they are counted apart."""
    index = {c: i for i, c in enumerate(classes)}
    known = [i for i, c in enumerate(y) if c in index]
    if not known:
        return {"rows": 0, "loss": None, "error": None, "unseen": len(y)}
    cols = np.array([index[y[i]] for i in known])
    p = np.asarray(proba)[known]
    loss = float(-np.mean(np.log(np.maximum(p[np.arange(len(known)), cols], MIN_P))))
    error = float(np.mean(p.argmax(axis=1) != cols))
    return {"rows": len(known), "loss": loss, "error": error, "unseen": len(y) - len(known)}


@dataclass
class Evaluation:
    metrics: dict
    scored: list[Scored]
    note: str  # which photos were scored, and why
    samples: list[Sample] = field(default_factory=list, repr=False)  # every readable photo given, scored or not
    feats: list[PhotoFeatures] = field(default_factory=list, repr=False)


def _split_of(model: Model, split: str | Path | None) -> tuple[dict | None, str]:
    """The photos a model was trained on and held out, from --split or what the bundle records."""
    from .split import load_split

    if split:
        return load_split(split), f"split file {split}"
    name, folder = model.manifest.get("split_file"), model.bundle.folder
    if name and folder is not None:
        return load_split(folder / name), f"the split recorded in {folder / name}"
    return None, ""


def load_photos(model: Model, data: str | Path, negatives: str | Path | None = None, progress: bool = True
                ) -> tuple[list[Sample], list[PhotoFeatures], list[tuple[str, str]]]:
    """(samples, features, skipped (path, reason)) for a labelled folder, features through the cache."""
    from .features.extract import extract_many, extractor_key

    ds = scan(data, negatives)
    unknown = sorted({s.group for s in ds.samples} - set(model.top) - {NEITHER})
    if unknown:
        raise ValueError(f"{data}: labels {', '.join(unknown)} are not classes of the model "
                         f"({', '.join(model.top)})")
    cache = FeatureCache(extractor_key(model.backbone_path))
    results = extract_many([s.path for s in ds.samples], cache=cache, backbone=model.backbone_path,
                           progress=progress)
    samples, feats, skipped = [], [], list(ds.skipped)
    for s in ds.samples:
        r = results[s.path]
        if isinstance(r, str):
            skipped.append((s.path, r))
        else:
            samples.append(s), feats.append(r)
    return samples, feats, skipped


def evaluate(model: Model | str | Path | None, data: str | Path, negatives: str | Path | None = None,
             split: str | Path | None = None, progress: bool = True, top_n: int = 16) -> Evaluation:
    """Score the photos of a labelled folder (and negatives). When the model records a split (or --split names
    one), photos it was trained on are left out: the numbers are on held-out photos and photos it never saw."""
    model = model if isinstance(model, Model) else Model.load(model)
    samples, feats, skipped = load_photos(model, data, negatives, progress)
    doc, source = _split_of(model, split)
    keep = list(range(len(samples)))
    if doc is None:
        note = (f"all {len(samples)} readable photos (the model records no split: if it was trained on some of "
                "them, these numbers are optimistic)")
    else:
        keep = [i for i, f in enumerate(feats) if f.sha256 not in doc["train"]]
        held = sum(feats[i].sha256 in doc["test"] for i in keep)
        if not keep:
            raise ValueError(f"{data}: the model was trained on all {len(samples)} of these photos ({source}); "
                             "evaluate on other photos, or train with --holdout")
        note = (f"{len(keep)} photos the model did not train on ({held} held out, {len(keep) - held} never seen; "
                f"{len(samples) - len(keep)} training photos left out, per {source})")
    picked, picked_feats = [samples[i] for i in keep], [feats[i] for i in keep]
    scored = score_photos(model, picked, picked_feats)
    metrics = evaluate_split(model, picked, picked_feats, top_n=top_n, scored=scored)
    metrics.update({"model": str(model.bundle.folder), "data": str(data), "negatives_folder": str(negatives or ""),
                    "selection": note, "skipped": [{"path": p, "reason": r} for p, r in skipped]})
    return Evaluation(metrics=metrics, scored=scored, note=note, samples=samples, feats=feats)


def confusion_images(metrics: dict) -> dict:
    from .draw import confusion_image

    titles = {"group": "group (every photo)", "member": "member (largest face of member photos)"}
    return {lvl: confusion_image(np.asarray(m["confusion"]), m["classes"], m["classes"],
                                 f"Confusion, {titles.get(lvl, lvl)}: {m['photos']} photos, "
                                 f"error {m['error']:.3f}")
            for lvl, m in metrics["levels"].items() if m["photos"]}


def top_losses_image(losses: list[dict], cols: int = 4, tile: int = 220):
    """fastai's plot_top_losses, naming the face: the wrong face boxed red, the others green."""
    from .draw import BAD, GOOD, boxes_image, grid
    from .images import ImageError, open_image

    tiles, captions = [], []
    for t in losses:
        try:
            img = open_image(t["path"]).image
        except ImageError:
            continue
        faces = t["faces"]
        tiles.append(boxes_image(img, [f["box"] for f in faces],
                                 [f"{f['label']} {f['confidence']:.0%}" for f in faces],
                                 [BAD if f["wrong"] else GOOD for f in faces], max_side=tile * 2))
        wrong = [f for f in faces if f["wrong"]]
        said = f"said {t['label']} {t['confidence']:.0%}"
        if wrong:
            said += f"; face: {wrong[0]['group']}/{wrong[0]['label']}" if wrong[0]["label"] != wrong[0]["group"] \
                else f"; face: {wrong[0]['label']}"
        captions.append(f"true {t['true']}\n{said}\nloss {t['loss']:.2f}  {Path(t['path']).name[:28]}")
    if not tiles:
        return None
    return grid(tiles, captions, cols=cols, tile=tile, title="Top losses: the photos the model got most "
                "confidently wrong (red: the face named wrongly)")


def write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: a temp file beside it, then rename (an earlier file survives a failure)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is for others to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_evaluation(ev: Evaluation, out: str | Path) -> list[Path]:
    """metrics.json, predictions.jsonl (the `xory predict --json` line plus "true"), confusion_<level>.png/.json,
    top_losses.png; each file written whole (temp, then rename)."""
    from .draw import png_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def put(name: str, data: bytes) -> None:
        write_atomic(out / name, data)
        written.append(out / name)

    put("metrics.json", (json.dumps(ev.metrics, indent=1) + "\n").encode())
    put("predictions.jsonl", "".join(json.dumps({**r.prediction.to_json(), "true": r.sample.leaf}) + "\n"
                                     for r in ev.scored).encode())
    for lvl, img in confusion_images(ev.metrics).items():
        m = ev.metrics["levels"][lvl]
        put(f"confusion_{lvl}.json", (json.dumps({"classes": m["classes"], "rows": "true", "columns": "predicted",
                                                  "confusion": m["confusion"]}) + "\n").encode())
        put(f"confusion_{lvl}.png", png_bytes(img))
    img = top_losses_image(ev.metrics["top_losses"])
    if img is not None:
        put("top_losses.png", png_bytes(img))
    return written


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_metrics(m: dict) -> str:
    """The metrics as a person reads them (training's held-out summary and `xory evaluate`)."""
    lines = [f"photos scored: {m['photos']}"]
    if "top_error" in m:
        lines.append(f"  labelled photos: group error {_f(m['top_error'])}, "
                     f"balanced error {_f(m['top_balanced_error'])}")
        for g, c in m["top_recall"].items():
            lines.append(f"    {g}: recall {_f(c['recall'])} ({c['photos']} photos)")
    for g, c in m.get("member_accuracy", {}).items():
        lines.append(f"  {g} member accuracy {_f(c['accuracy'])} ({c['photos']} photos with a face)")
    if "neither_share" in m:
        lines.append(f"  negatives answered 'neither': {_f(m['neither_share'])} ({m['negatives']} photos)")
    lines.append(f"  answered from the whole image: {_f(m['no_face_share'])}")
    for lvl, lv in m.get("levels", {}).items():
        lines.append(f"  {lvl} level: {lv['photos']} photos, error {_f(lv['error'])}, "
                     f"balanced error {_f(lv['balanced_error'])}")
        width = max(len(c) for c in lv["classes"])
        for c, d in lv["per_class"].items():
            if d["support"] or d["predicted"]:
                lines.append(f"    {c:<{width}}  precision {_f(d['precision'])}  recall {_f(d['recall'])}  "
                             f"({d['support']} true, {d['predicted']} predicted)")
    return "\n".join(lines)
