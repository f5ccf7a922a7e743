"""Shared fixtures: real photos from ../shared/data (read there, never copied into the repo), small subsets copied
to a temporary folder when a test needs to change them, and one small model trained once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KPOP = DATA / "kpop"
OTHERS = DATA / "kpop-others"
BEARS = DATA / "bears"
PETS = DATA / "pets"

if not KPOP.is_dir():
    raise RuntimeError(f"the tests read real photos from {DATA}; it is missing")


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def copy_subset(src: Path, dst: Path, per_folder: int, start: int = 0) -> Path:
    """Copy every `per_folder`-th slice of each leaf folder of src into dst (same layout)."""
    for folder in sorted(p for p in src.rglob("*") if p.is_dir()):
        files = [f for f in photos(folder) if f.is_file()]
        if not files:
            continue
        out = dst / folder.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in files[start:start + per_folder]:
            shutil.copy2(f, out / f.name)
    return dst


@pytest.fixture(scope="session")
def small_kpop(tmp_path_factory) -> Path:
    """kpop/ with at most 12 photos per folder (BTS members, EXO members, _group): a temporary copy."""
    return copy_subset(KPOP, tmp_path_factory.mktemp("kpop") / "kpop", per_folder=12)


@pytest.fixture(scope="session")
def small_others(tmp_path_factory) -> Path:
    return copy_subset(OTHERS, tmp_path_factory.mktemp("others") / "others", per_folder=6)


@pytest.fixture(scope="session")
def small_model(small_kpop, small_others, tmp_path_factory) -> Path:
    """A faces-mode model trained end to end on the small copies (features cached for the whole session)."""
    from xory.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "small"
    folder, _ = train(TrainConfig(data=str(small_kpop), out=str(out), negatives=str(small_others), progress=False),
                      log=lambda s: None)
    return folder


@pytest.fixture(scope="session")
def heldout_model(small_kpop, small_others, tmp_path_factory) -> Path:
    """The small model's recipe with a quarter of the photos held out (its split.json records which), 3 folds."""
    from xory.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "heldout"
    folder, _ = train(TrainConfig(data=str(small_kpop), out=str(out), negatives=str(small_others), holdout=0.25,
                                  folds=3, progress=False), log=lambda s: None)
    return folder


@pytest.fixture(scope="session")
def bears_model(tmp_path_factory) -> Path:
    """An image-mode model (no faces) on 10 photos of each bear folder."""
    from xory.train import TrainConfig, train

    data = copy_subset(BEARS, tmp_path_factory.mktemp("bears") / "bears", per_folder=10)
    folder, _ = train(TrainConfig(data=str(data), out=str(tmp_path_factory.mktemp("models") / "bears"), folds=0,
                                  progress=False), log=lambda s: None)
    return folder


@pytest.fixture(scope="session")
def default_model():
    import xory

    return xory.load()
