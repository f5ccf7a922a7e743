"""Linear heads on cached vectors, and the rules that turn leaf probabilities into the photo's answer.

Classes are label paths ("bts/jimin", "neither"); a top-level class's probability is the sum of its leaves'.
Several faces: the photo's distribution is the mean of the faces' top-level distributions, each face weighted
by its width in pixels (the face a photo is about is usually the largest; a face in the crowd counts less).
Naming faces: one photo usually shows each member once, so the members of a group are given to that group's
faces jointly (the assignment with the highest summed log-probability), not twice to two faces, unless a face
gives its assigned member less than RENAME_MIN (a collage of one person keeps that person's name)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import NEITHER

__all__ = ["LinearHead", "top_of", "roll_up", "face_top_distributions", "face_weights", "combine_faces", "assign_members",
           "softmax"]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_of(leaf: str) -> str:
    return leaf.split("/", 1)[0]


@dataclass
class LinearHead:
    """Multinomial logistic regression, stored as plain arrays: proba = softmax(((x - mean) / scale) W^T + b)."""

    classes: list[str]
    W: np.ndarray  # (k, d)
    b: np.ndarray  # (k,)
    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)

    def logits(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, np.float64))
        return ((X - self.mean) / self.scale) @ self.W.T + self.b

    def proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.logits(X))

    @classmethod
    def fit(cls, X: np.ndarray, y: list[str], C: float = 1.0, standardize: bool = True,
            sample_weight: np.ndarray | None = None) -> "LinearHead":
        """Fit on rows X with labels y; classes are weighted by 1/sqrt(count) so thin classes are heard without
        letting a class of one photo dominate (full 'balanced' weighting over-predicts such classes)."""
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, np.float64)
        classes = sorted(set(y))
        if len(classes) < 2:
            raise ValueError(f"need at least two classes to train a head, got {classes}")
        mean = X.mean(axis=0) if standardize else np.zeros(X.shape[1])
        scale = X.std(axis=0) + 1e-6 if standardize else np.ones(X.shape[1])
        counts = {c: y.count(c) for c in classes}
        w = np.array([1.0 / np.sqrt(counts[c]) for c in y])
        w *= len(y) / w.sum()
        if sample_weight is not None:
            w = w * sample_weight
        from threadpoolctl import threadpool_limits

        clf = LogisticRegression(C=C, max_iter=3000)
        with threadpool_limits(1):  # many BLAS threads on small matrices cost 30x the CPU
            clf.fit((X - mean) / scale, y, sample_weight=w)
        W, b = clf.coef_, clf.intercept_
        if len(classes) == 2:  # sklearn keeps one row for two classes: softmax([-z/2, z/2]) == sigmoid(z)
            W, b = np.vstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
        assert list(clf.classes_) == classes
        return cls(classes=classes, W=W, b=b, mean=mean, scale=scale)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_W": self.W.astype(np.float32), f"{prefix}_b": self.b.astype(np.float32),
                f"{prefix}_mean": self.mean.astype(np.float32), f"{prefix}_scale": self.scale.astype(np.float32)}

    @classmethod
    def from_arrays(cls, prefix: str, classes: list[str], arrays: dict[str, np.ndarray]) -> "LinearHead":
        head = cls(classes=list(classes), W=arrays[f"{prefix}_W"].astype(np.float64),
                   b=arrays[f"{prefix}_b"].astype(np.float64), mean=arrays[f"{prefix}_mean"].astype(np.float64),
                   scale=arrays[f"{prefix}_scale"].astype(np.float64))
        if head.W.shape[0] != len(classes):
            raise ValueError(f"head '{prefix}' has {head.W.shape[0]} rows for {len(classes)} classes")
        return head


def roll_up(proba: np.ndarray, classes: list[str], top: list[str]) -> np.ndarray:
    """(n, leaves) -> (n, top): a top-level class's probability is the sum of its leaves'."""
    index = {t: i for i, t in enumerate(top)}
    out = np.zeros((np.atleast_2d(proba).shape[0], len(top)))
    for j, c in enumerate(classes):
        out[:, index[top_of(c)]] += np.atleast_2d(proba)[:, j]
    return out


def face_top_distributions(leaf_p: np.ndarray, classes: list[str], top: list[str],
                           unknown_below: float = 0.0) -> np.ndarray:
    """(faces, leaves) -> (faces, top): a top-level class gets the sum of its members' probabilities.
    With a "neither" class, a face whose best member is below `unknown_below` is someone the model does not know
    (summing would call it "bts" when its probability is spread thinly over seven BTS members): such a face gives
    each group only its best member's probability, and "neither" the rest."""
    leaf_p = np.atleast_2d(leaf_p)
    out = roll_up(leaf_p, classes, top)
    if unknown_below <= 0 or NEITHER not in classes or NEITHER not in top:
        return out
    members = [j for j, c in enumerate(classes) if c != NEITHER]
    unknown = leaf_p[:, members].max(axis=1) < unknown_below
    for i in np.flatnonzero(unknown):
        for k, t in enumerate(top):
            in_t = [j for j in members if top_of(classes[j]) == t]
            out[i, k] = leaf_p[i, in_t].max() if in_t else 0.0
        out[i, top.index(NEITHER)] = 1.0 - out[i].sum()
    return out


def face_weights(widths: list[int]) -> np.ndarray:
    w = np.asarray(widths, np.float64)
    return w / w.sum()


def combine_faces(face_top: np.ndarray, widths: list[int]) -> np.ndarray:
    """(faces, top) -> (top,): the width-weighted mean of the faces' distributions (see the module docstring)."""
    return face_weights(widths) @ face_top


# A face is given another member than its most likely one only when it gives that member at least this much: in a
# collage of one person, the joint rule would otherwise name five copies of Jimin as other members at 1-8 %.
# Faces of held-out group photos whose member is known from a crop: 98 -> 99 of 100 right at 0.1 (also at 0 and
# 0.25); over all 552 such faces, 0.1 is best (0.982, against 0.971 named one by one).
RENAME_MIN = 0.1


def assign_members(leaf_p: np.ndarray, classes: list[str], unknown: np.ndarray | None = None) -> np.ndarray:
    """(faces, leaves) -> each face's class index. A face keeps its group (its most likely leaf's); within a
    group, members go to faces by the assignment that maximises the summed log-probability, so two faces in one
    photo are not the same member. A group with more faces than members names the rest by their best leaf, and a
    face whose assigned member is below RENAME_MIN keeps its best leaf (one person shown several times).
    Faces marked `unknown` (answered "neither" by the unknown-face rule) keep their best leaf and take no member."""
    from scipy.optimize import linear_sum_assignment

    leaf_p = np.atleast_2d(leaf_p)
    best = leaf_p.argmax(axis=1)
    out = best.copy()
    named = [i for i in range(len(best)) if classes[best[i]] != NEITHER and not (unknown is not None and unknown[i])]
    for group in sorted({top_of(classes[best[i]]) for i in named}):
        rows = [i for i in named if top_of(classes[best[i]]) == group]
        cols = [j for j, c in enumerate(classes) if c != NEITHER and top_of(c) == group]
        if len(rows) < 2:
            continue
        cost = -np.log(np.clip(leaf_p[np.ix_(rows, cols)], 1e-12, None))
        for r, c in zip(*linear_sum_assignment(cost)):
            if leaf_p[rows[r], cols[c]] >= RENAME_MIN:  # else the face keeps its best name (a collage of one person)
                out[rows[r]] = cols[c]
    return out
