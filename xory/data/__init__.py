"""Data tools: download photos from URL lists (download.py), check a folder and quarantine what is wrong
(verify.py), write a leak-free hold-out split (split_folder, here), clean labels by loss in a page that retrains in
seconds (clean.py). Every move is logged and undoable (moves.py); nothing is ever deleted."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["SplitResult", "split_folder"]


@dataclass
class SplitResult:
    path: Path
    train: int
    test: int
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (train, test)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"wrote {self.path}: {self.train} photos to train on, {self.test} held out"]
        lines += [f"  {label:<28} {a:>5} train {b:>5} test" for label, (a, b) in self.counts.items()]
        lines += [f"skipped {p}: {r}" for p, r in self.skipped]
        return "\n".join(lines)


def split_folder(data: str | Path, out: str | Path, holdout: float = 0.2, seed: int = 0,
                 negatives: str | Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = lambda s: None) -> SplitResult:
    """Hold out about `holdout` of each label (near-duplicates, crops of one photo and each negative person on
    one side) and write the split file (photos' content hashes; `xory train --split` reads it)."""
    from ..dataset import scan
    from ..split import check_split_out, holdout_split, save_split
    from ..train import TrainConfig, load_table

    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be between 0 and 1 (got {holdout})")
    check_split_out(out)
    ds = scan(data, negatives)
    table = load_table(TrainConfig(data=str(data), out="", negatives=str(negatives) if negatives else None,
                                   progress=progress), ds, log)
    if not table.samples:
        raise ValueError(f"{data}: no readable photos")
    train_idx, test_idx = holdout_split(table.samples, table.feats, holdout, seed)
    path = save_split(out, [table.feats[i].sha256 for i in train_idx], [table.feats[i].sha256 for i in test_idx],
                      seed, holdout)
    counts: dict[str, list[int]] = {}
    for side, idx in enumerate([train_idx, test_idx]):
        for i in idx:
            counts.setdefault(table.samples[i].leaf, [0, 0])[side] += 1
    return SplitResult(path=Path(path), train=len(train_idx), test=len(test_idx),
                       counts={k: (v[0], v[1]) for k, v in sorted(counts.items())}, skipped=table.skipped)
