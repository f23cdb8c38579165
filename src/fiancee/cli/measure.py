"""``fiancee macs`` and ``fiancee lpips``: the paper's cost of a reference backbone's routes, and one LPIPS distance."""

from __future__ import annotations

import argparse
import json

from ._args import choice_option, json_option, lpips_nets, reference_backbones, size_option, weights_option


def register(sub) -> None:
    p = sub.add_parser(
        "macs",
        help="MACs of the backbone and of every exit route",
        description="MACs per route (FLOPs / 2, the paper's 'GFLOPs'), next to the paper's numbers.",
        epilog="example: fiancee macs --backbone oasis --scale 1/4 --min-channels 64 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    choice_option(p, "--backbone", names=reference_backbones, required=True)
    p.add_argument("--scale", default="1/4", help="branch width scale factor SF, e.g. 1/4 (default)")
    p.add_argument("--min-channels", type=int, default=64, help="channel floor of the scale rule (default 64)")
    size_option(p, default="paper", help="reference configuration (default paper)")
    json_option(p, help="print JSON (keys backbone_gmacs, routes, ...)")
    p.set_defaults(func=run_macs)

    p = sub.add_parser(
        "lpips",
        help="LPIPS distance between two images",
        description="LPIPS v0.1 (Zhang et al. 2018) with ImageNet weights; prints the distance on the last line.",
        epilog="example: fiancee lpips tests/fixtures/lpips/ex_ref.png tests/fixtures/lpips/ex_p0.png --net alex",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", help="first image (PNG, JPEG, ...)")
    p.add_argument("b", help="second image, same size as the first")
    choice_option(p, "--net", names=lpips_nets, default="alex")
    weights_option(p, help="optional folder of PyTorch-format weights (see docs/metrics.md)")
    p.set_defaults(func=run_lpips)


def run_macs(args: argparse.Namespace) -> int:
    from ..paper import format_macs_table, macs_table

    table = macs_table(args.backbone, args.scale, args.min_channels, size=args.size)
    print(json.dumps(table, indent=2) if args.json else format_macs_table(table))
    return 0


def run_lpips(args: argparse.Namespace) -> int:
    from ..metrics.lpips import lpips_files

    d = lpips_files(args.a, args.b, net=args.net, weights=args.weights)
    print(f"{d:.4f}")
    return 0
