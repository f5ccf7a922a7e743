"""The model card: one self-contained report.html (every image embedded as a data: URL) with intended use and
limits, who is in the data, photos per label, held-out metrics, confusion matrices, top losses, the training
table, how well the face embeddings separate these faces, and one explained answer."""
from __future__ import annotations

import datetime as _dt
import html
import random
from pathlib import Path

import numpy as np

from .dataset import NEITHER, Sample
from .evaluate import Evaluation, confusion_images, evaluate, top_losses_image, write_atomic
from .features.cache import PhotoFeatures
from .model import Model
from .split import FACE_DUP

__all__ = ["write_report", "face_separation", "SECTIONS", "THIN"]

THIN = 30  # a label with fewer training photos than this is called thin
MATCH = 0.6  # dlib's own same-person threshold for its 128-d descriptor
SECTIONS = {"use": "Intended use and limits", "data": "Who is in the data", "photos": "Photos per label",
            "metrics": "Metrics on held-out photos", "confusion": "Confusion matrices", "losses": "Top losses",
            "training": "Training", "faces": "How well the face embeddings separate these faces",
            "explain": "One answer, explained"}


def face_separation(samples: list[Sample], feats: list[PhotoFeatures]) -> dict:
    """Distances between the largest faces of member photos: within one member vs between two members (and
    between members of one group). Pairs closer than FACE_DUP are copies or crops of one shot and are left out."""
    rows = [(s.leaf, f.face_vectors[0]) for s, f in zip(samples, feats)
            if not s.negative and len(s.label) > 1 and f.n_faces]
    if len(rows) < 3:
        return {}
    labels = np.array([r[0] for r in rows])
    V = np.stack([r[1] for r in rows]).astype(np.float64)
    d = np.sqrt(np.maximum((V ** 2).sum(1)[:, None] + (V ** 2).sum(1)[None, :] - 2 * V @ V.T, 0))
    iu = np.triu_indices(len(rows), 1)
    dist, a, b = d[iu], labels[iu[0]], labels[iu[1]]
    groups = np.array([lab.split("/")[0] for lab in labels])
    fresh = dist >= FACE_DUP
    same = (a == b) & fresh
    diff = (a != b) & fresh
    same_group = diff & (groups[iu[0]] == groups[iu[1]])
    within, between = dist[same], dist[diff]
    if not len(within) or not len(between):
        return {}
    med = float(np.median(within))
    bins = np.linspace(0, 1.2, 49)
    hw = np.histogram(within, bins)[0] / len(within)
    hb = np.histogram(between, bins)[0] / len(between)
    members = {}
    for lab in sorted(set(labels)):
        mask = labels == lab
        c = V[mask].mean(0)
        others = {o: float(np.linalg.norm(c - V[labels == o].mean(0))) for o in set(labels) if o != lab}
        nearest = min(others, key=others.get)
        members[lab] = {"faces": int(mask.sum()), "nearest_member": nearest, "centroid_distance": others[nearest]}
    return {
        "faces": len(rows), "pairs_within": int(same.sum()), "pairs_between": int(diff.sum()),
        "duplicate_pairs_left_out": int((~fresh).sum()),
        "within_median": med, "between_median": float(np.median(between)),
        "between_same_group_median": float(np.median(dist[same_group])) if same_group.any() else None,
        "between_closer_than_within_median": float(np.mean(between < med)),
        "between_under_match": float(np.mean(between < MATCH)), "within_over_match": float(np.mean(within >= MATCH)),
        "histogram_overlap": float(np.minimum(hw, hb).sum()),
        "members": members, "_within": within, "_between": between,
    }


def _e(x) -> str:
    return html.escape(str(x))


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def _num(v, n: int = 3) -> str:
    return "–" if v is None else f"{v:.{n}f}"


def _table(head: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _img(img, alt: str, fmt: str = "PNG") -> str:
    from .draw import data_url

    return f'<img alt="{_e(alt)}" src="{data_url(img, fmt, quality=75)}">'


def _intended_use(model: Model) -> str:
    groups = ", ".join(model.groups)
    m = model.manifest
    if m["mode"] == "faces":
        members = sum(len(v) for v in m["labels"]["tree"].values())
        what = (f"<p>Says which of <b>{_e(groups)}</b> a photo shows"
                + (" (or <b>neither</b>)" if NEITHER in model.top else "")
                + f", and names each face among the {members} members it was trained on. Meant for fun and for "
                "learning how a photo classifier works and fails: every answer can be explained.</p>")
        limits = [
            "It only knows the people in its training folders. A stranger's face is given the nearest known "
            "member's name, or 'neither' when the model learned that answer from photos of other people; it "
            "does not verify identity.",
            "Not for identifying, tracking or judging real people, nor for any decision about a person.",
            "Faces are found by dlib's HOG detector: faces smaller than about 20 px, in profile, masked or "
            "heavily tilted are missed, and the photo is then judged as a whole (much less accurate).",
            "Thin members (fewer than %d training photos, listed below) are named less reliably." % THIN,
            *(["A photo without a face that is unlike every training photo (cosine below %.2f to the nearest, "
               "e.g. an animal) is answered 'neither'; a 'face' that dlib finds on an animal is still trusted."
               % model.familiar_at] if model.familiar_at > 0 else []),
            "The numbers below come from held-out photos of the same sources as the training photos; photos unlike "
            "them (other lighting, styling, years, cameras) may score lower.",
            "The face descriptor (dlib's 128-d ResNet) was not trained for these people; how well it separates "
            "them is measured below, not assumed.",
        ]
    else:
        what = (f"<p>Says which of <b>{_e(groups)}</b> a photo shows, from the whole photo (EfficientNet-Lite0 "
                "features and a linear head).</p>")
        limits = ["It always answers with one of its classes, even for a photo of something else.",
                  "The numbers below come from held-out photos of the same sources as the training photos."]
    return what + "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in limits) + "</ul>"


def _data_section(model: Model, ev: Evaluation) -> str:
    t = model.manifest.get("training", {})
    counts: dict[str, int] = t.get("counts") or {}
    train_counts: dict[str, int] = {}
    data_counts: dict[str, int] = {}
    faces: dict[str, list[bool]] = {}
    for s, f in zip(ev.samples, ev.feats):
        data_counts[s.leaf] = data_counts.get(s.leaf, 0) + 1
        faces.setdefault(s.leaf, []).append(f.n_faces > 0)
    split = model.manifest.get("split_file")
    if split and model.bundle.folder is not None:  # the photos it trained on: the split's training side
        from .split import load_split

        trained = load_split(model.bundle.folder / split)["train"]
        for s, f in zip(ev.samples, ev.feats):
            if f.sha256 in trained:
                train_counts[s.leaf] = train_counts.get(s.leaf, 0) + 1
    else:  # trained on everything it was given
        train_counts = dict(counts)
    labels = sorted(set(counts) | set(data_counts))
    rows, thin = [], []
    for lab in labels:
        n_train = train_counts.get(lab, 0)
        is_thin = n_train < THIN and "/" in lab and not lab.split("/", 1)[1].startswith("_")
        if is_thin:
            thin.append(f"{lab} ({n_train})")
        share = np.mean(faces[lab]) if lab in faces else None
        rows.append([_e(lab), counts.get(lab, "–"), n_train, _pct(share), "thin" if is_thin else ""])
    out = (f"<p>{t.get('photos', len(ev.samples))} photos were given to training ({_e(t.get('data', ''))}"
           + (f" + negatives {_e(t.get('negatives'))}" if t.get("negatives") else "")
           + f"); {t.get('train_photos', '–')} trained the heads, {t.get('heldout_photos', 0)} were held out. "
           "A label is a folder path; a member photo's label names the person it shows; group photos "
           "(<code>_group</code>) carry only the group.</p>")
    out += _table(["label", "photos", "used for training", "with a face", ""], rows)
    if thin:
        out += f"<p><b>Thin labels</b> (fewer than {THIN} training photos): {_e(', '.join(thin))}.</p>"
    return out


def _photos_section(ev: Evaluation, per_label: int = 5) -> str:
    from .draw import grid
    from .images import ImageError, open_image

    by_label: dict[str, list[str]] = {}
    for s in ev.samples:
        by_label.setdefault(s.leaf, []).append(s.path)
    out = []
    for lab, paths in sorted(by_label.items()):
        rng = random.Random(lab)
        picks = rng.sample(paths, min(per_label, len(paths)))
        tiles = []
        for p in picks:
            try:
                tiles.append(open_image(p).image)
            except ImageError:
                continue
        if tiles:
            img = grid(tiles, [""] * len(tiles), cols=per_label, tile=84)
            n = f"{len(paths)} photo" + ("s" if len(paths) != 1 else "")
            out.append(f'<div class="lab"><h3>{_e(lab)} <small>({n})</small></h3>'
                       f"{_img(img, lab, 'JPEG')}</div>")
    return "<p>A few photos of each label, picked at random.</p>" + "".join(out)


def _metrics_section(ev: Evaluation) -> str:
    m = ev.metrics
    out = [f"<p>Scored: {_e(ev.note)}.</p>"]
    head = []
    if "top_error" in m:
        head.append(["group error (labelled photos)", _num(m["top_error"])])
        head.append(["group balanced error (labelled photos)", _num(m["top_balanced_error"])])
    for g, c in m.get("member_accuracy", {}).items():
        head.append([f"{_e(g)} member accuracy ({c['photos']} photos with a face)", _num(c["accuracy"])])
    if "neither_share" in m:
        head.append([f"negatives answered 'neither' ({m['negatives']} photos of other people)",
                     _num(m["neither_share"])])
    head.append(["answered from the whole image (no face found)", _pct(m["no_face_share"])])
    out.append(_table(["measure", "value"], head))
    for lvl, lv in m["levels"].items():
        out.append(f"<h3>{_e(lvl)} level: error {_num(lv['error'])}, balanced error {_num(lv['balanced_error'])} "
                   f"({lv['photos']} photos)</h3>")
        out.append(_table(["class", "precision", "recall", "true", "predicted"],
                          [[_e(c), _num(d["precision"]), _num(d["recall"]), d["support"], d["predicted"]]
                           for c, d in lv["per_class"].items()]))
    return "".join(out)


def _training_section(model: Model) -> str:
    t = model.manifest.get("training", {})
    folds, val = t.get("folds") or [], t.get("validation") or {}
    out = [f"<p>Mode: {_e(model.manifest.get('mode'))}. Heads: "
           + "; ".join(f"{_e(k)}: {len(v['classes'])} classes, {v['rows']} rows, C={v['C']}"
                       for k, v in model.manifest["heads"].items() if v)
           + ". Time: " + ", ".join(f"{_e(k)} {v} s" for k, v in t.get("seconds", {}).items()) + ".</p>"]
    if folds:
        out.append(f"<p>{val['k']}-fold cross-validation on the training photos (duplicate clusters and negative "
                   "people kept within one fold; each head refitted exactly as the bundle's):</p>")
        out.append(_table(["fold", "head", "train rows", "valid rows", "train loss", "valid loss", "error",
                           "group error"],
                          [[r["fold"], _e(r["head"]), r["train_rows"], r["valid_rows"], _num(r["train_loss"]),
                            _num(r["valid_loss"]), _num(r["error"]), _num(r["group_error"])] for r in folds]))
        out.append(_table(["head", "valid loss", "error", "group error"],
                          [[_e(h), f"{s['valid_loss']['mean']:.3f} ± {s['valid_loss']['std']:.3f}",
                            f"{s['error']['mean']:.3f} ± {s['error']['std']:.3f}",
                            f"{s['group_error']['mean']:.3f} ± {s['group_error']['std']:.3f}"]
                           for h, s in val["heads"].items()]))
    else:
        out.append("<p>This model was trained without cross-validation (no training table recorded).</p>")
    return "".join(out)


def _faces_section(sep: dict) -> str:
    from .draw import histogram_image

    if not sep:
        return "<p>No member-labelled faces in this data: nothing to measure.</p>"
    img = histogram_image({"same member": sep["_within"], "two members": sep["_between"]}, np.linspace(0, 0.8, 41),
                          "Face descriptor distances", "Euclidean distance between 128-d descriptors",
                          {"within median": sep["within_median"], "0.6": MATCH})
    rows = [["faces (largest face of each member photo)", sep["faces"]],
            ["median distance, same member", _num(sep["within_median"])],
            ["median distance, two members", _num(sep["between_median"])],
            ["median distance, two members of one group", _num(sep["between_same_group_median"])],
            ["pairs of two members closer than the same-member median", _pct(sep["between_closer_than_within_median"])],
            [f"pairs of two members closer than {MATCH} (dlib's same-person threshold)",
             _pct(sep["between_under_match"])],
            [f"same-member pairs farther than {MATCH}", _pct(sep["within_over_match"])],
            ["overlap of the two histograms", _pct(sep["histogram_overlap"])],
            ["pairs left out as copies or crops of one shot (distance < %.1f)" % FACE_DUP,
             sep["duplicate_pairs_left_out"]]]
    members = sorted(sep["members"].items(), key=lambda kv: kv[1]["centroid_distance"])
    return ("<p>dlib's descriptor was trained to put photos of one person within 0.6 of each other. Here are the "
            "distances between these people's faces (pairs of the same member vs pairs of two members):</p>"
            + _img(img, "distance histogram") + _table(["measure", "value"], rows)
            + "<p>Each member's nearest other member (distance between the mean descriptors), closest first:</p>"
            + _table(["member", "faces", "nearest other member", "distance"],
                     [[_e(k), v["faces"], _e(v["nearest_member"]), _num(v["centroid_distance"])] for k, v in members]))


def _explain_section(model: Model, ev: Evaluation) -> str:
    """Explain one scored photo with several faces (else the first scored photo)."""
    if not ev.scored:
        return "<p>No photo scored.</p>"
    pick = max(ev.scored, key=lambda r: (2 <= len(r.prediction.faces) <= 5, -abs(len(r.prediction.faces) - 3),
                                         r.sample.path))
    ex = model.explain(pick.sample.path, grid=5, max_faces=3)
    return (f"<p>{_e(Path(pick.sample.path).name)} (true: {_e(pick.sample.leaf)}). The same picture comes from "
            f"<code>xory explain PHOTO --out why.png</code>.</p>" + _img(ex.image, "explanation", "JPEG"))


CSS = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}h2{border-bottom:1px solid #ccc;
margin-top:2em}small{color:#777}code{background:#f3f3f3;padding:0 3px}
.lab{display:inline-block;vertical-align:top;margin:0 1.5em 0 0}.lab h3{margin:.6em 0 0}"""


def write_report(model_dir: str | Path | None, data: str | Path, out: str | Path,
                 negatives: str | Path | None = None, split: str | Path | None = None, progress: bool = True,
                 explain_one: bool = True) -> Path:
    """Evaluate on the data (held-out photos when the model records its split) and write the card to `out`."""
    model = Model.load(model_dir)
    ev = evaluate(model, data, negatives, split=split, progress=progress)
    sep = face_separation(ev.samples, ev.feats)
    ev.metrics["face_separation"] = {k: v for k, v in sep.items() if not k.startswith("_")}
    conf = "".join(_img(img, f"confusion {lvl}") for lvl, img in confusion_images(ev.metrics).items())
    losses = top_losses_image(ev.metrics["top_losses"], cols=4, tile=200)
    title = " or ".join(g.upper() if model.manifest["mode"] == "faces" else g for g in model.groups) + "?"
    body = {
        "use": _intended_use(model),
        "data": _data_section(model, ev),
        "photos": _photos_section(ev),
        "metrics": _metrics_section(ev),
        "confusion": conf or "<p>Nothing to show.</p>",
        "losses": _img(losses, "top losses", "JPEG") if losses is not None else "<p>No photo was answered wrongly.</p>",
        "training": _training_section(model),
        "faces": _faces_section(sep) if model.manifest["mode"] == "faces" else
        "<p>This model does not use faces.</p>",
        "explain": _explain_section(model, ev) if explain_one else "<p>Left out.</p>",
    }
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    toc = "".join(f'<li><a href="#{k}">{_e(v)}</a></li>' for k, v in SECTIONS.items())
    sections = "".join(f'<h2 id="{k}">{_e(SECTIONS[k])}</h2>{body[k]}' for k in SECTIONS)
    doc = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Model card: {_e(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>Model card: {_e(title)}</h1>"
           f"<p><small>Model {_e(Path(str(model.bundle.folder)).name)} · evaluated on {_e(data)}"
           + (f" + {_e(negatives)}" if negatives else "")
           + f" · written {when} by <code>xory report</code></small></p><ul>{toc}</ul>{sections}</body></html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, doc.encode("utf-8"))
    return out
