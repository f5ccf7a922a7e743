"""The `xory` command. Thin: each subcommand parses, calls one function, prints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _cmd_train(a: argparse.Namespace) -> int:
    if a.finetune:
        return _cmd_finetune(a)
    from .train import TrainConfig, train

    cfg = TrainConfig(data=a.data, out=a.out, negatives=a.negatives, holdout=a.holdout, split=a.split, seed=a.seed,
                      mode=a.mode,
                      workers=a.workers, progress=not a.quiet, folds=a.folds)
    if a.unknown_below is not None:
        cfg.unknown_below = a.unknown_below
    train(cfg)
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    try:
        from .finetune import FinetuneConfig, finetune
    except ImportError as e:
        print(f"xory train: error: {e}", file=sys.stderr)
        return 2
    cfg = FinetuneConfig(data=a.data, out=a.out, negatives=a.negatives, holdout=a.holdout, split=a.split,
                         seed=a.seed, workers=a.workers, progress=not a.quiet, epochs=a.epochs,
                         max_minutes=a.max_minutes)
    finetune(cfg)
    return 0


def _expand(paths: list[str]) -> list[str]:
    from .images import IMAGE_SUFFIXES

    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = [str(f) for f in sorted(path.rglob("*"))
                     if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
            out.extend(found or [p])  # a folder without photos is answered with its own error line
        else:
            out.append(p)
    return out


def _cmd_predict(a: argparse.Namespace) -> int:
    from .images import IMAGE_SUFFIXES
    from .model import Prediction, load

    model = load(a.model)
    status = 0
    for path in _expand(a.paths):
        if Path(path).is_dir():  # _expand keeps a folder only when it holds no photo
            p = Prediction(path=path, label=None, confidences={},
                           error="folder holds no photos (" + " ".join(sorted(IMAGE_SUFFIXES)) + ")")
        else:
            p = model.predict(path)
        status = 1 if p.error else status
        print(json.dumps(p.to_json()) if a.json else str(p), flush=True)
    return status


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); another server may hold it: choose "
                             "another with --port") from None


def _cmd_serve(a: argparse.Namespace) -> int:
    from .app import serve

    _check_port_free(a.host, a.port)

    serve(model_dir=a.model, host=a.host, port=a.port)
    return 0


def _cmd_site(a: argparse.Namespace) -> int:
    from .export import export_site

    r = export_site(a.out, api=a.api, model_dir=a.model, card=a.card)
    print(f"wrote {r.folder}: {', '.join(r.files)}")
    for note in r.notes:
        print(f"note: {note}")
    print("publish it with GitHub Pages (the folder as the site root); the page asks", a.api)
    return 0


def _cmd_space(a: argparse.Namespace) -> int:
    from .export import export_space

    r = export_space(a.out, model_dir=a.model)
    print(f"wrote {r.folder}: {len(r.files)} files ({'; '.join(r.notes)})")
    print(f"try it: cd {r.folder} && python -m venv .venv && .venv/bin/pip install -r requirements.txt && "
          ".venv/bin/python app.py")
    return 0


def _cmd_data_download(a: argparse.Namespace) -> int:
    from .data.download import DownloadConfig, download, read_url_list

    cfg = DownloadConfig(workers=a.workers, timeout=a.timeout, retries=a.retries,
                         max_bytes=int(a.max_mb * 1024 * 1024), progress=not a.quiet)
    report = download(read_url_list(a.urls), a.dest, cfg)
    print(json.dumps(report.to_json()) if a.json else report.summary())
    return 1 if report.failed else 0


def _cmd_data_verify(a: argparse.Namespace) -> int:
    from .data.verify import KINDS, fix, verify

    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if unknown := sorted(set(kinds) - set(KINDS)):
        raise ValueError(f"--kinds: unknown {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    report = verify(a.data, a.negatives, faces=not a.no_faces, near=a.near, progress=not a.quiet)
    moved = fix(report, a.data, a.negatives, kinds) if a.fix else []
    if a.json:
        print(json.dumps({**report.to_json(), "moved": [{"from": s, "to": d} for s, d in moved]}))
    else:
        print(report)
        if a.fix:
            print(f"moved {len(moved)} photos to _quarantine/ ({', '.join(kinds)}); undo: xory clean --undo {a.data}")
    return 0


def _cmd_data_split(a: argparse.Namespace) -> int:
    from .data import split_folder

    print(split_folder(a.data, a.out, holdout=a.holdout, seed=a.seed, negatives=a.negatives, progress=not a.quiet))
    return 0


def _cmd_clean(a: argparse.Namespace) -> int:
    if a.undo:
        from .data.moves import ActionLog

        if len(a.paths) != 1:
            raise ValueError("usage: xory clean --undo DATA_DIR [--all]")
        if not Path(a.paths[0]).is_dir():
            raise FileNotFoundError(f"{a.paths[0]}: not a folder")
        done = ActionLog(a.paths[0]).undo(all=a.all)
        for e in done:
            print(f"undid {e['undone_action']} #{e['undoes']}: {len(e['moves'])} photo(s) back"
                  + (f"; missing: {', '.join(e['missing'])}" if e["missing"] else ""))
        if not done:
            print(f"nothing to undo in {a.paths[0]}")
        return 0
    if len(a.paths) != 2:
        raise ValueError("usage: xory clean MODEL DATA_DIR (or xory clean --undo DATA_DIR)")
    from .data.clean import clean_app

    clean_app(a.paths[0], a.paths[1], negatives=a.negatives, out=a.out, host=a.host, port=a.port)
    return 0


def _outside_data(out: str, *folders: str | None) -> None:
    """Pictures written into a data folder would be read back as photos of a label by the next training."""
    target = Path(out).resolve()
    for folder in filter(None, folders):
        if target.is_relative_to(Path(folder).resolve()):
            raise ValueError(f"--out {out}: is inside the data folder {folder}; its pictures would be read as photos "
                             "there: choose a folder outside it")


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_metrics, save_evaluation

    _outside_data(a.out, a.data, a.negatives)

    ev = evaluate(a.model, a.data, a.negatives, split=a.split, progress=not a.quiet, top_n=a.top)
    print(f"evaluated on {ev.note}")
    for skipped in ev.metrics["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}")
    print(format_metrics(ev.metrics))
    for path in save_evaluation(ev, a.out):
        print(f"wrote {path}")
    return 0


def _cmd_explain(a: argparse.Namespace) -> int:
    from .model import load

    ex = load(a.model).explain(a.photo, grid=a.grid)
    if ex.prediction.error:
        raise ValueError(f"{ex.prediction.path}: {ex.prediction.error}")
    print(json.dumps(ex.to_json()) if a.json else str(ex))
    if a.out:
        print(f"wrote {ex.save(a.out)}", file=sys.stderr if a.json else sys.stdout)
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report

    out = a.out or str(Path(a.model) / "report.html")
    print(f"wrote {write_report(a.model, a.data, out, a.negatives, split=a.split, progress=not a.quiet)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xory", description="This or that? Photos in folders -> a classifier, "
                                     "faces first.")
    from importlib.metadata import PackageNotFoundError, version

    try:
        parser.add_argument("--version", action="version", version=f"xory {version('xory')}")
    except PackageNotFoundError:  # run from a copy of the source (a Space folder)
        pass
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model bundle from folders of labelled photos")
    t.add_argument("data", help="folder of label folders (e.g. kpop/bts/jimin/*.jpg)")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--negatives", help="folder of photos of people who belong to no class: taught as 'neither'")
    t.add_argument("--holdout", type=float, default=0.0, help="share held out to measure (0 = train on all)")
    t.add_argument("--split", help="a split file (xory data split): train on its train side, measure on its test side")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mode", choices=["auto", "faces", "image"], default="auto")
    t.add_argument("--unknown-below", type=float, default=None, metavar="P",
                   help="with negatives: a face whose best member has probability below P is 'neither' (default 0.25)")
    t.add_argument("--workers", type=int, default=None, help="processes for feature extraction (default: cores)")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds for the training table "
                   "(0: none)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--finetune", action="store_true", help="fine-tune EfficientNet-Lite0 on whole photos (fastai "
                   "recipe; needs the [finetune] extra); the bundle serves without torch")
    t.add_argument("--epochs", type=int, default=4, help="--finetune: epochs after the frozen one (default 4)")
    t.add_argument("--max-minutes", type=float, default=None, help="--finetune: start no epoch that would end "
                   "past this many minutes")
    t.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="classify photos (files or folders)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", help="model folder (default: the bundled BTS-or-EXO model)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_predict)

    s = sub.add_parser("serve", help="the Gradio app and its API")
    s.add_argument("--model", help="model folder (default: the bundled BTS-or-EXO model)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=7860)
    s.set_defaults(func=_cmd_serve)

    e = sub.add_parser("evaluate", help="metrics, confusion matrices and top losses on labelled photos")
    e.add_argument("model", help="model folder")
    e.add_argument("data", help="folder of label folders (photos the model trained on are left out when it "
                   "records its split)")
    e.add_argument("--negatives", help="folder of photos of other people: the share answered 'neither'")
    e.add_argument("--split", help="a split file: leave out its training side")
    e.add_argument("--out", default="evaluation", help="folder for metrics.json, confusion_*.png, top_losses.png")
    e.add_argument("--top", type=int, default=16, help="how many top losses to show")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_evaluate)

    x = sub.add_parser("explain", help="why a photo got its answer: face contributions, heat maps")
    x.add_argument("photo")
    x.add_argument("--model", help="model folder (default: the bundled BTS-or-EXO model)")
    x.add_argument("--out", help="PNG to write the explanation picture to")
    x.add_argument("--grid", type=int, default=7, help="occlusion grid over each face (grid x grid cells)")
    x.add_argument("--json", action="store_true", help="the explanation as JSON")
    x.set_defaults(func=_cmd_explain)

    r = sub.add_parser("report", help="a model card: one self-contained report.html")
    r.add_argument("model", help="model folder")
    r.add_argument("--data", required=True, help="folder of label folders to measure on")
    r.add_argument("--negatives", help="folder of photos of other people")
    r.add_argument("--split", help="a split file: leave out its training side")
    r.add_argument("--out", default=None, help="HTML file to write (default: report.html in the model folder, "
                   "where `xory site` looks for the About page)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_report)

    w = sub.add_parser("site", help="a static web page folder for GitHub Pages, asking a server")
    w.add_argument("out", help="folder to write (new, empty, or an earlier `xory site`)")
    w.add_argument("--api", required=True, help="the server's address, e.g. https://user-space.hf.space/")
    w.add_argument("--model", help="model whose card becomes the About page (default: the bundled model)")
    w.add_argument("--card", help="model card HTML for the About page (default: report.html in the model folder)")
    w.set_defaults(func=_cmd_site)

    h = sub.add_parser("space", help="a Hugging Face Space folder: app.py, pinned requirements, the model")
    h.add_argument("out", help="folder to write (new, empty, or an earlier `xory space`)")
    h.add_argument("--model", help="model folder (default: the bundled BTS-or-EXO model)")
    h.set_defaults(func=_cmd_space)

    d = sub.add_parser("data", help="data tools: download, verify, split")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dd = dsub.add_parser("download", help="download photos from a list of URLs (one a line, or label<TAB>url)")
    dd.add_argument("urls", help="text file of URLs")
    dd.add_argument("dest", help="folder to save into (label folders are made under it)")
    dd.add_argument("--workers", type=int, default=8, help="downloads at a time")
    dd.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a connection or a read")
    dd.add_argument("--retries", type=int, default=3, help="extra attempts after a timeout or a server error")
    dd.add_argument("--max-mb", type=float, default=20.0, help="largest file to accept")
    dd.add_argument("--json", action="store_true", help="the report as JSON")
    dd.add_argument("--quiet", action="store_true", help="no progress bar")
    dd.set_defaults(func=_cmd_data_download)
    dv = dsub.add_parser("verify", help="find unreadable, tiny, duplicate and conflicting photos; --fix quarantines")
    dv.add_argument("data", help="folder of label folders")
    dv.add_argument("--negatives", help="the negatives folder, checked with it (conflicts across both)")
    dv.add_argument("--fix", action="store_true", help="move offenders to DATA/_quarantine/ (logged, undoable)")
    dv.add_argument("--kinds", default="unreadable,duplicate,near-duplicate,conflict",
                    help="what --fix moves (also: tiny, no-face)")
    dv.add_argument("--near", type=int, default=6,
                    help="perceptual hash bits (of 64) that may differ in a near-duplicate")
    dv.add_argument("--no-faces", action="store_true", help="skip the face checks (no feature extraction)")
    dv.add_argument("--json", action="store_true", help="the report as JSON")
    dv.add_argument("--quiet", action="store_true", help="no progress bar")
    dv.set_defaults(func=_cmd_data_verify)
    ds = dsub.add_parser("split", help="write a leak-free hold-out split file (content hashes; no copies)")
    ds.add_argument("data", help="folder of label folders")
    ds.add_argument("--holdout", type=float, default=0.2, help="share of each label to hold out")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--negatives", help="negatives folder (held out by person)")
    ds.add_argument("--out", required=True, help="split file to write (JSON)")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.set_defaults(func=_cmd_data_split)

    c = sub.add_parser("clean", help="review photos worst first, move or quarantine, retrain (a local page)",
                       usage="xory clean MODEL DATA_DIR [options]  |  xory clean --undo DATA_DIR [--all]")
    c.add_argument("paths", nargs="+", metavar="PATH", help="MODEL and DATA_DIR, the folder it was trained on "
                   "(with --undo: DATA_DIR only)")
    c.add_argument("--negatives", help="the negatives folder the model was trained with")
    c.add_argument("--out", help="where retraining saves the model (default: over MODEL, atomically)")
    c.add_argument("--undo", action="store_true", help="undo the last logged action in DATA_DIR and exit")
    c.add_argument("--all", action="store_true", help="with --undo: undo every logged action")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=_port, default=7861)
    c.set_defaults(func=_cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    from .bundle import BundleError

    try:
        return args.func(args)
    except (BundleError, FileNotFoundError, ValueError) as e:
        print(f"xory {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that is a folder, a read-only place, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"xory {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `xory predict ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
