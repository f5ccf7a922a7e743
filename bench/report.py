"""bench/results.json -> bench/results.md (tables) and bench/results.png (bars drawn with Pillow).

    python bench/report.py          # redraw from bench/results.json
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

METHODS = {"faces": "(a) faces first", "image": "(b) whole-image linear head", "finetune": "(c) whole-image fine-tune"}
COLOURS = {"faces": (46, 125, 50), "image": (30, 100, 200), "finetune": (220, 110, 20)}


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _f(v, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def rows(results: dict) -> list[tuple[str, dict[str, str]]]:
    ds, feat_s = results["datasets"], results.get("cold_feature_s_per_photo")
    out: list[tuple[str, dict[str, str]]] = []

    def add(label: str, fn) -> None:
        out.append((label, {m: fn(r) for m, r in results["methods"].items()}))

    k = lambda r: _get(r, "kpop", "metrics") or {}  # noqa: E731
    add("BTS-vs-EXO balanced error (lower is better)", lambda r: _f(k(r).get("balanced_error")))
    add("BTS member accuracy", lambda r: _f(k(r).get("bts_member_accuracy")))
    add("BTS member accuracy, only photos where a face was found",
        lambda r: _f(_get(k(r), "member_accuracy_where_a_face_was_found", "bts", "accuracy")))
    add("EXO member accuracy", lambda r: _f(k(r).get("exo_member_accuracy")))
    add("held-out kpop photos answered from the whole image", lambda r: _f(k(r).get("no_face_share")))
    add('"neither" share on unseen people', lambda r: _f(k(r).get("neither_share")))
    add("bears error rate", lambda r: _f(_get(r, "bears", "metrics", "top_error")))
    for name in ("kpop", "bears"):
        n = ds.get(name, {}).get("photos", 0)

        def train_time(r, name=name, n=n):
            s = _get(r, name, "train_seconds")
            if s is None:
                return "n/a"
            ft = _get(r, name, "finetune")
            if ft:
                return f"{s:.0f} s ({len(ft['history'])} epochs{', stopped: ' + ft['stopped'] if ft['stopped'] else ''})"
            return f"{s:.0f} s (+ ~{n * feat_s:.0f} s of features, cold cache)" if feat_s else f"{s:.0f} s"

        add(f"training wall time, {name}", train_time)
    add("training peak memory, kpop (MB)", lambda r: _f(_get(r, "kpop", "train_peak_mb"), "{:.0f}"))
    add("predict latency p50 / p95, one 768-px photo (ms)",
        lambda r: f"{_f(_get(r, 'predict', 'p50_ms'), '{:.0f}')} / {_f(_get(r, 'predict', 'p95_ms'), '{:.0f}')}")
    add("predict: load + first answer (s)", lambda r: _f(_get(r, "predict", "load_and_first_s"), "{:.1f}"))
    add("predict process peak memory (MB)", lambda r: _f(_get(r, "predict", "predict_peak_mb"), "{:.0f}"))
    add("torch imported to predict", lambda r: {True: "yes", False: "no"}.get(_get(r, "predict", "torch_imported"),
                                                                            "n/a"))
    add("serve: cold start to first answer (s)", lambda r: _f(_get(r, "serve", "cold_start_s"), "{:.1f}"))
    for c in (1, 8):
        add(f"serve: photos/s, {c} client{'s' if c > 1 else ''} ({_serve_seconds(results)} s; errors)",
            lambda r, c=c: (f"{_f(_get(r, 'serve', f'c{c}', 'photos_per_s'), '{:.2f}')} "
                            f"({_f(_get(r, 'serve', f'c{c}', 'errors'), '{:d}')} errors)"))
    add("server peak memory (MB)", lambda r: _f(_get(r, "serve", "server_peak_mb"), "{:.0f}"))
    return out


def _serve_seconds(results: dict) -> str:
    for r in results["methods"].values():
        s = _get(r, "serve", "c1", "seconds")
        if s:
            return f"{s:.0f}"
    return "30"


def markdown(results: dict) -> str:
    methods = list(results["methods"])
    ds = results["datasets"]
    head = "| | " + " | ".join(METHODS[m] for m in methods) + " |\n|---|" + "---|" * len(methods) + "\n"
    body = "".join(f"| {label} | " + " | ".join(v[m] for m in methods) + " |\n" for label, v in rows(results))
    mk = results["methods"].get("faces", {}).get("kpop", {}).get("metrics", {})
    machine = results["machine"]
    lines = [
        "# xory benchmark", "",
        f"`python bench/run.py`, {results['started']} to {results.get('finished', '(unfinished)')}; "
        f"{machine['cpus']} CPU cores shared with other work (load average at start "
        f"{', '.join(map(str, machine['load_at_start']))}), Python {machine['python']}, onnxruntime "
        f"{machine['onnxruntime']}" + (f", torch {machine['torch']}" if "torch" in machine else "") + ".", "",
        f"One fixed split (seed {results['seed']}, {results['holdout']:.0%} held out, whole duplicate clusters and "
        f"people at a time): kpop + kpop-others {ds['kpop']['photos']} photos, {ds['kpop']['heldout']} held out "
        f"({mk.get('bts_member_photos', '?')} of BTS members, {mk.get('negatives', '?')} of unseen other idols); "
        f"bears {ds['bears']['photos']} photos, {ds['bears']['heldout']} held out. Latency and serving use one "
        f"held-out 768-px BTS photo ({results.get('photo', {}).get('path', '?')}).", "",
        head + body,
        "Member accuracy counts every held-out photo of a member: faces first names the largest face (a photo "
        "where no face is found counts as a miss); the whole-image methods name the image head's member class. "
        "Training time for (a) and (b) is the fit on cached features plus the cold-cache feature extraction "
        "estimated from a measured rate; (c) includes its own photo decoding. Serving runs `xory serve` on "
        "loopback and calls `/predict` through gradio_client with fresh uploads; each server answers one photo at "
        "a time per model (the embedders are locked), so more clients mostly wait.", "",
    ]
    for name in ("kpop", "bears"):
        ft = _get(results["methods"].get("finetune", {}), name, "finetune")
        if ft:
            lines += [f"## Fine-tune epochs, {name}", "",
                      f"before training: validation loss {ft['before']['valid_loss']:.4f}, error rate "
                      f"{ft['before']['error_rate']:.4f}; batch {ft['batch_size']}, base lr {ft['lr']}; kept epoch "
                      f"{ft['best_epoch']}" + (f"; stopped: {ft['stopped']}" if ft["stopped"] else "") + ".", "",
                      "| epoch | phase | train loss | valid loss | error rate | seconds |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['epoch']} | {r['phase']} | {r['train_loss']:.4f} | {r['valid_loss']:.4f} | "
                      f"{r['error_rate']:.4f} | {r['seconds']:.0f} |" for r in ft["history"]]
            lines.append("")
    return "\n".join(lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def plot(results: dict, path: Path) -> None:
    """Six panels of bars, one colour per method."""
    methods = list(results["methods"])
    M = results["methods"]
    panels = [
        ("BTS-vs-EXO balanced error", lambda m: _get(M[m], "kpop", "metrics", "balanced_error"), "{:.3f}", None),
        ("BTS member accuracy", lambda m: _get(M[m], "kpop", "metrics", "bts_member_accuracy"), "{:.3f}", 1.0),
        ('"neither" on unseen people', lambda m: _get(M[m], "kpop", "metrics", "neither_share"), "{:.3f}", 1.0),
        ("bears error rate", lambda m: _get(M[m], "bears", "metrics", "top_error"), "{:.3f}", None),
        ("kpop training time (s)", lambda m: _get(M[m], "kpop", "train_seconds"), "{:.0f}", None),
        ("predict p50, 768-px photo (ms)", lambda m: _get(M[m], "predict", "p50_ms"), "{:.0f}", None),
        ("serve photos/s, 8 clients", lambda m: _get(M[m], "serve", "c8", "photos_per_s"), "{:.2f}", None),
        ("serve cold start (s)", lambda m: _get(M[m], "serve", "cold_start_s"), "{:.1f}", None),
    ]
    cols, pw, ph, top = 4, 300, 230, 70
    img = Image.new("RGB", (cols * pw, top + 2 * ph + 10), "white")
    d = ImageDraw.Draw(img)
    title, small, tiny = _font(22), _font(15), _font(13)
    d.text((12, 10), "xory benchmark: faces first vs whole-image head vs fine-tune", fill="black", font=title)
    x = 12
    for m in methods:
        d.rectangle([x, 44, x + 14, 58], fill=COLOURS[m])
        d.text((x + 20, 43), METHODS[m], fill="black", font=small)
        x += 24 + int(d.textlength(METHODS[m], font=small)) + 24
    for i, (name, get, fmt, fixed) in enumerate(panels):
        ox, oy = (i % cols) * pw, top + (i // cols) * ph
        d.text((ox + 12, oy + 4), name, fill="black", font=small)
        vals = [get(m) for m in methods]
        vmax = fixed or max([v for v in vals if v is not None] or [1]) or 1
        base, height, bw = oy + ph - 28, ph - 70, 60
        d.line([ox + 20, base, ox + pw - 20, base], fill=(120, 120, 120))
        for j, (m, v) in enumerate(zip(methods, vals)):
            bx = ox + 40 + j * (bw + 25)
            if v is None:
                d.text((bx + 15, base - 18), "n/a", fill="grey", font=tiny)
                continue
            h = max(1, int(height * min(v / vmax, 1.0)))
            d.rectangle([bx, base - h, bx + bw, base], fill=COLOURS[m])
            d.text((bx + 2, base - h - 17), fmt.format(v), fill="black", font=tiny)
            d.text((bx + 26, base + 4), "abc"[list(METHODS).index(m)], fill="black", font=tiny)
    tmp = path.with_name("." + path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_report(results: dict, out: Path) -> None:
    out = Path(out)
    tmp = out / ".results.md.tmp"
    tmp.write_text(markdown(results) + "\n")
    os.replace(tmp, out / "results.md")
    plot(results, out / "results.png")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    write_report(json.loads((here / "results.json").read_text()), here)
    sys.stdout.write((here / "results.md").read_text())
