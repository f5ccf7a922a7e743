"""Hold-out splits that do not leak: near-duplicate photos, crops cut from one group photo, and (for negatives)
all photos of one person stay on one side. Clusters come from the cached features:
- two photos that share a near-identical face (descriptor distance < FACE_DUP) are one photo, or crops of one;
- two photos whose whole-image vectors have cosine similarity > IMAGE_DUP are near-duplicates."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from .bundle import listed_by_model, readable_by_others
from .dataset import Sample
from .features.cache import PhotoFeatures

__all__ = ["UnionFind", "duplicate_clusters", "main_label", "holdout_split", "check_split_out", "save_split", "load_split", "FACE_DUP", "IMAGE_DUP"]

FACE_DUP = 0.12  # same face from the same shot (crops lie at a median 0.11 from their group photo); looser
# thresholds chain: at 0.2 a third of kpop became one cluster, since other photos of a member often lie at 0.2
IMAGE_DUP = 0.95


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving): the clusters of duplicate photos."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def duplicate_clusters(feats: list[PhotoFeatures], face_dup: float = FACE_DUP,
                       image_dup: float = IMAGE_DUP) -> list[int]:
    """A cluster id for each photo: photos in one cluster are copies, near-copies or crops of one another."""
    n = len(feats)
    uf = UnionFind(n)
    owners = np.concatenate([np.full(f.n_faces, i) for i, f in enumerate(feats)] + [np.zeros(0, int)]).astype(int)
    vectors = [f.face_vectors for f in feats if f.n_faces]
    if vectors:
        V = np.concatenate(vectors)
        for start in range(0, len(V), 2048):
            block = V[start:start + 2048]
            d2 = (block ** 2).sum(1)[:, None] + (V ** 2).sum(1)[None, :] - 2 * block @ V.T
            for a, b in zip(*np.nonzero(d2 < face_dup ** 2)):
                if owners[start + a] != owners[b]:
                    uf.union(owners[start + a], owners[b])
    X = np.stack([f.image_vector for f in feats]).astype(np.float64)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9)
    for start in range(0, n, 2048):
        sim = X[start:start + 2048] @ X.T
        for a, b in zip(*np.nonzero(sim > image_dup)):
            if start + a != b:
                uf.union(start + a, b)
    return [uf.find(i) for i in range(n)]


def main_label(leaves: list[str]) -> str:
    """The most common label of a cluster; ties go to the first in sorted order (never to set order, which
    Python salts per process)."""
    return max(sorted(set(leaves)), key=leaves.count)


def holdout_split(samples: list[Sample], feats: list[PhotoFeatures], fraction: float,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): about `fraction` of each label held out, whole clusters at a time.
    Negatives are held out by person (their source folder), so the held-out ones are people the model never saw."""
    clusters = duplicate_clusters(feats)
    uf = UnionFind(len(samples))
    for i, c in enumerate(clusters):
        uf.union(i, c)
    first_of_person: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.negative:
            uf.union(i, first_of_person.setdefault(s.source, i))
    members: dict[int, list[int]] = {}
    for i in range(len(samples)):
        members.setdefault(uf.find(i), []).append(i)
    groups = list(members.values())
    random.Random(seed).shuffle(groups)
    totals: dict[str, int] = {}
    for s in samples:
        totals[s.leaf] = totals.get(s.leaf, 0) + 1
    taken: dict[str, int] = {}
    held: list[int] = []
    for g in groups:
        leaves = [samples[i].leaf for i in g]
        main = main_label(leaves)
        if taken.get(main, 0) + len(g) <= fraction * totals[main] + 0.5:
            held.extend(g)
            for leaf in leaves:
                taken[leaf] = taken.get(leaf, 0) + 1
    held_set = set(held)
    return [i for i in range(len(samples)) if i not in held_set], sorted(held)


SPLIT_FORMAT = "xory-split"


def check_split_out(path: str | Path) -> None:
    """Refuse to write a split over anything but an earlier split file (a user's JSON, a folder), before any work."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the split file's name (e.g. {path / 'split.json'})")
    if not path.exists():
        return
    if not path.is_file():  # a FIFO or a device: never opened
        raise ValueError(f"{path}: exists and is not a regular file; nothing was changed (choose another --out)")
    try:
        load_split(path)
    except ValueError:
        raise ValueError(f"{path}: exists and is not a split file; nothing was changed "
                         "(choose another --out)") from None
    if listed_by_model(path):
        raise ValueError(f"{path}: is the split a model was trained on (its manifest.json holds its checksum); "
                         "nothing was changed (choose another --out)")


def save_split(path: str | Path, train: list[str], test: list[str], seed: int, holdout: float) -> Path:
    """Write a split file: the photos' content hashes on each side (moving or renaming a photo keeps its side)."""
    path = Path(path)
    doc = {"format": SPLIT_FORMAT, "version": 1, "seed": seed, "holdout": holdout,
           "train": sorted(set(train)), "test": sorted(set(test))}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # a fresh name: no clobbering
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        readable_by_others(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_split(path: str | Path) -> dict:
    """Read a split file; {"train": set of sha256, "test": set of sha256, "seed", "holdout"}."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a FIFO (reading it would hang), a device
        raise ValueError(f"{path}: not a split file (a {'folder' if path.is_dir() else 'special file'}; give the "
                         "JSON file `xory data split` wrote)")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: split file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a split file (invalid JSON: {e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a split file (nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise ValueError(f"{path}: not a split file (expected \"format\": \"{SPLIT_FORMAT}\")")
    for side in ("train", "test"):
        if not isinstance(doc.get(side), list) or not all(isinstance(h, str) for h in doc[side]):
            raise ValueError(f"{path}: not a split file (\"{side}\" must list the photos' sha256)")
    return {"train": set(doc.get("train", [])), "test": set(doc.get("test", [])), "seed": doc.get("seed"),
            "holdout": doc.get("holdout")}

