"""Pictures for people, drawn with Pillow alone (no plotting library): faces boxed and named, heat maps laid over
photos, confusion matrices, grids of captioned tiles, histograms; and the PNG bytes / data URLs that carry them."""
from __future__ import annotations

import base64
import io
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["font", "png_bytes", "data_url", "boxes_image", "heat_colors", "overlay", "confusion_image", "grid",
           "histogram_image", "thumbnail", "GOOD", "BAD", "INK"]

GOOD = (40, 170, 80)
BAD = (220, 40, 40)
INK = (30, 30, 30)
PALETTE = [(230, 120, 20), (30, 120, 220), (150, 60, 200), (20, 160, 160), (200, 40, 120), (110, 110, 110)]


@lru_cache(maxsize=16)
def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (no system fonts needed)."""
    return ImageFont.load_default(size=size)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_url(img: Image.Image, fmt: str = "PNG", quality: int = 80) -> str:
    """An image as a data: URL, to embed in HTML or JSON (JPEG for photos keeps reports small)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(img: Image.Image, side: int) -> Image.Image:
    out = img.copy()
    out.thumbnail((side, side), Image.Resampling.LANCZOS)
    return out


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color, size: int) -> None:
    """Text on a filled tag above (or, at the top edge, inside) a box corner."""
    f = font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    w, h = right - left + 6, bottom - top + 4
    x, y = xy[0], xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle([x, y, x + w, y + h], fill=color)
    draw.text((x + 3, y + 2 - top), text, fill=(255, 255, 255), font=f)


def boxes_image(img: Image.Image, boxes: Sequence[Sequence[int]], labels: Sequence[str],
                colors: Sequence[tuple[int, int, int]] | None = None, max_side: int | None = None) -> Image.Image:
    """The photo with each box drawn and tagged; scaled to max_side first (boxes follow)."""
    out = img.convert("RGB").copy()
    scale = 1.0
    if max_side and max(out.size) > max_side:
        scale = max_side / max(out.size)
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 250))
    size = max(11, round(max(out.size) / 40))
    for i, (box, text) in enumerate(zip(boxes, labels)):
        color = colors[i] if colors else PALETTE[i % len(PALETTE)]
        b = [v * scale for v in box]
        draw.rectangle(b, outline=color, width=width)
        if text:
            _label(draw, (b[0], b[1]), text, color, size)
    return out


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a dark-blue -> red -> yellow scale (readable over photos, and in grey print)."""
    h = np.clip(np.asarray(heat, np.float64), 0, 1)[..., None]
    stops = np.array([[0, 0, 90], [30, 60, 200], [220, 30, 30], [255, 220, 0]], np.float64)
    pos = h * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    t = pos - i
    return (stops[i[..., 0]] * (1 - t) + stops[i[..., 0] + 1] * t).astype(np.uint8)


def overlay(img: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Lay a heat map (any size, values in [0, 1]) over the photo: stretched smoothly to the photo's size."""
    heat = np.asarray(heat, np.float32)
    if heat.shape != (img.height, img.width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(img.size, Image.Resampling.BICUBIC))
    colored = Image.fromarray(heat_colors(heat))
    return Image.blend(img.convert("RGB"), colored, alpha)


def confusion_image(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> Image.Image:
    """A confusion matrix: true classes down, predicted across; counts in cells shaded by the row's share."""
    m = np.asarray(matrix)
    cell = 44 if len(cols) <= 6 else 30
    f, small = font(13), font(11 if cell < 40 else 13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s, fo: measure.textlength(s, font=fo)  # noqa: E731
    left = int(max([text_w(r, f) for r in rows] + [40]) + 40)
    top = int(max([text_w(c, f) for c in cols] + [40]) + 50)
    width = int(max(left + cell * len(cols) + 20, text_w(title, font(15)) + 20))
    height = top + cell * len(rows) + 20
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    draw.text((10, 8), title, fill=INK, font=font(15))
    draw.text((left, top - 18 - max(text_w(c, f) for c in cols)), "predicted", fill=(90, 90, 90), font=small)
    for j, c in enumerate(cols):  # rotated column names
        tw = int(text_w(c, f)) + 4
        tag = Image.new("RGBA", (tw, 18), (255, 255, 255, 0))
        ImageDraw.Draw(tag).text((2, 1), c, fill=INK, font=f)
        tag = tag.rotate(90, expand=True)
        out.paste(tag, (left + j * cell + (cell - 18) // 2, top - 6 - tw), tag)
    draw.text((8, top - 18), "true", fill=(90, 90, 90), font=small)
    totals = np.maximum(m.sum(axis=1, keepdims=True), 1)
    share = m / totals
    for i, r in enumerate(rows):
        draw.text((left - 8 - text_w(r, f), top + i * cell + cell // 2 - 8), r, fill=INK, font=f)
        for j, c in enumerate(cols):
            x, y = left + j * cell, top + i * cell
            s = float(share[i, j])
            on_diag = r == c
            base = np.array(GOOD if on_diag else BAD, np.float64)
            color = tuple(int(v) for v in (255 - (255 - base) * min(1.0, s * 1.2)))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color if m[i, j] else (248, 248, 248),
                           outline=(220, 220, 220))
            if m[i, j]:
                t = str(int(m[i, j]))
                ink = "white" if s > 0.5 else INK
                draw.text((x + (cell - text_w(t, small)) / 2, y + cell / 2 - 8), t, fill=ink, font=small)
    return out


def grid(tiles: Sequence[Image.Image], captions: Sequence[str], cols: int = 4, tile: int = 220,
         title: str | None = None) -> Image.Image:
    """Tiles (scaled to fit tile x tile) with multi-line captions beneath, cols to a row."""
    f = font(12)
    lines = max([c.count("\n") + 1 for c in captions] + [1])
    cap_h = 16 * lines + 6 if any(captions) else 0
    head = 30 if title else 0
    rows = max(1, -(-len(tiles) // cols))
    out = Image.new("RGB", (cols * (tile + 10) + 10, head + rows * (tile + cap_h + 10) + 10), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((10, 8), title, fill=INK, font=font(15))
    for k, (im, cap) in enumerate(zip(tiles, captions)):
        x = 10 + (k % cols) * (tile + 10)
        y = head + 10 + (k // cols) * (tile + cap_h + 10)
        t = thumbnail(im, tile)
        out.paste(t, (x + (tile - t.width) // 2, y + (tile - t.height) // 2))
        for n, line in enumerate(cap.split("\n")):
            while line and draw.textlength(line, font=f) > tile + 6:  # clip to the tile's width
                line = line[:-2] + "…"
            draw.text((x, y + tile + 4 + 16 * n), line, fill=INK, font=f)
    return out


def histogram_image(series: dict[str, np.ndarray], bins: np.ndarray, title: str, xlabel: str,
                    marks: dict[str, float] | None = None) -> Image.Image:
    """Overlaid histograms (each normalised to its own total, so unequal counts compare), with vertical marks."""
    W, H, left, bottom, top = 640, 300, 50, 40, 40
    out = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(out, "RGBA")
    draw.text((10, 8), title, fill=INK, font=font(15))
    x0, x1, y0, y1 = left, W - 20, H - bottom, top
    hists = {k: np.histogram(v, bins=bins)[0] / max(len(v), 1) for k, v in series.items()}
    peak = max([h.max() for h in hists.values()] + [1e-9])
    sx = lambda v: x0 + (v - bins[0]) / (bins[-1] - bins[0]) * (x1 - x0)  # noqa: E731
    for n, (name, h) in enumerate(hists.items()):
        color = PALETTE[n % len(PALETTE)]
        for i, v in enumerate(h):
            if v:
                draw.rectangle([sx(bins[i]), y0 - v / peak * (y0 - y1), sx(bins[i + 1]) - 1, y0], fill=(*color, 110))
        draw.rectangle([x1 - 170, y1 + 4 + 18 * n, x1 - 158, y1 + 16 + 18 * n], fill=(*color, 200))
        draw.text((x1 - 152, y1 + 2 + 18 * n), name, fill=INK, font=font(12))
    for name, v in (marks or {}).items():
        draw.line([sx(v), y0, sx(v), y1], fill=(0, 0, 0, 160), width=1)
        draw.text((sx(v) + 3, y1 - 14), name, fill=INK, font=font(11))
    draw.line([x0, y0, x1, y0], fill=INK)
    for v in np.linspace(bins[0], bins[-1], 6):
        draw.text((sx(v) - 10, y0 + 4), f"{v:.1f}", fill=INK, font=font(11))
    draw.text(((x0 + x1) / 2 - 40, H - 18), xlabel, fill=INK, font=font(12))
    return out
