"""EfficientNet-Lite0 features through onnxruntime, on real photos from ../shared/data/bears."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xory.features.image import BACKBONE_PATH, ImageEmbedder, preprocess

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEARS = DATA / "bears"
PHOTO_EXTS = {".jpg", ".jpeg", ".png", ".webp"}


def photos(folder: str, n: int) -> list[Path]:
    """The first n photos (sorted by name) of a bears/ folder; skip the test if there are none."""
    d = BEARS / folder
    found = sorted(p for p in d.iterdir() if p.suffix.lower() in PHOTO_EXTS) if d.is_dir() else []
    if not found:
        pytest.skip(f"no photos in {d}")
    return found[:n]


def load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def embedder() -> ImageEmbedder:
    return ImageEmbedder(threads=1)


@pytest.fixture(scope="module")
def grizzly() -> Image.Image:
    return load(photos("grizzly", 1)[0])


def test_preprocess_squashes_and_scales() -> None:
    img = Image.new("RGB", (640, 200), (255, 0, 127))
    x = preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 100, 100], [1.0, -1.0, -0.5 / 127.5], atol=1e-6)
    # Non-RGB modes are converted rather than rejected.
    assert preprocess(Image.new("L", (50, 80), 0)).shape == (3, 224, 224)


def test_embedding_shape_dtype_finite_deterministic(embedder: ImageEmbedder, grizzly: Image.Image) -> None:
    v = embedder.embed(grizzly)
    assert embedder.dim == 1280
    assert v.shape == (1280,) and v.dtype == np.float32
    assert np.all(np.isfinite(v))
    assert np.all(v >= 0) and v.max() > 0  # ReLU6 features, pooled
    np.testing.assert_array_equal(v, embedder.embed(grizzly))


@pytest.mark.parametrize(("folder", "want"), [("grizzly", 294), ("teddy", 850)])
def test_imagenet_top5(embedder: ImageEmbedder, folder: str, want: int) -> None:
    for path in photos(folder, 3):
        logits = embedder.imagenet_logits(load(path))
        assert logits.shape == (1000,) and logits.dtype == np.float32
        top5 = np.argsort(-logits)[:5].tolist()
        assert want in top5, f"{path.name}: top-5 {top5} lacks {want}"


def test_feature_map_mean_is_the_vector(embedder: ImageEmbedder, grizzly: Image.Image) -> None:
    vec, fmap = embedder.feature_map(grizzly)
    assert vec.shape == (1280,) and fmap.shape == (1280, 7, 7)
    assert vec.dtype == np.float32 and fmap.dtype == np.float32
    np.testing.assert_allclose(fmap.mean(axis=(1, 2)), vec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vec, embedder.embed(grizzly), rtol=1e-5, atol=1e-5)


def test_batch_agrees_with_single(embedder: ImageEmbedder) -> None:
    imgs = [load(p) for p in photos("grizzly", 2) + photos("teddy", 2)]
    batch = embedder.embed_batch(imgs)
    assert batch.shape == (len(imgs), 1280) and batch.dtype == np.float32
    single = np.stack([embedder.embed(im) for im in imgs])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batch[0], batch[-1])  # a grizzly is not a teddy
    assert embedder.embed_batch([]).shape == (0, 1280)


def test_missing_backbone_says_how_to_make_it(tmp_path: Path) -> None:
    assert BACKBONE_PATH.name == "efficientnet_lite0.onnx"
    with pytest.raises(FileNotFoundError, match="export_backbone.py"):
        ImageEmbedder(tmp_path / "nope.onnx")
