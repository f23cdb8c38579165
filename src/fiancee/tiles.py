"""Tiling a large image for a tile-wise generator (an upscaler) and stitching its outputs without seams.

A photo is cut into overlapping ``tile x tile`` tiles on a grid whose last row and column are moved flush
with the border (so every pixel is covered and no tile is padded). Each output tile is weighted by a
ramp that rises linearly over ``overlap * scale`` output pixels from each of its edges; overlapping
outputs are averaged with those weights (normalised by their sum), so neighbouring tiles hand over
smoothly instead of meeting at a hard edge. Rows of tiles are stitched one at a time into a band the
height of one output tile: memory is bounded by a tile row, whatever the photo's height.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tile_starts", "check_tiling", "ramp", "RowStitcher"]


def check_tiling(height: int, width: int, tile: int, overlap: int) -> None:
    """One line naming what was expected unless ``tile`` / ``overlap`` can tile a ``height x width`` image."""
    for name, v in (("tile", tile), ("overlap", overlap)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer; got {v!r}")
    if tile < 4:
        raise ValueError(f"tile must be at least 4 pixels; got {tile}")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must lie in 0..{tile // 2} pixels for tile {tile}; got {overlap}")
    if min(height, width) < tile:
        raise ValueError(
            f"the image is {width}x{height} pixels, smaller than one {tile}x{tile} tile: "
            f"pass a smaller --tile (at least 4) or a larger image"
        )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one side: stride ``tile - overlap``, the last one flush with the end."""
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def ramp(size: int, fade: int) -> np.ndarray:
    """Blend weight along one side of an output tile: rises over ``fade`` pixels from both edges, 1 inside.

    Never zero, so a pixel covered by one tile only (the photo's border) keeps its value after normalising.
    """
    i = np.arange(size, dtype=np.float32)
    if fade <= 0:
        return np.ones(size, dtype=np.float32)
    return np.minimum(np.minimum(i + 0.5, size - i - 0.5) / fade, 1.0).astype(np.float32)


class RowStitcher:
    """Accumulates the output tiles of one tile row at a time into an ``[H*s, W*s, C]`` uint8 image.

    ``add(x0, tile_image)`` for every tile of the current row (``tile_image [t*s, t*s, C]`` float in
    [0, 1]), then ``finish_row(y0, next_y0)``: the output rows no later tile row reaches are normalised,
    written and dropped from the band. ``out`` is the finished image once the last row is finished.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int, scale: int, channels: int = 3):
        self.scale, self.tile = scale, tile
        self.out = np.zeros((height * scale, width * scale, channels), dtype=np.uint8)
        t = tile * scale
        self.acc = np.zeros((t, width * scale, channels), dtype=np.float32)  # the current band
        self.wsum = np.zeros((t, width * scale, 1), dtype=np.float32)
        w = ramp(t, overlap * scale)
        self.weight = (w[:, None] * w[None, :])[:, :, None]  # [t, t, 1]
        self.top = 0  # output row of the band's first row

    def add(self, x0: int, image: np.ndarray) -> None:
        t, s = self.tile * self.scale, self.scale
        if image.shape[:2] != (t, t):
            raise ValueError(f"an output tile must be {t}x{t}; got {list(image.shape)}")
        self.acc[:, x0 * s : x0 * s + t] += image * self.weight
        self.wsum[:, x0 * s : x0 * s + t] += self.weight

    def finish_row(self, y0: int, next_y0: int | None) -> None:
        """Write the band's rows above the next tile row (all of them after the last row), then shift."""
        s, t = self.scale, self.tile * self.scale
        if y0 * s != self.top:
            raise ValueError(f"rows must be finished in order: expected tile row at {self.top // s}, got {y0}")
        done = t if next_y0 is None else (next_y0 - y0) * s
        rows = self.acc[:done] / self.wsum[:done]
        self.out[self.top : self.top + done] = np.clip(np.rint(rows * 255.0), 0, 255).astype(np.uint8)
        # shift the band up: what the next row still adds to stays, the rest starts at zero
        self.acc[: t - done] = self.acc[done:].copy()
        self.wsum[: t - done] = self.wsum[done:].copy()
        self.acc[t - done :] = 0
        self.wsum[t - done :] = 0
        self.top += done
