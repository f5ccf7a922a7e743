"""Ship a model beyond this machine: `xory site` (a static GitHub Pages folder: the web page, pointed at a server,
and an About page made from the model card) and `xory space` (a Hugging Face Space folder: app.py, pinned
requirements, the Space README, xory itself and the model bundle; it starts with `python app.py`).

Both are written to a temporary folder beside OUT and renamed into place, so a failure leaves nothing half-made;
OUT must be new, empty, or an earlier export of the same kind (which is replaced whole)."""
from __future__ import annotations

import html
import importlib.metadata as md
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .bundle import ModelBundle, default_model_dir, swap_folder, readable_by_others

__all__ = ["WEB_DIR", "MODEL_CARD", "ExportResult", "about_html", "export_site", "export_space", "pinned_requirements"]

WEB_DIR = Path(__file__).resolve().parent / "web"
WEB_FILES = ["index.html", "style.css", "app.js", "gradio-client.js"]
MODEL_CARD = "report.html"  # the model card (`xory report`), looked for in the bundle folder
MARKER = ".xory-export"
PACKAGE = Path(__file__).resolve().parent


@dataclass
class ExportResult:
    folder: Path
    files: list[str]
    notes: list[str]


class ExportError(ValueError):
    """An export that cannot be written, with the reason."""


# ---------------------------------------------------------------- the About page


def _title(groups: list[str]) -> str:
    return " or ".join(g.upper() if len(g) <= 4 else g for g in groups) + "?"


def _fmt(x: object) -> str:
    return f"{x:.1%}" if isinstance(x, float) else html.escape(str(x))


def _from_manifest(m: dict) -> str:
    """An About page from manifest.json alone: labels, training data, held-out metrics, how faces combine."""
    groups = [t for t in m["labels"]["top"] if t != "neither"]
    tree = m["labels"].get("tree", {})
    train = m.get("training", {})
    held = (m.get("metrics") or {}).get("heldout") or {}
    rows = []
    for g in m["labels"]["top"]:
        members = ", ".join(html.escape(x) for x in tree.get(g, []) if x) or (
            "people of neither group (taught from other people's photos)" if g == "neither" else "(no members)")
        rows.append(f"<tr><th scope=row>{html.escape(g)}</th><td>{members}</td></tr>")
    metrics = []
    if "top_balanced_error" in held:
        metrics.append(("group: balanced error", held["top_balanced_error"]))
        metrics.append(("group: error rate", held["top_error"]))
    for g, v in (held.get("member_accuracy") or {}).items():
        metrics.append((f"{g} members: accuracy ({v['photos']} photos)", v["accuracy"]))
    if "neither_share" in held:
        metrics.append((f"people in neither group answered \"neither\" ({held['negatives']} photos)",
                        held["neither_share"]))
    metric_html = ("<table>" + "".join(f"<tr><th scope=row>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                                       for k, v in metrics) + "</table>"
                   if metrics else "<p>This model was trained on all its photos, so no held-out figures exist. "
                   "Measure it with <code>xory train --holdout 0.2</code> or <code>xory evaluate</code>.</p>")
    counts = train.get("counts") or {}
    count_html = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
    heldout_note = (f" ({held.get('photos', train.get('heldout_photos'))} photos held out from training, whole "
                    "duplicate clusters and people kept on one side)" if held else "")
    return f"""<h1>About this model: {html.escape(_title(groups))}</h1>
<p>It answers one of <b>{html.escape(", ".join(m["labels"]["top"]))}</b> for a photo. Each face is found (dlib),
named by a classifier over 128-d face descriptors, and the faces together give the answer; a photo without a face
is judged as a whole by an EfficientNet-Lite0 head.</p>
<p>How the answer is made: {html.escape(m.get("aggregation", ""))}.</p>
<h2>Classes</h2><table>{"".join(rows)}</table>
<h2>Measured on photos it did not see{heldout_note}</h2>{metric_html}
<h2>Training data</h2><p>{train.get("photos", "?")} photos ({train.get("face_share", 0):.0%} with a face),
mode: {html.escape(str(m.get("mode")))}. Photos per label: {count_html or "not recorded"}.</p>
<h2>Limits</h2><p>It knows only the people it was trained on: anyone else gets the nearest of them or
"neither". Thin classes (few photos) are named less reliably. It says nothing about who a person really is;
use it for fun, not to identify anyone.</p>"""


def about_html(bundle_folder: str | Path | None = None, card: str | Path | None = None) -> str:
    """The About page: the model card (report.html) with a link back to the classifier, else a page made from
    the bundle's manifest.json."""
    folder = Path(bundle_folder or default_model_dir())
    card_path = Path(card) if card else folder / MODEL_CARD
    if card and not card_path.is_file():
        raise ExportError(f"{card}: model card not found")
    back = '<p><a href="./">&larr; Back to the classifier</a></p>'
    if card_path.is_file():
        text = card_path.read_text(encoding="utf-8")
        m = re.search(r"<body[^>]*>", text, flags=re.I)
        return text[:m.end()] + back + text[m.end():] if m else back + text
    manifest = json.loads((folder / "manifest.json").read_text())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>About this model · xory</title><link rel="stylesheet" href="style.css">
<style>main{{max-width:48rem}} table{{border-collapse:collapse;margin:.5rem 0}}
th,td{{text-align:left;padding:.25rem .75rem .25rem 0;vertical-align:top;border-bottom:1px solid #dee2e6}}</style>
</head><body><main>{back}{_from_manifest(manifest)}</main></body></html>
"""


# ---------------------------------------------------------------- writing a folder safely


def _check_out(out: Path, kind: str) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):  # a fresh clone (.git) is fine
        marker = out / MARKER
        if not marker.is_file() or marker.read_text().split()[:1] != [kind]:
            raise ExportError(f"{out}: the folder is not empty and was not made by `xory {kind}`; "
                              "choose a new or empty folder (nothing was changed)")


def _write_atomically(out: Path, kind: str, fill) -> list[str]:
    """Make the export in a temp folder beside `out` with fill(tmp), then put it in place of `out`. Over an
    earlier export, only xory's own files are replaced: the marker lists them, and everything else there (.git,
    .venv, CNAME, notes) is kept."""
    out = out.resolve()
    _check_out(out, kind)
    marker = out / MARKER
    owned = set(marker.read_text().split()[1:]) | {MARKER} if marker.is_file() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        readable_by_others(tmp)  # a web server must be able to read the export
        fill(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(kind + "\n" + "\n".join(names) + "\n")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        swap_folder(tmp, out, owned | set(names))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return files


def _load_bundle(model_dir: str | Path | None) -> ModelBundle:
    return ModelBundle.load(model_dir or default_model_dir())  # checks schema and checksums: refuse a bad model


# ---------------------------------------------------------------- xory site


def _check_api(api: str) -> str:
    u = urlparse(api)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ExportError(f"--api {api!r}: give the server's full address, e.g. https://user-space.hf.space/")
    return api.rstrip("/") + "/"


def export_site(out: str | Path, api: str, model_dir: str | Path | None = None,
                card: str | Path | None = None) -> ExportResult:
    """A GitHub Pages folder: the page asking `api`, about.html from the model card, .nojekyll."""
    api = _check_api(api)
    bundle = _load_bundle(model_dir)
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace('<meta name="xory-api" content="">', f'<meta name="xory-api" content="{html.escape(api)}">')
    if html.escape(api) not in page:
        raise ExportError(f"{WEB_DIR / 'index.html'}: has no <meta name=\"xory-api\"> to fill in")

    def fill(tmp: Path) -> None:
        for name in WEB_FILES[1:]:
            shutil.copyfile(WEB_DIR / name, tmp / name)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / "about.html").write_text(about_html(bundle.folder, card), encoding="utf-8")
        (tmp / ".nojekyll").write_text("")

    files = _write_atomically(Path(out), "site", fill)
    notes = []
    host = urlparse(api).hostname or ""
    if api.startswith("http://") and host not in ("localhost", "127.0.0.1", "::1"):
        notes.append("GitHub Pages serves https: browsers block its calls to an http:// server; "
                     "give the server an https address")
    return ExportResult(Path(out).resolve(), files, notes)


# ---------------------------------------------------------------- xory space


def pinned_requirements(dist: str = "xory") -> list[str]:
    """`name==version` for each run-time requirement of `dist`, at the versions installed here."""
    reqs = []
    for r in md.requires(dist) or []:
        if ";" in r and "extra" in r.split(";", 1)[1]:
            continue  # an optional extra (test, export, ...), not needed to serve
        name = re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]
        reqs.append(f"{name}=={md.version(name)}")
    return sorted(reqs, key=str.lower)


SPACE_APP = '''"""Hugging Face Space entry point: `python app.py` serves ./model with xory's Gradio app (at /), its API
(/predict, /predict_faces, /explain) and the many-photo page (at /web/). Made by `xory space`."""
import os
from pathlib import Path

from xory.app import serve

if __name__ == "__main__":
    serve(model_dir=str(Path(__file__).resolve().parent / "model"),
          host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
          port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''

SPACE_README = """---
title: {title}
emoji: 🔍
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio}
python_version: "{python}"
app_file: app.py
pinned: false
license: mit
---

# {title}

Upload a photo: each face is found and named, and the faces together give the answer ({classes}).
A photo without a face is judged as a whole.

- `/` the Gradio app; `/web/` a page for many photos at once (drag, drop, paste, parallel requests)
- API (Gradio client, Python or JS): `/predict` (label and confidences), `/predict_faces`
  (label, confidences, and each face's box, name, group and confidence) and `/explain` (each face's share of
  the answer, occlusion maps, the explanation picture)

```python
from gradio_client import Client, handle_file
Client("https://YOUR-SPACE.hf.space/").predict(img=handle_file("photo.jpg"), api_name="/predict")
```

Made with `xory space` from the model bundle in `model/` (its manifest.json holds the training summary and the
held-out metrics). Run it anywhere: `python -m venv .venv && .venv/bin/pip install -r requirements.txt &&
.venv/bin/python app.py`. The `.onnx` and `.npz` files are binary: push them with Git LFS or Xet
(`.gitattributes` says so).
"""

GITATTRIBUTES = "*.onnx filter=lfs diff=lfs merge=lfs -text\n*.npz filter=lfs diff=lfs merge=lfs -text\n"


def _copy_package(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(PACKAGE, dst, ignore=ignore)


def export_space(out: str | Path, model_dir: str | Path | None = None) -> ExportResult:
    """A Hugging Face Space folder that starts with `python app.py` in a venv made from requirements.txt."""
    bundle = _load_bundle(model_dir)
    groups = [t for t in bundle.manifest["labels"]["top"] if t != "neither"]
    reqs = pinned_requirements()
    gradio = next(r.split("==")[1] for r in reqs if r.lower().startswith("gradio=="))
    readme = SPACE_README.format(title=_title(groups), gradio=gradio, python=f"{sys.version_info[0]}."
                                 f"{sys.version_info[1]}", classes=", ".join(bundle.manifest["labels"]["top"]))

    def fill(tmp: Path) -> None:
        (tmp / "app.py").write_text(SPACE_APP)
        (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        (tmp / ".gitattributes").write_text(GITATTRIBUTES)
        (tmp / "model").mkdir()
        for name in ["manifest.json", *bundle.manifest["files"], MODEL_CARD]:  # the bundle, not what lies beside it
            if (bundle.folder / name).is_file():
                shutil.copyfile(bundle.folder / name, tmp / "model" / name)
        _copy_package(tmp / "xory")

    files = _write_atomically(Path(out), "space", fill)
    size = sum((Path(out) / f).stat().st_size for f in files) / 1e6
    return ExportResult(Path(out).resolve(), files, [f"{size:.0f} MB in all"])
