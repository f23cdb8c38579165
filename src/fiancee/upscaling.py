"""``fiancee upscale``: whole photos through a routed tile pipeline (per-tile conditional exits).

Each photo is cut into overlapping tiles (:mod:`fiancee.tiles`); the pipeline's predictor reads every
tile's key-stage features, the router picks each tile's exit for the threshold, the mixed-exit tree runs
the tiles in batches, and overlapping outputs are blended without seams. Tile rows are processed one at a
time, so memory is bounded by one row of tiles and the output image. Writes, per photo,
``<name>_x<s>.png`` and with ``route_map`` ``<name>_routes.png`` (which exit each tile took), and
``summary.json`` (tiles, route shares, MACs charged against the backbone tiled the same way). The
folder is written whole (built aside and swapped in).

Images are read as users expect: greyscale is repeated to RGB, an alpha channel is dropped, 16-bit
images are scaled to [0, 1] from 65535; the output is 8-bit RGB.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .core.folders import UPSCALE, make_header
from .tiles import RowStitcher, check_tiling, tile_starts

__all__ = [
    "read_image",
    "upscale_array",
    "upscale_images",
    "format_upscale_summary",
    "seam_ratio",
    "ROUTE_COLOURS",
    "MAX_PIXELS",
]

MAX_PIXELS = 16_000_000  # input pixels accepted by default (a 4000x4000 photo -> 16000x16000, 768 MB out)
# exit 1, 2, 3, ..., backbone last (the route map's legend)
ROUTE_COLOURS = np.array(
    [[46, 160, 67], [160, 200, 40], [250, 190, 30], [240, 110, 30], [200, 40, 40], [120, 40, 160]], dtype=np.float32
)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image at ``path`` as float32 ``[H, W, 3]`` RGB in [0, 1], or one line saying why not.

    Refused: not an image, a truncated file, more than ``max_pixels`` pixels (checked from the header,
    before decoding: a decompression bomb never gets decoded).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(
                    f"{path} is {w}x{h} = {w * h:,} pixels, more than the {max_pixels:,} accepted "
                    "(--max-pixels raises the limit)"
                )
            im.load()  # a truncated file fails here
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                grey = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(np.clip(grey, 0, 1)[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # alpha dropped, grey repeated
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image PIL can read (expected PNG, JPEG, TIFF, WebP, ...)") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"{path} could not be decoded ({' '.join(str(e).split())}): a truncated or damaged file?"
        ) from None
    return np.ascontiguousarray(arr)


def _pipeline_tile(pipe) -> int:
    """The tile side the pipeline's predictor was trained on (its key-stage features' size x the stride)."""
    return int(pipe.model.backbone.example_inputs(1)[0].shape[-1])


@torch.no_grad()
def upscale_array(
    pipe,
    image: np.ndarray,
    *,
    max_lpips: float,
    tile: int,
    overlap: int,
    batch_size: int = 16,
    progress=None,
    backbone_only: bool = False,
) -> dict:
    """Upscale ``image`` (float ``[H, W, 3]`` in [0, 1]) tile by tile through ``pipe`` at ``max_lpips``.

    Returns ``{"image": uint8 [sH, sW, 3], "routes": int [rows, cols], "starts": (ys, xs), "macs": float,
    "backbone_macs": float}``; ``progress`` is called with the number of tiles done after each batch.
    ``backbone_only``: every tile through the plain backbone (no predictor, no router): the baseline a
    routed photo is compared with, tiled and blended the same way.
    """
    from .routing import check_threshold

    threshold = check_threshold(max_lpips)
    h, w = image.shape[:2]
    check_tiling(h, w, tile, overlap)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    probe = pipe.model.backbone.example_inputs(1)[0]
    scale = None
    routes = np.zeros((len(ys), len(xs)), dtype=np.int64)
    macs = 0.0
    stitcher = None
    device = probe.device
    for r, y0 in enumerate(ys):
        row = np.stack([image[y0 : y0 + tile, x0 : x0 + tile] for x0 in xs])  # [cols, t, t, 3]
        x = torch.from_numpy(row).permute(0, 3, 1, 2).to(device, probe.dtype) * 2 - 1  # [cols, 3, t, t]
        for i in range(0, len(xs), batch_size):
            if backbone_only:
                images = pipe.model.backbone(x[i : i + batch_size])
                taken = torch.full((images.shape[0],), len(pipe.route_macs) - 1, dtype=torch.int64)
                charged = pipe.route_macs[-1] * images.shape[0]
            else:
                out = pipe(x[i : i + batch_size], max_lpips=threshold)
                images, taken, charged = out.images, out.routes, out.macs.sum()
            imgs = ((images.float().clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1).cpu().numpy()  # [b, st, st, 3]
            if stitcher is None:
                scale = imgs.shape[1] // tile
                stitcher = RowStitcher(h, w, tile, overlap, scale)
            for j, img in enumerate(imgs):
                stitcher.add(xs[i + j], img)
            routes[r, i : i + len(imgs)] = taken.numpy()
            macs += float(charged)
            if progress is not None:
                progress(len(imgs))
        stitcher.finish_row(y0, ys[r + 1] if r + 1 < len(ys) else None)
    backbone = float(pipe.route_macs[-1]) * routes.size
    return {
        "image": stitcher.out,
        "routes": routes,
        "starts": (ys, xs),
        "macs": macs,
        "backbone_macs": backbone,
        "scale": scale,
    }


def seam_ratio(image: np.ndarray, starts: tuple[list[int], list[int]], tile: int, overlap: int, scale: int) -> float:
    """How visible the tile borders are in a stitched ``image`` (uint8 ``[sH, sW, C]``): the mean absolute
    step between neighbouring output pixels across the lines where one tile's blend hands over to the next
    (the middle of every overlap), over the mean step across all other lines. About 1: no seam; a hard
    seam raises it. Compared between a routed photo and the backbone's, tiled the same way."""
    img = image.astype(np.float32)
    dx = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))  # [sW - 1]: step between columns c and c + 1
    dy = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))  # [sH - 1]
    ys, xs = starts

    def lines(starts_1d: list[int], steps: np.ndarray) -> tuple[float, float]:
        # the hand-over line between tile k-1 and tile k: the middle of their overlap, in output pixels
        cut = {int(round((a + tile + b) / 2 * scale)) - 1 for a, b in zip(starts_1d[:-1], starts_1d[1:])}
        cut = {c for c in cut if 0 <= c < len(steps)}
        on = steps[sorted(cut)] if cut else np.zeros(0)
        off = np.delete(steps, sorted(cut))
        return float(on.sum()), float(len(on)), float(off.mean()) if len(off) else 0.0

    on_x, n_x, off_x = lines(xs, dx)
    on_y, n_y, off_y = lines(ys, dy)
    if n_x + n_y == 0:
        return 1.0  # one tile: no border
    base = (off_x + off_y) / 2
    return float((on_x + on_y) / (n_x + n_y) / base) if base > 0 else 1.0


def route_map(
    image: np.ndarray, routes: np.ndarray, starts: tuple[list[int], list[int]], tile: int, overlap: int
) -> np.ndarray:
    """A picture of which exit each tile took: the photo in grey under each tile's colour (its own part of
    the grid: the tile minus half the overlap on each side shared with a neighbour)."""
    grey = image.mean(axis=2, keepdims=True)
    colour = np.zeros_like(image)
    ys, xs = starts
    half = overlap // 2
    for r, y0 in enumerate(ys):
        for c, x0 in enumerate(xs):
            a = y0 + (half if r else 0)
            b = x0 + (half if c else 0)
            colour[a : y0 + tile, b : x0 + tile] = ROUTE_COLOURS[min(routes[r, c], len(ROUTE_COLOURS) - 1)] / 255.0
    return np.clip(np.rint((0.45 * grey + 0.55 * colour) * 255), 0, 255).astype(np.uint8)


def upscale_images(
    pipe,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    max_lpips: float,
    tile: int | None = None,
    overlap: int = 4,
    batch_size: int = 16,
    write_route_map: bool = False,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
) -> dict:
    """Upscale every image of ``paths`` through ``pipe`` into the folder ``out`` (written whole).

    Every image is read and checked first (one line naming the file and what was expected), before any tile
    is computed. ``tile`` defaults to the pipeline's own (its predictor reads that tile's features).
    """
    from .checks import check_counts
    from .io import atomic_folder, write_json
    from .routing import check_threshold

    threshold = check_threshold(max_lpips)
    check_counts(batch_size=batch_size)
    own = _pipeline_tile(pipe)
    tile = own if tile is None else tile
    if tile != own:
        raise ValueError(f"--tile must be {own}, the tile the pipeline's predictor was trained on; got {tile}")
    if not paths:
        raise ValueError("give at least one image")
    images = _check_images(paths, out, tile, overlap, max_pixels)
    summary = {
        **make_header(UPSCALE, 1),
        "max_lpips": threshold,
        "tile": tile,
        "overlap": overlap,
        "route_macs": [float(m) for m in pipe.route_macs.tolist()],
        "images": [],
    }
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap)) for _, (h, w) in images)
        bar = tqdm(total=total, desc="tiles", unit="tile", dynamic_ncols=True)
    with atomic_folder(out, kind=UPSCALE, what="upscale output") as tmp:
        for path, _ in images:
            summary["images"].append(
                _upscale_file(
                    pipe,
                    path,
                    tmp,
                    max_lpips=threshold,
                    tile=tile,
                    overlap=overlap,
                    batch_size=batch_size,
                    max_pixels=max_pixels,
                    write_route_map=write_route_map,
                    num_routes=len(summary["route_macs"]),
                    progress=None if bar is None else bar.update,
                )
            )
        write_json(tmp / "summary.json", summary)
    if bar is not None:
        bar.close()
    return summary


def _check_images(
    paths: Sequence[str | Path], out: str | Path, tile: int, overlap: int, max_pixels: int
) -> list[tuple[Path, tuple[int, int]]]:
    """``(path, (height, width))`` of every image, each read and checked (readable, small enough, tileable, a
    name of its own in ``out``) before any tile is computed; no photo is kept in memory."""
    images = []
    names = set()
    for p in paths:
        arr = read_image(p, max_pixels)
        check_tiling(arr.shape[0], arr.shape[1], tile, overlap)
        name = Path(p).stem
        if name in names:
            raise ValueError(f"two images are named {name!r}: their outputs would collide in {out}")
        names.add(name)
        images.append((Path(p), arr.shape[:2]))
        del arr  # read again below, one at a time: memory holds one photo
    return images


def _upscale_file(
    pipe,
    path: Path,
    folder: Path,
    *,
    max_lpips: float,
    tile: int,
    overlap: int,
    batch_size: int,
    max_pixels: int,
    write_route_map: bool,
    num_routes: int,
    progress,
) -> dict:
    """One photo upscaled into ``folder`` (``NAME_x<s>.png``, and ``NAME_routes.png`` with ``write_route_map``);
    returns its entry of the summary."""
    from PIL import Image

    arr = read_image(path, max_pixels)
    t0 = time.perf_counter()
    res = upscale_array(
        pipe, arr, max_lpips=max_lpips, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress
    )
    seconds = time.perf_counter() - t0
    s = res["scale"]
    Image.fromarray(res["image"]).save(folder / f"{path.stem}_x{s}.png")
    if write_route_map:
        routes_png = route_map(arr, res["routes"], res["starts"], tile, overlap)
        Image.fromarray(routes_png).save(folder / f"{path.stem}_routes.png")
    counts = np.bincount(res["routes"].ravel(), minlength=num_routes)
    return {
        "name": path.name,
        "size": [int(arr.shape[1]), int(arr.shape[0])],
        "tiles": int(res["routes"].size),
        "route_shares": [round(float(c) / res["routes"].size, 4) for c in counts],
        "macs": res["macs"],
        "backbone_macs": res["backbone_macs"],
        "macs_saved": 1.0 - res["macs"] / res["backbone_macs"],
        "seconds": round(seconds, 3),
        "routes": res["routes"].tolist(),
    }


def format_upscale_summary(summary: dict) -> str:
    """What ``fiancee upscale`` prints: one line per image of an :func:`upscale_images` summary."""
    return "\n".join(
        f"{im['name']}: {im['size'][0]}x{im['size'][1]}, {im['tiles']} tiles, MACs saved {im['macs_saved']:.1%} "
        f"vs the backbone on the same tiles, exit shares {' / '.join(f'{s:.0%}' for s in im['route_shares'])} "
        f"(backbone last), {im['seconds']:.1f} s"
        for im in summary["images"]
    )
