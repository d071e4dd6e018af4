"""A contact sheet of retrieval hits: one tile per hit (the image, its rank and score, the start of
its caption or file name) under a title line, as a PNG for people who would rather look than read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND, INK, MUTED, MISSING = (255, 255, 255), (20, 20, 20), (90, 90, 90), (225, 225, 225)


@dataclass
class Tile:
    pixels: torch.Tensor | None  # uint8 [T, 3, H, W] (first frame shown) or None when unreadable
    heading: str  # e.g. "#1  0.873"
    text: str  # caption or file name


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def sheet_layout(count: int, columns: int | None = None) -> tuple[int, int]:
    """(columns, rows) for `count` tiles: at most 5 columns unless given."""
    columns = columns or min(5, max(1, count))
    return columns, max(1, math.ceil(count / columns))


def contact_sheet(
    tiles: list[Tile], out: Path, title: str, tile: int = 192, columns: int | None = None
) -> Path:
    """Write the tiles as a grid PNG to `out`; returns `out`. Unreadable images get a grey tile."""
    cols, rows = sheet_layout(len(tiles), columns)
    pad, text_h, title_h = 8, 34, 30
    width = cols * (tile + pad) + pad
    height = title_h + rows * (tile + text_h + pad) + pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = _font(16), _font(12)
    draw.text((pad, 7), _fit(draw, title, big, width - 2 * pad), fill=INK, font=big)
    for i, item in enumerate(tiles):
        x = pad + (i % cols) * (tile + pad)
        y = title_h + (i // cols) * (tile + text_h + pad)
        if item.pixels is None:
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=MISSING)
            draw.text((x + 8, y + tile // 2 - 8), "missing", fill=MUTED, font=big)
        else:
            frame = item.pixels[0].permute(1, 2, 0).contiguous().numpy()
            sheet.paste(Image.fromarray(frame).resize((tile, tile), Image.Resampling.BICUBIC), (x, y))
        draw.text((x, y + tile + 2), _fit(draw, item.heading, small, tile), fill=INK, font=small)
        draw.text((x, y + tile + 17), _fit(draw, item.text, small, tile), fill=MUTED, font=small)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
