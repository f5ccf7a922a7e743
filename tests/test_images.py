"""The one photo opener: every strange input gets an upright RGB photo or a clear 'path: reason' error."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import BEARS, KPOP, photos
from xory.images import ImageError, open_image

JIMIN = photos(KPOP / "bts" / "jimin")


def big_photo() -> Path:
    """A full-size member photo (not a tight crop), for tests that need a real face at a real size."""
    return next(p for p in photos(KPOP / "exo" / "chanyeol") if Image.open(p).size[0] >= 400)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that declares a huge size (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_text("hello, I am not a photo\n"), "not an image (unrecognised format)"),
    (lambda p: p.write_bytes(JIMIN[0].read_bytes()[: JIMIN[0].stat().st_size // 2]), "truncated or damaged image"),
    (lambda p: Image.new("RGB", (1, 1)).save(p, "PNG"), "image too small (1x1 px; need at least 16 px a side)"),
    (lambda p: p.write_bytes(bomb_png(12000, 12000)),
     "image too large (12000x12000 px declared; more than 120,000,000 pixels: a decompression bomb?)"),
    (lambda p: p.write_bytes(bomb_png()),
     "image too large (10,000,000,000 px declared; more than 120,000,000 pixels: a decompression bomb?)"),
])
def test_bad_files_get_a_clear_reason(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageError) as err:
        open_image(path)
    assert err.value.reason == reason
    assert str(err.value) == f"{path}: {reason}"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        open_image(tmp_path)


def test_modes_become_rgb(tmp_path):
    src = Image.open(big_photo()).convert("RGB")
    cases = {
        "cmyk.jpg": src.convert("CMYK"),
        "palette.png": src.convert("P"),
        "alpha.png": src.convert("RGBA"),
        "grey.bmp": src.convert("L"),
        "i16.png": src.convert("L").point(lambda v: v * 256).convert("I;16"),
        "photo.webp": src,
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        photo = open_image(tmp_path / name)
        assert photo.image.mode == "RGB" and photo.image.size == src.size, name


def test_animated_gif_uses_the_first_frame(tmp_path):
    a = Image.open(big_photo()).convert("RGB").resize((200, 200))
    b = Image.open(BEARS / "grizzly" / photos(BEARS / "grizzly")[0].name).convert("RGB").resize((200, 200))
    a.save(tmp_path / "anim.gif", save_all=True, append_images=[b], duration=100, loop=0)
    photo = open_image(tmp_path / "anim.gif")
    first = Image.open(tmp_path / "anim.gif").convert("RGB")
    assert photo.image.tobytes() == first.tobytes()


def test_exif_orientation_is_applied(tmp_path):
    src = Image.open(big_photo()).convert("RGB")
    rotated = src.transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...with a tag that says "rotate 90 clockwise to view"
    buf = io.BytesIO()
    rotated.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    (tmp_path / "exif.jpg").write_bytes(buf.getvalue())
    photo = open_image(tmp_path / "exif.jpg")
    assert photo.image.size == src.size


def test_bytes_and_hash_agree():
    data = JIMIN[1].read_bytes()
    assert open_image(data).sha256 == open_image(JIMIN[1]).sha256
