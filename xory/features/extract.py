"""Photo -> PhotoFeatures (faces and whole-image vector), for one photo or many in parallel, through the cache."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np

from ..images import ImageError, Photo, open_image
from .cache import FeatureCache, PhotoFeatures
from .faces import FaceEmbedder
from .image import BACKBONE_PATH, ImageEmbedder

__all__ = ["Extractor", "extract_many", "extractor_key"]


def extractor_key(backbone: Path = BACKBONE_PATH) -> str:
    """Names the feature versions: a new backbone file gets a fresh cache folder."""
    digest = hashlib.sha256(Path(backbone).read_bytes()).hexdigest()[:12]
    return f"v2-dlib5-resnet128-effl0-{digest}"


class Extractor:
    """Both embedders, loaded once."""

    def __init__(self, backbone: Path = BACKBONE_PATH, threads: int = 1):
        self.faces = FaceEmbedder()
        self.image = ImageEmbedder(backbone, threads=threads)

    def __call__(self, photo: Photo) -> PhotoFeatures:
        faces = self.faces.faces(photo.image)
        return PhotoFeatures(
            sha256=photo.sha256, size=photo.image.size,
            boxes=np.asarray([f.box for f in faces], np.int32).reshape(-1, 4),
            scores=np.asarray([f.score for f in faces], np.float32),
            face_vectors=np.asarray([f.vector for f in faces], np.float32).reshape(-1, FaceEmbedder.dim),
            image_vector=self.image.embed(photo.image).astype(np.float32))


_worker: Extractor | None = None


def _init_worker(backbone: str) -> None:
    global _worker
    _worker = Extractor(Path(backbone))


def _work(path: str) -> tuple[str, PhotoFeatures | str]:
    try:
        return path, _worker(open_image(path))
    except ImageError as e:
        return path, e.reason
    except Exception as e:  # one bad file never stops training
        return path, f"{type(e).__name__}: {e}"


def extract_many(paths: list[str], cache: FeatureCache | None = None, workers: int | None = None,
                 backbone: Path = BACKBONE_PATH, progress: bool = True) -> dict[str, PhotoFeatures | str]:
    """Features for every path (from the cache when its bytes were seen before); a string is the reason it failed."""
    cache = cache or FeatureCache(extractor_key(backbone))
    results: dict[str, PhotoFeatures | str] = {}
    todo: list[str] = []
    hashes: dict[str, str] = {}
    for p in paths:
        try:
            sha = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        except OSError as e:
            results[p] = f"cannot read file ({e.strerror or e})"
            continue
        hashes[p] = sha
        hit = cache.get(sha)
        if hit is not None:
            results[p] = hit
        else:
            todo.append(p)
    if todo:
        workers = workers or min(os.cpu_count() or 1, len(todo), 8)
        bar = _progress(len(todo), f"features ({len(paths) - len(todo)} cached)", progress)
        if workers == 1:
            _init_worker(str(backbone))
            stream = map(_work, todo)
        else:
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(backbone),))
            stream = pool.imap_unordered(_work, todo, chunksize=4)
        for p, out in stream:
            if isinstance(out, PhotoFeatures):
                cache.put(out)
            results[p] = out
            bar.update(1)
        bar.close()
        if workers != 1:
            pool.close()
            pool.join()
    return {p: results[p] for p in paths}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="photo", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
