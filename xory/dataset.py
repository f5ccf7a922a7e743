"""Folders -> labelled samples. Nested folders are labels (kpop/bts/jimin/a.jpg: ("bts", "jimin")); a folder whose
name starts with "_" adds nothing to the label (bts/_group/a.jpg: ("bts",)); negatives are labelled ("neither",)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_SUFFIXES

__all__ = ["Sample", "Dataset", "scan", "NEITHER"]

NEITHER = "neither"


@dataclass(frozen=True)
class Sample:
    path: str
    label: tuple[str, ...]  # ("bts", "jimin"), or ("bts",) for a photo known only by its group
    source: str  # the folder it came from, relative to its root: one person, for splits that keep people apart
    negative: bool = False

    @property
    def group(self) -> str:
        return self.label[0]

    @property
    def leaf(self) -> str:
        return "/".join(self.label)


@dataclass
class Dataset:
    root: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def groups(self) -> list[str]:
        return sorted({s.group for s in self.samples})

    @property
    def depth(self) -> int:
        return max((len(s.label) for s in self.samples), default=0)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.leaf] = out.get(s.leaf, 0) + 1
        return dict(sorted(out.items()))


def _label_of(rel_dir: Path) -> tuple[str, ...] | None:
    parts = rel_dir.parts
    if not parts or parts[0].startswith("_"):
        return None  # photos at the root, or in a root-level "_" folder (e.g. _quarantine), carry no label
    return tuple(p for p in parts if not p.startswith("_"))


def _walk(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            yield path, rel


def scan(root: str | Path, negatives: str | Path | None = None) -> Dataset:
    """Every image under root with its label; files that are not images are listed in `skipped`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    ds = Dataset(root=str(root))
    for path, rel in _walk(root):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            ds.skipped.append((str(path), f"not an image file (suffix '{path.suffix or 'none'}')"))
            continue
        label = _label_of(rel.parent)
        if label is None:
            if rel.parts[0].startswith("_"):
                continue
            ds.skipped.append((str(path), "not inside a label folder"))
            continue
        if label[0] == NEITHER and negatives is None:
            ds.samples.append(Sample(str(path), label[:1], str(rel.parent), negative=True))
        else:
            ds.samples.append(Sample(str(path), label, str(rel.parent)))
    if negatives is not None:
        neg = Path(negatives)
        if not neg.is_dir():
            raise FileNotFoundError(f"{neg}: not a folder")
        for path, rel in _walk(neg):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ds.skipped.append((str(path), f"not an image file (suffix '{path.suffix or 'none'}')"))
                continue
            if rel.parts[0].startswith("_"):
                continue
            ds.samples.append(Sample(str(path), (NEITHER,), f"{NEITHER}:{rel.parent}", negative=True))
    if not ds.samples:
        raise ValueError(f"{root}: no photos found in label folders (expected e.g. {root}/cats/a.jpg)")
    return ds
