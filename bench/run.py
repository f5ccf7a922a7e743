"""The benchmark: xory faces-first beside a whole-image linear head and a whole-image fine-tune (the original
"BTS or EXO" method), on one fixed split of ../shared/data/kpop (+ kpop-others as negatives) and of
../shared/data/bears. One command:

    python bench/run.py                  # needs the [finetune] extra for method (c); about an hour on 2 cores

writes bench/results.md (tables), bench/results.json and bench/results.png (plot). Each training, each latency
run and each server runs in its own process, so its peak memory (max RSS) is its own. Every loop is bounded.

Methods: (a) `xory train` (faces first, auto mode: the bears have no faces, so it picks the image head),
(b) `xory train --mode image` (a linear head on frozen EfficientNet-Lite0 features), (c) `xory train --finetune`.
Metrics on the held-out photos (seed 0, 20 %, whole duplicate clusters and people, xory.split): BTS-vs-EXO
balanced error; BTS member accuracy over every held-out photo of a BTS member (the largest face's name, or the
whole-image head's member; a photo where faces-first finds no face counts as a miss); the share of held-out
kpop-others people answered "neither"; bears error rate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METHODS = {"faces": "(a) faces first", "image": "(b) whole-image linear head", "finetune": "(c) whole-image fine-tune"}
SEED, HOLDOUT = 0, 0.2

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _datasets(data: Path) -> dict[str, tuple[Path, Path | None]]:
    return {"kpop": (data / "kpop", data / "kpop-others"), "bears": (data / "bears", None)}


# ---- jobs (each in its own process) ------------------------------------------------------------------------------

def job_split(data: str, negatives: str | None, out: str) -> dict:
    """The fixed split, written as a split file (content hashes) that every method trains on."""
    from xory.dataset import scan
    from xory.split import holdout_split, save_split
    from xory.train import TrainConfig, load_table

    cfg = TrainConfig(data=data, out="", negatives=negatives, progress=False)
    table = load_table(cfg, scan(data, negatives), log=lambda s: None)
    tr, held = holdout_split(table.samples, table.feats, HOLDOUT, SEED)
    save_split(out, [table.feats[i].sha256 for i in tr], [table.feats[i].sha256 for i in held], SEED, HOLDOUT)
    return {"photos": len(table.samples), "train": len(tr), "heldout": len(held)}


def job_train(method: str, data: str, negatives: str | None, split: str, out: str, epochs: int,
              max_minutes: float) -> dict:
    t0 = time.perf_counter()
    if method == "finetune":
        from xory.finetune import FinetuneConfig, finetune

        r = finetune(FinetuneConfig(data=data, out=out, negatives=negatives, split=split, seed=SEED, progress=False,
                                    epochs=epochs, max_minutes=max_minutes), log=_log)
        manifest = r.manifest
    else:
        from xory.train import TrainConfig, train

        _, manifest = train(TrainConfig(data=data, out=out, negatives=negatives, split=split, seed=SEED,
                                        mode="auto" if method == "faces" else "image", progress=False), log=_log)
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    return {"train_seconds": round(seconds, 1), "train_peak_mb": round(peak), "mode": manifest["mode"],
            "finetune": manifest["training"].get("finetune"), "metrics": _metrics(out, data, negatives, split)}


def _log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _metrics(model_dir: str, data: str, negatives: str | None, split: str) -> dict:
    """Held-out metrics for a bundle, from the same photos for every method."""
    import xory
    from xory.dataset import scan
    from xory.features.image import ImageEmbedder
    from xory.images import open_image
    from xory.split import load_split
    from xory.evaluate import evaluate_split
    from xory.train import TrainConfig, load_table

    model = xory.load(model_dir)
    table = load_table(TrainConfig(data=data, out="", negatives=negatives, progress=False), scan(data, negatives),
                       log=lambda s: None)
    test = load_split(split)["test"]
    held = [(s, f) for s, f in zip(table.samples, table.feats) if f.sha256 in test]
    samples = [s for s, _ in held]
    feats = [f for _, f in held]
    if model.manifest["features"]["image"].get("file"):  # a fine-tuned backbone: its own whole-image vectors
        emb = ImageEmbedder(model.backbone_path, threads=2)
        feats = [replace(f, image_vector=emb.embed(open_image(s.path).image)) for s, f in held]
    m = evaluate_split(model, samples, feats)
    out = {"heldout": len(samples), "top_error": m.get("top_error"), "balanced_error": m.get("top_balanced_error"),
           "neither_share": m.get("neither_share"), "negatives": m.get("negatives"), "recall": m.get("top_recall"),
           "no_face_share": m.get("no_face_share"),
           "member_accuracy_where_a_face_was_found": m.get("member_accuracy")}
    depth = {}
    for s in table.samples:
        depth[s.group] = max(depth.get(s.group, 0), len(s.label))
    for group in ("bts", "exo"):
        rows = [(s, f) for s, f in zip(samples, feats) if s.group == group and len(s.label) == depth[group] == 2]
        if rows:
            hits = [_member(model, model.predict_features(f), f) == s.leaf for s, f in rows]
            out[f"{group}_member_accuracy"] = float(np.mean(hits))
            out[f"{group}_member_photos"] = len(rows)
    return out


def _member(model, pred, feats) -> str | None:
    """The member a prediction names: the largest face's, or the whole-image head's finest class."""
    if pred.faces:
        return f"{pred.faces[0].group}/{pred.faces[0].label}"
    head = model.image_head
    leaf = head.classes[int(np.argmax(head.proba(feats.image_vector[None])[0]))]
    return leaf if "/" in leaf else None


def job_predict(model_dir: str, photo: str, runs: int) -> dict:
    """Latency of Model.predict on one photo (load, first answer, then `runs` timed answers), and peak memory."""
    t0 = time.perf_counter()
    import xory

    model = xory.load(model_dir)
    first = model.predict(photo)
    t_first = time.perf_counter() - t0
    for _ in range(3):
        model.predict(photo)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        p = model.predict(photo)
        times.append(time.perf_counter() - t)
    assert p.error is None, p.error
    q = np.percentile(np.asarray(times) * 1000, [50, 95])
    return {"p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "runs": runs,
            "load_and_first_s": round(t_first, 2), "predict_peak_mb": round(_peak_mb()),
            "label": first.label, "faces": len(first.faces), "torch_imported": "torch" in sys.modules}


# ---- serving -----------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _load_clients(url: str, photo: str, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own gradio_client, calling /predict until `seconds` have passed."""
    from gradio_client import Client, handle_file

    conns = [Client(url, verbose=False) for _ in range(clients)]
    ok, errors, lat = [0] * clients, [0] * clients, [[] for _ in range(clients)]
    samples: list[str] = []
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                r = conns[i].submit(img=handle_file(photo), api_name="/predict").result(timeout=60)
                assert isinstance(r, dict) and "confidences" in r, r
                ok[i] += 1
                lat[i].append(time.perf_counter() - t)
            except Exception as e:  # counted, and shown once
                errors[i] += 1
                if len(samples) < 3:
                    samples.append(f"{type(e).__name__}: {e}"[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - t0
    all_lat = sorted(x for xs in lat for x in xs)
    return {"clients": clients, "seconds": round(elapsed, 1), "answers": sum(ok), "errors": sum(errors),
            "photos_per_s": round(sum(ok) / elapsed, 2),
            "latency_p50_ms": round(1000 * statistics.median(all_lat), 0) if all_lat else None,
            "error_samples": samples}


def bench_serve(model_dir: str, photo: str, seconds: float, python: str) -> dict:
    """Cold start (process start until the first /predict answer), then 1 and 8 concurrent clients."""
    from gradio_client import Client, handle_file

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "xory.cli", "serve", "--model", model_dir, "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        cold = None
        while time.perf_counter() - t0 < 180 and proc.poll() is None:
            try:
                Client(url, verbose=False).predict(img=handle_file(photo), api_name="/predict")
                cold = time.perf_counter() - t0
                break
            except Exception:
                time.sleep(0.25)
        if cold is None:
            log.seek(0)
            raise RuntimeError(f"xory serve gave no answer within 180 s:\n{log.read()[-2000:]}")
        out = {"cold_start_s": round(cold, 1)}
        for clients in (1, 8):
            out[f"c{clients}"] = _load_clients(url, photo, clients, seconds)
        out["server_peak_mb"] = round(_vm_hwm_mb(proc.pid) or 0)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


# ---- orchestration -----------------------------------------------------------------------------------------------

def _child(args: list[str], timeout: float) -> dict:
    """Run one job of this script in a fresh process; its last stdout line is the JSON result."""
    r = subprocess.run([sys.executable, __file__, "--job", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    sys.stderr.write(r.stderr[-4000:])
    if r.returncode != 0:
        raise RuntimeError(f"job {args[0]} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def pick_photo(kpop: Path, split: Path) -> str:
    """A held-out BTS photo whose longest side is 768 px and which shows one face (the same one for every method)."""
    from PIL import Image

    from xory.images import file_hash
    from xory.split import load_split

    test = load_split(split)["test"]
    for member in ("jimin", "jungkook", "v", "rm", "suga", "jin", "jhope"):
        for p in sorted((kpop / "bts" / member).iterdir()):
            with Image.open(p) as im:
                if max(im.size) != 768 or min(im.size) < 500:
                    continue
            if file_hash(p.read_bytes()) in test:
                return str(p)
    raise RuntimeError("no held-out 768-px BTS photo found")


def cold_feature_rate(kpop: Path, n: int = 24) -> float:
    """Seconds per photo to extract features with a cold cache (faces + whole image, both cores)."""
    from xory.features.cache import FeatureCache
    from xory.features.extract import extract_many, extractor_key

    paths = [str(p) for m in ("jimin", "suga", "v") for p in sorted((kpop / "bts" / m).iterdir())[:n // 3]]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        extract_many(paths, cache=FeatureCache(extractor_key(), Path(tmp)), workers=2, progress=False)
        return (time.perf_counter() - t) / len(paths)


def main() -> int:
    ap = argparse.ArgumentParser(description="xory benchmark: faces first vs whole-image head vs fine-tune")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=None, help="where bundles and splits go (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tune: unfrozen epochs (after the frozen one)")
    ap.add_argument("--max-minutes", type=float, default=45, help="fine-tune: time limit per dataset")
    ap.add_argument("--serve-seconds", type=float, default=30)
    ap.add_argument("--runs", type=int, default=30, help="timed predictions for the latency")
    ap.add_argument("--serve-python", default=sys.executable, help="the Python that runs `xory serve`")
    ap.add_argument("--methods", default="faces,image,finetune")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if "finetune" in methods:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            print("bench: method (c) needs the [finetune] extra: pip install -e '.[finetune]'", file=sys.stderr)
            return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="xory-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine(), "datasets": {},
                     "methods": {m: {} for m in methods}, "seed": SEED, "holdout": HOLDOUT}
    for name, (data, negatives) in _datasets(args.data).items():
        split = work / f"split-{name}.json"
        results["datasets"][name] = _child(["split", str(data), str(negatives or ""), str(split)], 3600)
        _log(f"{name}: split {results['datasets'][name]}")
        for m in methods:
            out = work / f"{name}-{m}"
            r = _child(["train", m, str(data), str(negatives or ""), str(split), str(out), str(args.epochs),
                        str(args.max_minutes)], args.max_minutes * 60 + 1800)
            results["methods"][m][name] = r
            _log(f"{name} {m}: {json.dumps(r)[:400]}")
            _save(results, args.out)
    kpop, _ = _datasets(args.data)["kpop"]
    photo = pick_photo(kpop, work / "split-kpop.json")
    results["photo"] = {"path": str(Path(photo).relative_to(args.data)), "size": _size(photo)}
    results["cold_feature_s_per_photo"] = round(cold_feature_rate(kpop), 3)
    for m in methods:
        model = str(work / f"kpop-{m}")
        results["methods"][m]["predict"] = _child(["predict", model, photo, str(args.runs)], 900)
        results["methods"][m]["serve"] = bench_serve(model, photo, args.serve_seconds, args.serve_python)
        _log(f"{m}: predict {results['methods'][m]['predict']}, serve {json.dumps(results['methods'][m]['serve'])}")
        _save(results, args.out)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    _save(results, args.out)
    from report import write_report  # bench/report.py: the markdown table and the plot

    write_report(results, args.out)
    print((args.out / "results.md").read_text())
    return 0


def _size(photo: str) -> list[int]:
    from PIL import Image

    with Image.open(photo) as im:
        return list(im.size)


def _machine() -> dict:
    import onnxruntime

    out = {"python": platform.python_version(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
           "platform": platform.platform(), "load_at_start": [round(x, 1) for x in os.getloadavg()]}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out


def _save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out / "results.json")


def _job(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "split":
        data, negatives, out = rest
        r = job_split(data, negatives or None, out)
    elif kind == "train":
        method, data, negatives, split, out, epochs, max_minutes = rest
        r = job_train(method, data, negatives or None, split, out, int(epochs), float(max_minutes))
    elif kind == "predict":
        model, photo, runs = rest
        r = job_predict(model, photo, int(runs))
    else:
        raise SystemExit(f"unknown job {kind}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if len(sys.argv) > 1 and sys.argv[1] == "--job":
        sys.exit(_job(sys.argv[2:]))
    sys.exit(main())
