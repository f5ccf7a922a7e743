"""Check a folder of labelled photos: unreadable and truncated files, tiny images, exact and near duplicates,
the same photo under two labels (a conflict), photos cut from another photo, and photos with no face in a face
dataset. `fix` moves offenders to DIR/_quarantine/ (logged, undoable); nothing is ever deleted.

One photo, for this module, is any of:
- the same bytes;
- pHashes (64-bit DCT hash; the mirror image too) within `near` bits: re-encoded, resized, mirrored, recoloured;
- pHashes within 2 x `near` bits and largest faces within LOOSE_FACE, under labels that agree: one shot (or a
  burst of shots from one moment), cropped a little differently;
- largest faces within SAME_SHOT that fill their photos alike (FRAMING): one shot, cropped differently.
A group of such photos under labels that agree is a duplicate (one copy is kept: the most specific label, then
the most pixels); under labels that disagree, or when the largest faces of two photos are one face from one shot
under labels that disagree, it is a conflict (no copy is kept: the label is in doubt). A photo whose face is a
face of a larger scene elsewhere is a cut-out: not a fault, reported because splits must keep the two together."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..dataset import Sample, scan
from ..images import ImageError, open_image
from ..features.cache import PhotoFeatures
from ..split import UnionFind
from .moves import ActionLog, move_file, quarantine_path

__all__ = ["phash", "hamming", "Finding", "Group", "VerifyReport", "verify", "fix",
           "NEAR_BITS", "TINY_SIDE", "FIX_KINDS", "KINDS"]

# Calibrated by eye on ../shared/data/kpop (see the data tools' notes in the README):
NEAR_BITS = 6  # of 64: within 6 bits every pair was one photo; at 8 bits some were two photos of one setting
SAME_SHOT = 0.15  # face descriptor distance: below it, one face from one shot (two people: never below 0.18)
LOOSE_FACE = 0.25  # with a pHash within 2 x NEAR_BITS: tiny copies of one shot give descriptors up to 0.28 apart
FRAMING = 1.5  # largest faces filling their photos alike (within this ratio): a recrop, not a cut-out
TINY_SIDE = 64  # smaller photos are reported (they hold no usable face)
KINDS = ["unreadable", "tiny", "duplicate", "near-duplicate", "conflict", "no-face"]
FIX_KINDS = ["unreadable", "duplicate", "near-duplicate", "conflict"]  # what --fix moves unless told otherwise
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    return np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))


_DCT32 = _dct_matrix(32)


def _bits(mask: np.ndarray) -> np.ndarray:
    """64 booleans -> 8 bytes."""
    return np.packbits(mask.ravel().astype(np.uint8))


def phash(img: Image.Image) -> np.ndarray:
    """pHash: the signs of the 8x8 lowest DCT frequencies of the 32x32 greyscale photo against their median."""
    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8]
    return _bits(low > np.median(low))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between hashes: a (n, 8) uint8 against b (m, 8) -> (n, m)."""
    return _POPCOUNT[np.bitwise_xor(a[:, None, :], b[None, :, :])].sum(-1, dtype=np.int32)


@dataclass
class Finding:
    kind: str  # one of KINDS
    path: str
    reason: str
    group: int | None = None  # the Group it belongs to (duplicates, conflicts)


@dataclass
class Group:
    """Photos that are one photo (or one shot of one face). `keep` stays in place when fixing (None: none does)."""

    id: int
    kind: str  # "duplicate", "near-duplicate" or "conflict"
    paths: list[str]
    labels: list[str]
    keep: str | None
    how: str  # why they are one photo: "same bytes", "perceptual hash within 6 bits", "the same face, ..."


@dataclass
class VerifyReport:
    root: str
    photos: int
    findings: list[Finding] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    crops: list[list[str]] = field(default_factory=list)  # [crop, photo it was cut from] pairs
    face_share: float | None = None  # share of labelled photos with a face (None: faces not checked)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # files that are not photos in label folders

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for f in self.findings:
            out[f.kind] += 1
        out["duplicate_groups"] = sum(g.kind == "duplicate" for g in self.groups)
        out["near_duplicate_groups"] = sum(g.kind == "near-duplicate" for g in self.groups)
        out["conflict_groups"] = sum(g.kind == "conflict" for g in self.groups)
        out["crops"] = len({crop for crop, _ in self.crops})
        return out

    def offenders(self, kinds: list[str] = FIX_KINDS) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    def to_json(self) -> dict:
        return {"root": self.root, "photos": self.photos, "counts": self.counts(), "face_share": self.face_share,
                "findings": [asdict(f) for f in self.findings], "groups": [asdict(g) for g in self.groups],
                "crops": self.crops, "ignored": [{"path": p, "reason": r} for p, r in self.ignored]}

    def __str__(self) -> str:
        c = self.counts()
        extra = lambda kind: c[kind]  # noqa: E731
        lines = [f"{self.photos} photos under {self.root}",
                 f"  unreadable or truncated: {c['unreadable']}",
                 f"  tiny (under {TINY_SIDE} px a side): {c['tiny']}",
                 f"  exact duplicates: {c['duplicate_groups']} groups, {extra('duplicate')} extra copies",
                 f"  near-duplicates: {c['near_duplicate_groups']} groups, {extra('near-duplicate')} extra copies",
                 f"  conflicts (one photo under two labels): {c['conflict_groups']} groups, {c['conflict']} photos"]
        if self.face_share is not None:
            lines.append(f"  no face: {c['no-face']}" + (f" ({self.face_share:.0%} of the photos show a face)"
                                                          if c["no-face"] else ""))
            lines.append(f"  cut from another photo: {c['crops']} (not faults; `xory data split` keeps them together)")
        if self.ignored:
            lines.append(f"  ignored (not photos in label folders): {len(self.ignored)}")
        for f in self.findings:
            if f.kind in ("unreadable", "tiny", "no-face"):
                lines.append(f"{f.kind}: {f.path}: {f.reason}")
        for g in self.groups:
            lines.append(f"{g.kind} ({g.how}):")
            for p, label in zip(g.paths, g.labels):
                lines.append(f"    {'keep ' if p == g.keep else 'extra' if g.keep else '     '} {label:<20} {p}")
        return "\n".join(lines)


def compatible(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two labels agree when one extends the other (bts and bts/jimin do; bts/jimin and bts/v do not)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@dataclass
class _Photo:
    sample: Sample
    sha256: str | None = None
    size: tuple[int, int] = (0, 0)
    nbytes: int = 0
    hashes: np.ndarray | None = None  # (2, 8): pHash of the photo and of its mirror image
    error: str | None = None


def _look(sample: Sample) -> _Photo:
    out = _Photo(sample)
    try:
        data = Path(sample.path).read_bytes()
    except OSError as e:
        out.error = f"cannot read file ({e.strerror or e})"
        return out
    out.sha256, out.nbytes = hashlib.sha256(data).hexdigest(), len(data)
    try:
        photo = open_image(data, sample.path)
    except ImageError as e:
        out.error = e.reason
        return out
    out.size = photo.image.size
    out.hashes = np.stack([phash(photo.image), phash(photo.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
    return out


def _near_pairs(hashes: np.ndarray, bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j whose pHashes (or one's and the other's mirror) differ in at most `bits` bits."""
    pairs = []
    for start in range(0, len(hashes), 512):
        block = hashes[start:start + 512]
        d = np.minimum(hamming(block[:, 0], hashes[:, 0]), hamming(block[:, 0], hashes[:, 1]))
        for a, b in zip(*np.nonzero(d <= bits)):
            if start + a < b:
                pairs.append((start + int(a), int(b), int(d[a, b])))
    return pairs


def _framing(f: PhotoFeatures) -> float:
    """How much of the photo its largest face fills (face width over the photo's geometric mean side)."""
    return (f.boxes[0][2] - f.boxes[0][0]) / max(1.0, float(np.sqrt(f.size[0] * f.size[1])))


def _face_matches(feats: list[PhotoFeatures | None]) -> list[tuple[int, int, int]]:
    """(i, j, k): photo i's largest face is face k of photo j, from the same shot (distance below SAME_SHOT)."""
    owner, rank, vecs = [], [], []
    for i, f in enumerate(feats):
        if f is not None and f.n_faces:
            owner += [i] * f.n_faces
            rank += list(range(f.n_faces))
            vecs.append(f.face_vectors)
    if not vecs:
        return []
    V, owner, rank = np.concatenate(vecs).astype(np.float64), np.asarray(owner), np.asarray(rank)
    out = []
    first = np.nonzero(rank == 0)[0]
    for start in range(0, len(first), 1024):
        rows = first[start:start + 1024]
        d2 = (V[rows] ** 2).sum(1)[:, None] + (V ** 2).sum(1)[None, :] - 2 * V[rows] @ V.T
        for a, b in zip(*np.nonzero(d2 < SAME_SHOT ** 2)):
            if owner[rows[a]] != owner[b]:
                out.append((int(owner[rows[a]]), int(owner[b]), int(rank[b])))
    return out


def _keeper(photos: list[_Photo], members: list[int]) -> int:
    """The copy to keep: the most specific label, then the most pixels, then the biggest file, then the first."""
    return min(members, key=lambda i: (-len(photos[i].sample.label), -photos[i].size[0] * photos[i].size[1],
                                       -photos[i].nbytes, photos[i].sample.path))


def _link_by_faces(photos: list[_Photo], feats: list[PhotoFeatures | None], close: list[tuple[int, int, int]],
                   near: int, uf: UnionFind, how: list[tuple[int, str]]) -> list[list[str]]:
    """Join what the faces say is one photo (see the module docstring); returns [cut-out, larger photo] pairs."""
    has_face = lambda i: feats[i] is not None and feats[i].n_faces > 0  # noqa: E731
    labels = lambda i, j: compatible(photos[i].sample.label, photos[j].sample.label)  # noqa: E731
    for i, j, d in close:
        if near < d and has_face(i) and has_face(j) and photos[i].sha256 != photos[j].sha256 and labels(i, j) \
                and np.linalg.norm(feats[i].face_vectors[0] - feats[j].face_vectors[0]) < LOOSE_FACE:
            uf.union(i, j)
            how.append((i, f"perceptual hash within {2 * near} bits and the same face"))
    crops = set()
    for i, j, k in _face_matches(feats):
        if photos[i].sha256 == photos[j].sha256:
            continue
        ratio = _framing(feats[i]) / _framing(feats[j])
        if k == 0 and 1 / FRAMING <= ratio <= FRAMING:
            uf.union(i, j)
            how.append((i, "the same face, framed alike"))
        elif k == 0 and not labels(i, j):
            uf.union(i, j)
            how.append((i, "the same face from one shot"))
        elif ratio > FRAMING or k > 0:
            crops.add((i, j))  # i's face fills more of i than of j: i was cut from j (or from its shot)
    return sorted([photos[i].sample.path, photos[j].sample.path] for i, j in crops)


def _group(report: VerifyReport, photos: list[_Photo], members: list[int], hows: list[str]) -> None:
    """One group of photos that are one photo: a duplicate (keep one copy) or a conflict (keep none)."""
    labels = [photos[i].sample.label for i in members]
    if any(not compatible(a, b) for a in labels for b in labels):
        kind, keep = "conflict", None
    else:
        kind = "duplicate" if len({photos[i].sha256 for i in members}) == 1 else "near-duplicate"
        keep = _keeper(photos, members)
    gid = len(report.groups)
    report.groups.append(Group(gid, kind, [photos[i].sample.path for i in members],
                               ["/".join(label) for label in labels],
                               photos[keep].sample.path if keep is not None else None, ", ".join(hows)))
    for i in members:
        if i != keep:
            reason = (f"same photo under another label ({', '.join(sorted(set(map('/'.join, labels))))})"
                      if kind == "conflict" else f"copy of {photos[keep].sample.path}")
            report.findings.append(Finding(kind, photos[i].sample.path, reason, gid))


def verify(root: str | Path, negatives: str | Path | None = None, faces: bool = True, near: int = NEAR_BITS,
           workers: int = 4, progress: bool = True) -> VerifyReport:
    """Check every photo under root (and negatives). Faces come from the feature cache (extracted if missing)."""
    ds = scan(root, negatives)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        photos = list(pool.map(_look, ds.samples))
    report = VerifyReport(root=str(root), photos=len(photos), ignored=list(ds.skipped))
    for p in photos:
        if p.error:
            report.findings.append(Finding("unreadable", p.sample.path, p.error))
        elif min(p.size) < TINY_SIDE:
            report.findings.append(Finding("tiny", p.sample.path, f"{p.size[0]}x{p.size[1]} px"))
    ok = [i for i, p in enumerate(photos) if not p.error]
    uf = UnionFind(len(photos))
    how: list[tuple[int, str]] = []  # (a photo of a joined pair, why the pair is one photo)
    first_of: dict[str, int] = {}
    for i in ok:
        j = first_of.setdefault(photos[i].sha256, i)
        if j != i:
            uf.union(i, j)
            how.append((j, "same bytes"))
    hashes = np.stack([photos[i].hashes for i in ok]) if ok else np.zeros((0, 2, 8), np.uint8)
    close = [(ok[a], ok[b], d) for a, b, d in _near_pairs(hashes, 2 * near)]
    for i, j, d in close:
        if d <= near and photos[i].sha256 != photos[j].sha256:
            uf.union(i, j)
            how.append((i, f"perceptual hash within {near} bits"))
    if faces and ok:
        from ..features.extract import extract_many
        from ..train import FACES_MODE_MIN_SHARE

        got = extract_many([photos[i].sample.path for i in ok], progress=progress)
        feats = [None] * len(photos)
        for i in ok:
            feats[i] = got[photos[i].sample.path] if not isinstance(got[photos[i].sample.path], str) else None
        report.crops = _link_by_faces(photos, feats, close, near, uf, how)
        labelled = [feats[i] for i in ok if feats[i] is not None and not photos[i].sample.negative]
        report.face_share = float(np.mean([f.n_faces > 0 for f in labelled])) if labelled else 0.0
        if report.face_share >= FACES_MODE_MIN_SHARE:
            report.findings += [Finding("no-face", photos[i].sample.path, "no face found") for i in ok
                                if feats[i] is not None and not feats[i].n_faces]
    clusters: dict[int, list[int]] = {}
    for i in ok:
        clusters.setdefault(uf.find(i), []).append(i)
    for members in sorted((m for m in clusters.values() if len(m) > 1), key=lambda m: photos[m[0]].sample.path):
        _group(report, photos, members, sorted({h for a, h in how if uf.find(a) == uf.find(members[0])}))
    order = {k: n for n, k in enumerate(KINDS)}
    report.findings.sort(key=lambda f: (order[f.kind], f.path))
    return report


def fix(report: VerifyReport, root: str | Path, negatives: str | Path | None = None,
        kinds: list[str] = FIX_KINDS) -> list[tuple[str, str]]:
    """Move the offenders of `kinds` into <their root>/_quarantine/ (one logged, undoable action per root).
    Returns (from, to) pairs."""
    roots = [Path(root).resolve()] + ([Path(negatives).resolve()] if negatives else [])
    moves: dict[Path, list[tuple[Path, Path]]] = {r: [] for r in roots}
    reasons: dict[Path, list[str]] = {r: [] for r in roots}
    try:
        for f in report.offenders(kinds):
            path = Path(f.path).resolve()
            home = next((r for r in roots if path.is_relative_to(r)), roots[0])
            if path.is_file():
                moves[home].append((path, move_file(path, quarantine_path(home, path))))
                reasons[home].append(f"{f.kind}: {f.reason}")
    finally:  # even when a move fails midway, what was moved is logged (and can be undone)
        for home, pairs in moves.items():
            if pairs:
                ActionLog(home).record("verify-fix", pairs, reasons=reasons[home], kinds=list(kinds))
    return [(str(a), str(b)) for pairs in moves.values() for a, b in pairs]

