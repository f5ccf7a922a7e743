"""Training you can watch: k-fold cross-validation of the heads on cached vectors, printed as a table as it goes.

Folds never split a duplicate cluster (copies, near-copies and crops of one photo, xory.split.duplicate_clusters)
nor one negative person, so a fold's valid rows are photos the fold's head has not seen in any form. Each head is
fitted exactly as the bundle's head is (LinearHead.fit with the same C), so the table measures the real recipe.
Logistic regression on cached vectors: a fold costs a second or two."""
from __future__ import annotations

import random
from typing import Callable

import numpy as np

from .dataset import Sample
from .evaluate import head_scores
from .features.cache import PhotoFeatures
from .heads import LinearHead, top_of
from .split import UnionFind, duplicate_clusters, main_label

__all__ = ["group_folds", "cross_validate", "format_table", "HeadRecipe"]

# name -> (rows(samples, feats) -> (X, y), C, standardize)
HeadRecipe = tuple[Callable[[list[Sample], list[PhotoFeatures]], tuple[np.ndarray, list[str]]], float, bool]


def group_folds(samples: list[Sample], feats: list[PhotoFeatures], k: int, seed: int = 0) -> list[int]:
    """A fold (0..k-1) for each photo: whole duplicate clusters and whole negative people at a time, each group
    put in the fold holding the fewest photos of its main label (so every fold sees every common label)."""
    clusters = duplicate_clusters(feats)
    uf = UnionFind(len(samples))
    first_of_person: dict[str, int] = {}
    for i, s in enumerate(samples):
        uf.union(i, clusters[i])
        if s.negative:
            uf.union(i, first_of_person.setdefault(s.source, i))
    groups: dict[int, list[int]] = {}
    for i in range(len(samples)):
        groups.setdefault(uf.find(i), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    order.sort(key=len, reverse=True)
    count = np.zeros(k, int)
    per_label: dict[str, np.ndarray] = {}
    fold = [0] * len(samples)
    for g in order:
        leaves = [samples[i].leaf for i in g]
        main = main_label(leaves)
        c = per_label.setdefault(main, np.zeros(k, int))
        f = int(np.lexsort((count, c))[0])  # fewest of this label, then fewest photos
        for i in g:
            fold[i] = f
        c[f] += len(g)
        count[f] += len(g)
    return fold


def cross_validate(samples: list[Sample], feats: list[PhotoFeatures], heads: dict[str, HeadRecipe], k: int = 5,
                   seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Per fold and head: rows, train loss, valid loss, error (finest label) and group error; then the mean and
    spread over folds. Returns {"k", "folds": [...], "summary": {head: {...}}}."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    with threadpool_limits(1):  # many small BLAS calls: threads only spin (a face fit: 9 s of CPU -> 0.3 s)
        return _cross_validate(samples, feats, heads, k, seed, log)


def _cross_validate(samples, feats, heads, k, seed, log) -> dict:
    fold = group_folds(samples, feats, k, seed)
    rows: list[dict] = []
    log(format_table([], header=True))
    for f in range(k):
        train = [i for i in range(len(samples)) if fold[i] != f]
        valid = [i for i in range(len(samples)) if fold[i] == f]
        pick = lambda idx, xs: [xs[i] for i in idx]  # noqa: E731
        for name, (make_rows, C, standardize) in heads.items():
            Xt, yt = make_rows(pick(train, samples), pick(train, feats))
            Xv, yv = make_rows(pick(valid, samples), pick(valid, feats))
            if len(set(yt)) < 2 or not yv:
                continue
            head = LinearHead.fit(Xt, yt, C=C, standardize=standardize)
            tr = head_scores(head.proba(Xt), head.classes, yt)
            pv = head.proba(Xv)
            va = head_scores(pv, head.classes, yv)
            top_err = float(np.mean([top_of(head.classes[j]) != top_of(y) for j, y in zip(pv.argmax(1), yv)]))
            row = {"fold": f + 1, "head": name, "train_rows": len(yt), "valid_rows": len(yv),
                   "train_loss": tr["loss"], "valid_loss": va["loss"], "error": va["error"],
                   "group_error": top_err, "unseen": va["unseen"]}
            rows.append(row)
            log(format_table([row]))
    summary = {}
    for name in heads:
        mine = [r for r in rows if r["head"] == name and r["valid_loss"] is not None]
        if mine:
            summary[name] = {key: {"mean": float(np.mean([r[key] for r in mine])),
                                   "std": float(np.std([r[key] for r in mine]))}
                             for key in ("train_loss", "valid_loss", "error", "group_error")}
            summary[name]["valid_rows"] = int(sum(r["valid_rows"] for r in mine))
    out = {"k": k, "seed": seed, "folds": rows, "summary": summary}
    log(format_summary(out))
    return out


def _v(x: float | None) -> str:
    return "     -" if x is None else f"{x:6.3f}"


def format_table(rows: list[dict], header: bool = False) -> str:
    lines = ["fold  head   train rows  valid rows  train loss  valid loss   error  group error"] if header else []
    for r in rows:
        lines.append(f"{r['fold']:>4}  {r['head']:<5}  {r['train_rows']:>10}  {r['valid_rows']:>10}  "
                     f"{_v(r['train_loss']):>10}  {_v(r['valid_loss']):>10}  {_v(r['error'])}  "
                     f"{_v(r['group_error']):>11}"
                     + (f"  ({r['unseen']} rows of classes absent from training)" if r.get("unseen") else ""))
    return "\n".join(lines)


def format_summary(cv: dict) -> str:
    lines = [f"{cv['k']}-fold validation summary (mean ± spread over folds):"]
    for name, s in cv["summary"].items():
        lines.append(f"  {name} head: valid loss {s['valid_loss']['mean']:.3f} ± {s['valid_loss']['std']:.3f}, "
                     f"error {s['error']['mean']:.3f} ± {s['error']['std']:.3f}, "
                     f"group error {s['group_error']['mean']:.3f} ± {s['group_error']['std']:.3f} "
                     f"({s['valid_rows']} valid rows)")
    return "\n".join(lines)
