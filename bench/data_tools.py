"""The data tools on the real data: what `xory data verify` finds in ../shared/data/kpop and kpop-others (read
only), how long a split takes, and one clean-and-retrain cycle on a temporary copy of kpop (with kpop-others as
negatives): load the cleaner, move a photo, retrain, undo. Features come from the cache (~/.cache/xory); a cold
cache adds the extraction (about 10 minutes on 2 cores). One command:

    python bench/data_tools.py
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def timed(fn):
    """(result, (wall seconds, CPU seconds of this process)): on a shared machine the CPU time is the steadier."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def main() -> None:
    from xory.data import split_folder
    from xory.data.clean import Cleaner
    from xory.data.verify import verify
    from xory.train import TrainConfig, train

    load, rows = os.getloadavg()[0], []
    for name, kw in [("kpop", {}), ("kpop-others", {}), ("kpop + kpop-others", {"negatives": DATA / "kpop-others"})]:
        r, s = timed(lambda name=name, kw=kw: verify(DATA / name.split(" ")[0], progress=False, **kw))
        c = r.counts()
        rows.append((f"verify {name}", s, f"{r.photos} photos: {c['unreadable']} unreadable, {c['tiny']} tiny, "
                     f"{c['duplicate_groups']} duplicate groups ({c['duplicate']} extra), "
                     f"{c['near_duplicate_groups']} near-duplicate groups ({c['near-duplicate']} extra), "
                     f"{c['conflict_groups']} conflict groups ({c['conflict']} photos), {c['no-face']} no face, "
                     f"{c['crops']} cut from another photo"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        split, s = timed(lambda: split_folder(DATA / "kpop", tmp / "split.json", 0.2, 0, DATA / "kpop-others",
                                              progress=False))
        rows.append(("split kpop (+ negatives), 0.2", s, f"{split.train} train, {split.test} test"))
        data, negatives = tmp / "kpop", tmp / "others"
        _, s = timed(lambda: (shutil.copytree(DATA / "kpop", data), shutil.copytree(DATA / "kpop-others", negatives)))
        rows.append(("copy kpop and kpop-others", s, "a temporary copy to clean"))
        _, s = timed(lambda: train(TrainConfig(data=str(data), out=str(tmp / "model"), negatives=str(negatives),
                                               folds=0, progress=False), log=lambda m: None))
        rows.append(("train the model to clean with", s, "features cached"))
        cleaner, s = timed(lambda: Cleaner(tmp / "model", data, negatives))
        rows.append(("open the cleaner (scan, score)", s, f"{len(cleaner.items)} photos scored"))
        worst = cleaner.worst("bts/jimin")[0]
        _, s = timed(lambda: cleaner.move(worst.path, "bts/v"))
        rows.append(("move the worst Jimin photo", s, f"loss {worst.loss:.2f}, model says {worst.answer}"))
        (seconds, metrics), s = timed(cleaner.retrain)
        rows.append(("retrain (train + save + rescore)", s, "a new model, saved atomically"))
        _, s = timed(cleaner.undo)
        rows.append(("undo the move (and rescan)", s, ""))
    print(f"load average at the start: {load:.1f} on {os.cpu_count()} cores")
    print("| step | wall s | CPU s | result |\n|---|---:|---:|---|")
    for step, (wall, cpu), note in rows:
        print(f"| {step} | {wall:.1f} | {cpu:.1f} | {note} |")


if __name__ == "__main__":
    main()
