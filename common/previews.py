"""PNG previews a person can look at: the images of one sample side by side, grey-scale.

For 3D images the grid has one row per orthogonal view (axial, coronal, sagittal central slice) and one column
per image, in the order of the ``images`` dict; 2D images make a single row. A header strip of
:data:`HEADER_HEIGHT` pixels above the grid names each column (PIL's default bitmap font, ``_`` read as a space,
wrapped onto up to :data:`HEADER_LINES` lines, a line too wide for its column cut short with a "."). The full
column names are also stored in the PNG's ``columns`` text chunk, and the view names in ``rows``.

Spatial axes are read in MONAI's layout after ``Orientation("RAS")``: (x: right-left, y: posterior-anterior,
z: inferior-superior). Views are shown with anterior (axial) or superior (coronal, sagittal) up.

Written by the training snapshots (:class:`common.engine.ReconstructionSnapshots`) and the slice export
(:class:`common.transforms.SaveReconstructionPngd`); it imports nothing of ``common``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

VIEWS = ("axial", "coronal", "sagittal")
LINE_HEIGHT = 11  # pixels of a line of PIL's default bitmap font
HEADER_LINES = 2  # lines of a column's name in the header
HEADER_HEIGHT = HEADER_LINES * LINE_HEIGHT + 2  # pixels of the header strip above the grid, whatever the upscale
HEADER_BACKGROUND = 64  # grey of the header strip; its text is white (255)


def _central_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal central slices of an (x, y, z) volume, as (rows, columns) images."""
    x, y, z = (size // 2 for size in volume.shape)
    return [volume[:, :, z].T[::-1], volume[:, y, :].T[::-1], volume[x, :, :].T[::-1]]


def _fit(text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` if it fits ``width`` pixels in ``font``, else its longest start that fits with a "." appended."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + ".") > width:
        text = text[:-1]
    return text.rstrip() + "."


def column_label_lines(name: str, width: int, font: ImageFont.ImageFont) -> list[str]:
    """A column name as at most :data:`HEADER_LINES` lines that fit ``width`` pixels in ``font``.

    The name's words (split at ``_`` and spaces) fill a line while they fit, so ``"level1_reconstruction"`` in a
    narrow column reads "level1" over "reconstruction"; the last line takes the words left, and a line still too
    wide is cut short (:func:`_fit`).

    Args:
        name: the column name.
        width: pixels of the column.
        font: the font the lines are drawn in.
    """
    lines: list[str] = []
    for word in name.replace("_", " ").split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > HEADER_LINES:
        lines[HEADER_LINES - 1 :] = [" ".join(lines[HEADER_LINES - 1 :])]
    return [_fit(line, width, font) for line in lines]


def _column_header(names: list[str], column_width: int) -> np.ndarray:
    """The header strip naming the columns of a grid, white text centred over each column.

    Args:
        names: the column names, left to right.
        column_width: pixels of each column.

    Returns:
        ``(HEADER_HEIGHT, len(names) x column_width)`` uint8 grey-scale pixels.
    """
    header = Image.new("L", (len(names) * column_width, HEADER_HEIGHT), HEADER_BACKGROUND)
    draw = ImageDraw.Draw(header)
    font = ImageFont.load_default_imagefont()
    for col, name in enumerate(names):
        lines = column_label_lines(name, column_width, font)
        top = (HEADER_HEIGHT - len(lines) * LINE_HEIGHT) // 2
        for row, line in enumerate(lines):
            left = col * column_width + (column_width - int(font.getlength(line))) // 2
            draw.text((left, top + row * LINE_HEIGHT), line, fill=255, font=font)
    return np.asarray(header)


def orthogonal_slices_png(
    images: Mapping[str, torch.Tensor],
    path: str | Path,
    upscale: int = 2,
    intensity: Sequence[float] | None = None,
) -> Path:
    """Write the images of one sample side by side as a grey-scale PNG.

    Args:
        images: ``{name: tensor}`` of one sample, each channel first: (C, x, y, z) for 3D or (C, H, W) for 2D
            (channel 0 is shown), values clipped to [0, 1] (NaN shown as 0). Images of different sizes are
            centred in tiles of the largest size.
        path: the PNG to write; its folder is created.
        upscale: integer nearest-neighbour magnification, so that small crops are visible.
        intensity: ``(mean, std)`` the images were normalised with, ``(x - mean) / std``: shown as ``x`` (values
            ``* std + mean``); None: shown as they are.

    Returns:
        ``path``. Its pixel size is (HEADER_HEIGHT + views x tile height x upscale, images x tile width x upscale),
        with 3 views for 3D images and 1 for 2D; the grid starts below the column names' header strip.

    Raises:
        ValueError: no images, or not all of them (C, H, W) or all (C, x, y, z).
    """
    mean, std = (0.0, 1.0) if intensity is None else (float(value) for value in intensity)
    arrays = [np.asarray(torch.as_tensor(image).detach().float().cpu())[0] * std + mean for image in images.values()]
    if not arrays or {array.ndim for array in arrays} not in ({2}, {3}):
        shapes = {name: tuple(image.shape) for name, image in images.items()}
        raise ValueError(f"expected images of one sample, all (C, H, W) or all (C, x, y, z); got {shapes}")
    columns = [_central_slices(array) if array.ndim == 3 else [array] for array in arrays]
    tile_h = max(tile.shape[0] for column in columns for tile in column)
    tile_w = max(tile.shape[1] for column in columns for tile in column)
    grid = np.zeros((len(columns[0]) * tile_h, len(columns) * tile_w), dtype=np.float32)
    for col, column in enumerate(columns):
        for row, tile in enumerate(column):
            top = row * tile_h + (tile_h - tile.shape[0]) // 2
            left = col * tile_w + (tile_w - tile.shape[1]) // 2
            grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    pixels = np.round(np.clip(np.nan_to_num(grid), 0.0, 1.0) * 255).astype(np.uint8)
    pixels = pixels.repeat(upscale, axis=0).repeat(upscale, axis=1)
    pixels = np.concatenate([_column_header(list(images), tile_w * upscale), pixels])
    info = PngInfo()
    info.add_text("columns", ", ".join(images))
    info.add_text("rows", ", ".join(VIEWS) if arrays[0].ndim == 3 else "2d")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=info)
    return path
