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

from .core.folders import UPSCALE, make_header
from .tiles import RowStitcher, check_tiling, tile_starts

__all__ = [
    "read_image",
    "upscale_array",
    "upscale_images",
    "format_upscale_summary",
    "seam_ratio",
    "tile_runner",
    "load_tile_pipeline",
    "compare_with_backbone",
    "peak_rss_mib",
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


class _TorchTiles:
    """Tiles through a :class:`fiancee.pipeline.FianceePipeline` (or its plain backbone, ``backbone_only``)."""

    runtime = "pytorch"

    def __init__(self, pipe, threshold: float, backbone_only: bool):
        import torch

        self.torch, self.pipe, self.threshold, self.backbone_only = torch, pipe, threshold, backbone_only
        probe = pipe.model.backbone.example_inputs(1)[0]
        self.tile, self.device, self.dtype = int(probe.shape[-1]), probe.device, probe.dtype
        self.route_macs = np.asarray([float(m) for m in pipe.route_macs.tolist()])
        self.threads = torch.get_num_threads()

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        torch = self.torch
        with torch.no_grad():
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).to(self.device, self.dtype) * 2 - 1  # [b, 3, t, t]
            if self.backbone_only:
                images = self.pipe.model.backbone(x)
                routes = np.full(len(tiles), len(self.route_macs) - 1, dtype=np.int64)
                charged = float(self.route_macs[-1]) * len(tiles)
            else:
                out = self.pipe(x, max_lpips=self.threshold)
                images, routes, charged = out.images, out.routes.cpu().numpy(), float(out.macs.sum())
            imgs = ((images.float().clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1).cpu().numpy()  # [b, st, st, 3]
        return imgs, routes, charged


class _OnnxTiles:
    """Tiles through an exported pipeline run by ONNX Runtime (:class:`fiancee.runtime.OnnxPipeline`, no torch).

    ``backbone_only`` forces every tile onto the backbone's route: the exported trunk segment also holds the
    predictor (``predictor_macs``, a few MMACs), which then runs unused; the baseline is charged the backbone
    alone."""

    runtime = "onnxruntime"

    def __init__(self, pipe, threshold: float, backbone_only: bool):
        self.pipe, self.threshold, self.backbone_only = pipe, threshold, backbone_only
        self.tile = int(pipe.inputs[0]["shape"][-1])
        self.route_macs = np.asarray(pipe.route_macs, dtype=np.float64)
        self.threads = pipe.threads

    def __call__(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        x = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32) * 2 - 1
        if self.backbone_only:
            forced = np.full(len(tiles), len(self.route_macs) - 1, dtype=np.int64)
            out = self.pipe(x, max_lpips=1.0, routes=forced)
            charged = float(self.route_macs[-1]) * len(tiles)
        else:
            out = self.pipe(x, max_lpips=self.threshold)
            charged = float(out.macs.sum())
        imgs = ((np.clip(out.images, -1, 1) + 1) * 0.5).transpose(0, 2, 3, 1)
        return imgs, np.asarray(out.routes, dtype=np.int64), charged


def load_tile_pipeline(folder: str | Path, *, threads: int | None = None, trust_task_code: bool = False):
    """A pipeline folder (:class:`fiancee.pipeline.FianceePipeline`, run by torch on ``threads`` threads) or its
    ONNX export (``fiancee export``: :class:`fiancee.runtime.OnnxPipeline`, without torch), by what it holds."""
    from .core.folders import ONNX, header
    from .core.jsonio import read_json

    folder = Path(folder)
    manifest = folder / "manifest.json"
    if manifest.is_file() and header(read_json(manifest))[0] == ONNX:
        from .runtime import OnnxPipeline

        return OnnxPipeline(folder, threads=threads)
    import torch

    from .pipeline import FianceePipeline

    if threads is not None:
        torch.set_num_threads(threads)
    return FianceePipeline.from_pretrained(folder, trust_task_code=trust_task_code)


def tile_runner(pipe, *, max_lpips: float = 1.0, backbone_only: bool = False):
    """What runs a batch of tiles ``[b, t, t, 3]`` (float32 in [0, 1]) through ``pipe`` (a FianceePipeline or
    an OnnxPipeline): ``runner(tiles) -> (images [b, st, st, 3] in [0, 1], routes [b], MACs charged)``;
    ``runner.tile`` is the tile side its predictor was trained on, ``runner.route_macs`` the routes' costs."""
    from .core.rules import check_threshold

    kind = _OnnxTiles if type(pipe).__name__ == "OnnxPipeline" else _TorchTiles
    return kind(pipe, check_threshold(max_lpips), backbone_only)


class _PhotoRun:
    """One photo through one tile runner, a row of tiles at a time: the stitched image so far, each tile's
    route, the MACs charged and the seconds the rows took (the runner and the stitching; not reading or
    writing files)."""

    def __init__(self, run, height: int, width: int, tile: int, overlap: int, rows: int, cols: int):
        self.run, self.height, self.width, self.tile, self.overlap = run, height, width, tile, overlap
        self.routes = np.zeros((rows, cols), dtype=np.int64)
        self.macs, self.seconds = 0.0, 0.0
        self.stitcher = self.scale = None

    def row(self, r: int, tiles: np.ndarray, xs: list[int], y0: int, next_y0: int | None, batch_size: int, progress):
        t0 = time.perf_counter()
        for i in range(0, len(xs), batch_size):
            imgs, taken, charged = self.run(tiles[i : i + batch_size])
            if self.stitcher is None:
                self.scale = imgs.shape[1] // self.tile
                self.stitcher = RowStitcher(self.height, self.width, self.tile, self.overlap, self.scale)
            for j, img in enumerate(imgs):
                self.stitcher.add(xs[i + j], img)
            self.routes[r, i : i + len(imgs)] = taken
            self.macs += charged
            if progress is not None:
                progress(len(imgs))
        self.stitcher.finish_row(y0, next_y0)
        self.seconds += time.perf_counter() - t0

    def result(self, starts: tuple[list[int], list[int]]) -> dict:
        return {
            "image": self.stitcher.out,
            "routes": self.routes,
            "starts": starts,
            "macs": self.macs,
            "backbone_macs": float(self.run.route_macs[-1]) * self.routes.size,
            "scale": self.scale,
            "seconds": self.seconds,
        }


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
    with_backbone: bool = False,
) -> dict:
    """Upscale ``image`` (float ``[H, W, 3]`` in [0, 1]) tile by tile through ``pipe`` at ``max_lpips``.

    ``pipe``: a :class:`fiancee.pipeline.FianceePipeline`, or an exported one run without torch
    (:class:`fiancee.runtime.OnnxPipeline`). Returns ``{"image": uint8 [sH, sW, 3], "routes": int [rows,
    cols], "starts": (ys, xs), "macs": float, "backbone_macs": float, "scale": int, "seconds": float}``;
    ``progress`` is called with the number of tiles done after each batch. ``backbone_only``: every tile through
    the plain backbone (no router). ``with_backbone``: also that baseline, tiled and blended the same way, as
    ``result["backbone"]`` (the same keys): the two run row by row in turn, so a change of the machine's speed
    during the photo (another process, a clock) slows both alike and their ratio of seconds holds.
    """
    runs = [tile_runner(pipe, max_lpips=max_lpips, backbone_only=backbone_only)]
    if with_backbone:
        runs.append(tile_runner(pipe, max_lpips=max_lpips, backbone_only=True))
    h, w = image.shape[:2]
    check_tiling(h, w, tile, overlap)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    photos = [_PhotoRun(run, h, w, tile, overlap, len(ys), len(xs)) for run in runs]
    for r, y0 in enumerate(ys):
        row = np.stack([image[y0 : y0 + tile, x0 : x0 + tile] for x0 in xs]).astype(np.float32)  # [cols, t, t, 3]
        next_y0 = ys[r + 1] if r + 1 < len(ys) else None
        for photo in photos:
            photo.row(r, row, xs, y0, next_y0, batch_size, progress)
    out = photos[0].result((ys, xs))
    if with_backbone:
        out["backbone"] = photos[1].result((ys, xs))
    return out


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
    compare_backbone: bool = False,
    progress: bool = True,
) -> dict:
    """Upscale every image of ``paths`` through ``pipe`` into the folder ``out`` (written whole).

    ``pipe``: a FianceePipeline or an exported OnnxPipeline (torch-free). Every image is read and checked
    first (one line naming the file and what was expected), before any tile is computed. ``tile`` defaults
    to the pipeline's own (its predictor reads that tile's features). ``compare_backbone``: each photo is
    also upscaled by the backbone alone, tiled and blended the same way (written as ``NAME_x<s>_backbone.png``),
    and the summary compares the two (LPIPS and PSNR of the routed photo against the backbone's, the seams of
    both, seconds of both).
    """
    from .checks import check_counts
    from .core.rules import check_threshold
    from .io import atomic_folder, write_json

    threshold = check_threshold(max_lpips)
    check_counts(batch_size=batch_size)
    runner = tile_runner(pipe)  # what the pipeline is: its tile, runtime, threads and route costs
    own = runner.tile
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
        "batch_size": batch_size,
        "runtime": runner.runtime,
        "threads": runner.threads,
        "route_macs": [float(m) for m in runner.route_macs],
        "images": [],
    }
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap)) for _, (h, w) in images)
        bar = tqdm(total=total * (2 if compare_backbone else 1), desc="tiles", unit="tile", dynamic_ncols=True)
    settings = dict(max_lpips=threshold, tile=tile, overlap=overlap, batch_size=batch_size, max_pixels=max_pixels)
    with atomic_folder(out, kind=UPSCALE, what="upscale output") as tmp:
        for path, _ in images:
            entry = _upscale_file(
                pipe,
                path,
                tmp,
                **settings,
                write_route_map=write_route_map,
                compare_backbone=compare_backbone,
                num_routes=len(summary["route_macs"]),
                progress=None if bar is None else bar.update,
            )
            summary["images"].append(entry)
        summary["peak_rss_mib"] = peak_rss_mib()
        write_json(tmp / "summary.json", summary)
    if bar is not None:
        bar.close()
    return summary


def peak_rss_mib() -> float | None:
    """The peak resident memory of this process so far, in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


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
    compare_backbone: bool,
    num_routes: int,
    progress,
) -> dict:
    """One photo upscaled into ``folder`` (``NAME_x<s>.png``, and ``NAME_routes.png`` with ``write_route_map``);
    returns its entry of the summary."""
    from PIL import Image

    arr = read_image(path, max_pixels)
    settings = dict(tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)
    res = upscale_array(pipe, arr, max_lpips=max_lpips, with_backbone=compare_backbone, **settings)
    s = res["scale"]
    Image.fromarray(res["image"]).save(folder / f"{path.stem}_x{s}.png")
    if write_route_map:
        routes_png = route_map(arr, res["routes"], res["starts"], tile, overlap)
        Image.fromarray(routes_png).save(folder / f"{path.stem}_routes.png")
    counts = np.bincount(res["routes"].ravel(), minlength=num_routes)
    entry = {
        "name": path.name,
        "size": [int(arr.shape[1]), int(arr.shape[0])],
        "tiles": int(res["routes"].size),
        "route_shares": [round(float(c) / res["routes"].size, 4) for c in counts],
        "macs": res["macs"],
        "backbone_macs": res["backbone_macs"],
        "macs_saved": 1.0 - res["macs"] / res["backbone_macs"],
        "seconds": round(res["seconds"], 3),
        "routes": res["routes"].tolist(),
    }
    if compare_backbone:
        base = res["backbone"]
        Image.fromarray(base["image"]).save(folder / f"{path.stem}_x{s}_backbone.png")
        entry["backbone"] = compare_with_backbone(res, base, tile, overlap)
    return entry


def compare_with_backbone(res: dict, base: dict, tile: int, overlap: int) -> dict:
    """A routed photo (an :func:`upscale_array` result) against the backbone's, tiled the same way: LPIPS and
    PSNR of the whole photo (the backbone's is the reference, as for every exit), the seam ratio of both, the
    seconds of both and the speed-up. LPIPS needs torch; without it (an ONNX-only install) it is None."""
    a, b = res["image"].astype(np.float64), base["image"].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    seconds, base_seconds = res["seconds"], base["seconds"]
    return {
        "seconds": round(base_seconds, 3),
        "speedup": round(base_seconds / seconds, 3) if seconds > 0 else None,
        "psnr_db": round(10 * np.log10(255.0**2 / mse), 3) if mse > 0 else 100.0,
        "lpips": _whole_image_lpips(res["image"], base["image"]),
        "seam_ratio": round(seam_ratio(res["image"], res["starts"], tile, overlap, res["scale"]), 4),
        "backbone_seam_ratio": round(seam_ratio(base["image"], base["starts"], tile, overlap, base["scale"]), 4),
    }


def _whole_image_lpips(image: np.ndarray, reference: np.ndarray) -> float | None:
    """LPIPS (AlexNet, the project's default) between two uint8 ``[H, W, 3]`` images, whole."""
    try:
        import torch

        from .metrics.lpips import lpips
    except ImportError:
        return None

    def tensor(a: np.ndarray):
        return torch.from_numpy(a).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)

    with torch.no_grad():
        return round(float(lpips(tensor(image), tensor(reference)).reshape(-1)[0]), 5)


def format_upscale_summary(summary: dict) -> str:
    """What ``fiancee upscale`` prints: one line per image of an :func:`upscale_images` summary."""
    return "\n".join(
        f"{im['name']}: {im['size'][0]}x{im['size'][1]}, {im['tiles']} tiles, MACs saved {im['macs_saved']:.1%} "
        f"vs the backbone on the same tiles, exit shares {' / '.join(f'{s:.0%}' for s in im['route_shares'])} "
        f"(backbone last), {im['seconds']:.1f} s"
        for im in summary["images"]
    )
