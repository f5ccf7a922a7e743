"""Open a photo safely: one opener for training, the CLI and the server, so a rule about a strange photo is
written once. Returns an upright RGB image or raises ImageError naming the file and the reason."""
from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "Photo", "open_image", "file_hash", "IMAGE_SUFFIXES", "MAX_PIXELS", "MIN_SIDE",
           "open_photo"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp"}
MAX_PIXELS = 120_000_000  # a declared size above this is treated as a decompression bomb (phones make 50-108 MP)
MIN_SIDE = 16  # smaller than this carries no face and no usable whole-image features
MAX_FILE_BYTES = 50 * 1024 * 1024

Source = Union[str, Path, bytes]


class ImageError(ValueError):
    """A photo that cannot be used; str() is 'path: reason'."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Photo:
    """An upright RGB photo and where it came from."""

    path: str
    image: Image.Image
    sha256: str

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.image)


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_bytes(source: Source, name: str) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    if not path.exists():
        raise ImageError(name, "file not found")
    if path.is_dir():
        raise ImageError(name, "is a folder, not an image")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(name, "empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(name, f"file too large ({size / 1e6:.0f} MB; limit {MAX_FILE_BYTES / 1e6:.0f} MB)")
    return path.read_bytes()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Palette, alpha, CMYK, greyscale and 16-bit modes to 8-bit RGB (alpha composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(arr.max() - arr.min(), 1e-9)
        return Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _as_source(source, name: str | None = None) -> tuple["Source | Photo", str]:
    """Anything a notebook user may hand over -> (a path, bytes or Photo that open_image reads, its name): a PIL
    image or an (H, W[, 3|4]) array is encoded as PNG once, so it goes through the same checks as a file."""
    if isinstance(source, Photo):
        return source, name or source.path
    if isinstance(source, (str, Path)):
        return source, name or str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    if isinstance(source, np.ndarray):
        name = name or "<array>"
        a = np.asarray(source)
        if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
            a = np.moveaxis(a, 0, -1)  # channels first
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.size == 0 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
            raise ImageError(name, f"an array of shape {a.shape} is not a picture (give (H, W, 3) uint8 RGB)")
        if a.dtype.kind == "f":
            a = np.nan_to_num(a) * (255.0 if a.max(initial=0) <= 1.0 else 1.0)  # 0..1 floats are common
        source = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if isinstance(source, Image.Image):
        buf = io.BytesIO()
        _to_rgb(ImageOps.exif_transpose(source) or source).save(buf, "PNG")
        return buf.getvalue(), name or "<image>"
    raise ImageError(name or type(source).__name__, f"cannot read a {type(source).__name__}: give a file path, "
                     "bytes, a PIL image or an array")


def open_photo(source, name: str | None = None) -> Photo:
    """open_image for anything predict and explain accept: a path, bytes, a Photo, a PIL image or an array."""
    source, name = _as_source(source, name)
    return replace(source, path=name) if isinstance(source, Photo) else open_image(source, name)


def _bomb(declared: str) -> str:
    return f"image too large ({declared} declared; more than {MAX_PIXELS:,} pixels: a decompression bomb?)"


def open_image(source: Source, name: str | None = None) -> Photo:
    """Read a file (or bytes) into an upright RGB Photo. Raises ImageError('name: reason')."""
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = _read_bytes(source, name)
    if len(data) == 0:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(name, _bomb(f"{w}x{h} px"))
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP: the first frame
            img.load()
            img = ImageOps.exif_transpose(img) or img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:  # Pillow refuses the largest sizes before they can be read
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(name, _bomb(f"{int(pixels[1]):,} px" if pixels else "its size")) from None
    except OSError as e:
        msg = str(e)
        low = msg.lower()
        reason = "truncated or damaged image" if "truncat" in low or "broken" in low else f"cannot decode image ({msg})"
        raise ImageError(name, reason) from None
    except Exception as e:  # any decoder bug is still the file's fault, not a crash
        raise ImageError(name, f"cannot decode image ({type(e).__name__}: {e})") from None
    if min(img.size) < MIN_SIDE:
        raise ImageError(name, f"image too small ({img.size[0]}x{img.size[1]} px; need at least {MIN_SIDE} px a side)")
    return Photo(path=name, image=_to_rgb(img), sha256=file_hash(data))
