"""The ``fiancee`` command line. It only parses: each subcommand calls one library function.

Errors a user can cause (bad arguments, missing files, wrong shapes) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its one-line style
        self.exit(2, f"{self.prog}: error: {message}\n")


def _macs(args: argparse.Namespace) -> int:
    from .metrics.macs import macs_table

    table = macs_table(args.backbone, args.scale, args.min_channels, size=args.size)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    paper_routes = table["paper_routes"] or [None] * len(table["routes"])
    print(f"{table['backbone']} ({table['size']}), scale {table['scale']}, min channels {table['min_channels']}")
    print(f"unit: {table['unit']}")
    print(f"{'route':<22}{'GMACs':>10}{'paper':>10}{'vs backbone':>14}")
    rows = [(f"exit after stage {k}", g, p) for k, g, p in zip(table["exits_after_stages"], table["routes"], paper_routes)]
    rows.append(("backbone", table["backbone_gmacs"], table["paper_backbone_gmacs"]))
    for name, g, p in rows:
        paper = f"{p:>10.0f}" if p is not None else f"{'-':>10}"
        print(f"{name:<22}{g:>10.1f}{paper}{g / table['backbone_gmacs']:>14.3f}")
    return 0


def _lpips(args: argparse.Namespace) -> int:
    from .metrics.lpips import lpips_files

    d = lpips_files(args.a, args.b, net=args.net, weights=args.weights)
    print(f"{d:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fiancee", description="Conditional early exits for trained image generators.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "macs", help="MACs of the backbone and of every exit route",
        description="MACs per route (FLOPs / 2, the paper's 'GFLOPs'), next to the paper's numbers.",
        epilog="example: fiancee macs --backbone oasis --scale 1/4 --min-channels 64 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backbone", choices=["oasis", "g2d"], required=True)
    p.add_argument("--scale", default="1/4", help="branch width scale factor SF, e.g. 1/4 (default)")
    p.add_argument("--min-channels", type=int, default=64, help="channel floor of the scale rule (default 64)")
    p.add_argument("--size", choices=["paper", "tiny"], default="paper", help="reference configuration (default paper)")
    p.add_argument("--json", action="store_true", help="print JSON (keys backbone_gmacs, routes, ...)")
    p.set_defaults(func=_macs)

    p = sub.add_parser(
        "lpips", help="LPIPS distance between two images",
        description="LPIPS v0.1 (Zhang et al. 2018) with ImageNet weights; prints the distance on the last line.",
        epilog="example: fiancee lpips ex_ref.png ex_p0.png --net alex",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", help="first image (PNG, JPEG, ...)")
    p.add_argument("b", help="second image, same size as the first")
    p.add_argument("--net", choices=["alex", "vgg"], default="alex")
    p.add_argument("--weights", default=None, help="optional folder of PyTorch-format weights (see docs/metrics.md)")
    p.set_defaults(func=_lpips)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as e:
        print(f"fiancee {args.command}: error: {e}", file=sys.stderr)
        return 2
