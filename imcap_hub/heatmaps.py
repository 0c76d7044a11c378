"""Where the model looked: attention maps drawn over the image (the CLI's PNGs, the app's view).

A map is the (H, W) attention grid of one word, over the square the encoder saw. The encoder
squashes every image to that square, so the grid is stretched back to the image's own shape, with
a smooth (bicubic) upsampling rather than blocky cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A perceptually ordered dark-blue -> red -> yellow ramp (like "inferno"), 5 stops.
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB uint8 colours from the ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - low)[..., None]
    return ((1 - t) * _RAMP[low] + t * _RAMP[low + 1]).round().astype(np.uint8)


def upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """An (H, W) map -> (height, width), smooth, scaled to [0, 1] by its own maximum."""
    grid = np.asarray(grid, dtype=np.float32)
    peak = float(grid.max())
    scaled = grid / peak if peak > 0 else grid
    big = Image.fromarray(scaled, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big), 0.0, 1.0)


def overlay(image: np.ndarray, grid: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """The RGB uint8 ``image`` with ``grid`` blended over it (``strength``: the map's weight)."""
    height, width = image.shape[:2]
    heat = upsample(grid, width, height)
    colours = colourise(heat).astype(np.float32)
    # Where the map is near zero, keep more of the image: the eye finds the peak at once.
    weight = strength * (0.35 + 0.65 * heat)[..., None]
    blended = (1 - weight) * image.astype(np.float32) + weight * colours
    return blended.round().astype(np.uint8)


def for_display(image: np.ndarray, size: int = 384) -> np.ndarray:
    """``image`` scaled (up or down, bilinear) so that its longer side is ``size`` pixels."""
    scale = size / max(image.shape[:2])
    if abs(scale - 1.0) < 1e-3:
        return image
    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.BILINEAR))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def attention_sheet(
    image: np.ndarray,
    maps: np.ndarray,
    labels: Sequence[str],
    *,
    panel: int = 192,
    columns: int = 4,
) -> Image.Image:
    """One panel per map (the image with that word's map over it), titled with the word."""
    if len(maps) != len(labels):
        raise ValueError(f"{len(maps)} maps but {len(labels)} labels")
    small = for_display(image, panel)
    size = (small.shape[1], small.shape[0])
    title = 22
    columns = max(1, min(columns, len(maps)))
    rows = -(-len(maps) // columns)
    sheet = Image.new(
        "RGB", (columns * (size[0] + 8) + 8, rows * (size[1] + title + 8) + 8), "white"
    )
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    for k, (grid, label) in enumerate(zip(maps, labels)):
        x = 8 + (k % columns) * (size[0] + 8)
        y = 8 + (k // columns) * (size[1] + title + 8)
        draw.text((x, y), f"{k + 1}. {label}", fill="black", font=font)
        sheet.paste(Image.fromarray(overlay(small, grid)), (x, y + title))
    return sheet
