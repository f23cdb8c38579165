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


def _train_backbone(args: argparse.Namespace) -> int:
    from .train.backbone import load_train_config, train_backbone

    config = load_train_config(args.config, seed=args.seed, steps=args.steps, train_limit=args.train_limit)
    summary = train_backbone(config, args.out, data=args.data, resume=args.resume, device=args.device)
    print(json.dumps(summary))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .tasks import get_task, write_samples

    task = get_task(args.task, data=args.data, weights=args.weights)
    print(json.dumps(write_samples(task, args.out, n=args.n, seed=args.seed)))
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    from .tasks.fashion import train_label_classifier

    print(json.dumps(train_label_classifier(args.out, data=args.data, seed=args.seed, epochs=args.epochs)))
    return 0


def _evaluate_backbone(args: argparse.Namespace) -> int:
    from .tasks.fashion import evaluate_fashion_backbone

    result = evaluate_fashion_backbone(weights=args.weights, data=args.data, n=args.n, seed=args.seed,
                                       fid=not args.no_fid, out=args.out)
    print(json.dumps(result))
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
    p = sub.add_parser(
        "train-backbone", help="train the fashion backbone (OASIS recipe)",
        description="Train the OASIS generator of task 'fashion' on Fashion-MNIST label maps: U-Net segmentation "
                    "discriminator with balanced N+1-class cross-entropy, LabelMix, EMA, Adam(0, 0.999). "
                    "The run folder holds config.json, stats.jsonl, checkpoint.safetensors and backbone/.",
        epilog="example: fiancee train-backbone --task fashion --config configs/fashion_backbone.json "
               "--out runs/fashion_backbone --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["fashion"], required=True, help="only fashion is trained (faces is pretrained)")
    p.add_argument("--config", required=True, help="training config JSON (e.g. configs/fashion_backbone.json)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--steps", type=int, default=None, help="overrides the config's step count")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--data", default=None, help="folder with the Fashion-MNIST idx .gz files (else $FIANCEE_DATA, "
                                                 "else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_train_backbone)

    p = sub.add_parser(
        "sample", help="write backbone samples of a task as PNG files and a grid",
        description="N backbone images of a task (faces: z ~ N(0, I); fashion: label maps of the test set + noise).",
        epilog="example: fiancee sample --task faces --out out/faces --n 16 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["faces", "fashion"], required=True)
    p.add_argument("--out", required=True, help="folder for sample_*.png and grid.png")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="fashion: folder with the idx .gz files")
    p.add_argument("--weights", default=None, help="faces: weights.tar; fashion: backbone folder (default weights/fashion)")
    p.set_defaults(func=_sample)

    p = sub.add_parser(
        "train-classifier", help="train the fashion label classifier on the real training set",
        description="Small CNN on real Fashion-MNIST (32x32 padded); used to score generated garments.",
        epilog="example: fiancee train-classifier --task fashion --out weights/fashion --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["fashion"], required=True)
    p.add_argument("--out", required=True, help="folder for classifier.safetensors + classifier.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder with the idx .gz files")
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser(
        "evaluate-backbone", help="label accuracy and FID of the fashion backbone",
        description="Generates from N test label maps; label accuracy by the classifier in the weights folder, "
                    "FID against the N matching real test images.",
        epilog="example: fiancee evaluate-backbone --task fashion --n 1000 --seed 0 --out out/fashion_eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["fashion"], required=True)
    p.add_argument("--weights", default=None, help="backbone folder (default weights/fashion)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fid", action="store_true", help="label accuracy only (FID runs Inception, slow on CPU)")
    p.add_argument("--out", default=None, help="also write metrics.json and grid.png here")
    p.add_argument("--data", default=None, help="folder with the idx .gz files")
    p.set_defaults(func=_evaluate_backbone)

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
