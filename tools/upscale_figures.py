"""The pictures of docs/upscale.md, from a ``fiancee upscale --compare-backbone --route-map`` output folder.

    fiancee upscale src/fiancee/weights/upscale/pipeline --photo astronaut --max-lpips 0.1 --compare-backbone \\
        --threads 1 --route-map --out out/astronaut_torch_t1
    python tools/upscale_figures.py out/astronaut_torch_t1 --photo astronaut --crop 180,60,96 --out docs

writes ``docs/upscale_astronaut_crop.jpg`` (one input crop: bicubic x4 | the backbone | routed, side by side)
and ``docs/upscale_astronaut_routes.jpg`` (which exit each tile took, the legend's colours as in
``fiancee.upscaling.ROUTE_COLOURS``). Only pictures: every figure the docs state comes from a result file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fiancee.tasks.upscale import photo_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a fiancee upscale output folder (with --compare-backbone and --route-map)")
    p.add_argument("--photo", required=True, help="the shipped photo it upscaled (e.g. astronaut)")
    p.add_argument("--crop", default="180,60,96", help="x,y,side of the input crop (default 180,60,96)")
    p.add_argument("--out", default="docs", help="folder for the two JPEGs (default docs)")
    args = p.parse_args(argv)
    folder, name = Path(args.folder), args.photo
    x, y, side = (int(v) for v in args.crop.split(","))
    photo = Image.open(photo_path(name)).convert("RGB")
    crop = photo.crop((x, y, x + side, y + side))
    s = 4
    box = (s * x, s * y, s * (x + side), s * (y + side))
    panels = [
        crop.resize((s * side, s * side), Image.BICUBIC),
        Image.open(folder / f"{name}_x{s}_backbone.png").crop(box),
        Image.open(folder / f"{name}_x{s}.png").crop(box),
    ]
    strip = Image.new("RGB", (3 * s * side + 16, s * side), "white")
    for i, panel in enumerate(panels):
        strip.paste(panel, (i * (s * side + 8), 0))
    out = Path(args.out)
    strip.save(out / f"upscale_{name}_crop.jpg", quality=88)
    routes = Image.open(folder / f"{name}_routes.png")
    routes.resize((routes.width // 2, routes.height // 2), Image.BILINEAR).save(
        out / f"upscale_{name}_routes.jpg", quality=88
    )
    print(out / f"upscale_{name}_crop.jpg", out / f"upscale_{name}_routes.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
