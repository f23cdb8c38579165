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


def _train_exits(args: argparse.Namespace) -> int:
    from .train.exits import make_config, train_exits

    config = make_config(
        args.task, scale=args.scale, min_channels=args.min_channels, recipe=args.recipe, preset=args.preset,
        steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.checkpoint_every, seed=args.seed,
        bank=args.bank,
    )
    run = train_exits(config, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
    print(run)
    return 0


def _evaluate_exits(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_exits

    report = evaluate_exits(args.run, n=args.n, seed=args.seed, fid=not args.no_fid, out=args.out,
                            device=args.device, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['task']}: {report['n']} held-out inputs, LPIPS ({report['lpips_net']}) and FID vs the backbone")
    print(f"{'exit':<6}{'after':>6}{'GMACs':>9}{'ratio':>7}{'mean':>8}{'median':>8}{'p90':>8}{'FID':>9}")
    for e in report["exits"]:
        fid = f"{e['fid']:>9.2f}" if e["fid"] is not None else f"{'-':>9}"
        print(f"{e['exit']:<6}{e['after_stage']:>6}{e['macs'] / 1e9:>9.3f}{e['macs_ratio']:>7.3f}"
              f"{e['lpips_mean']:>8.4f}{e['lpips_median']:>8.4f}{e['lpips_p90']:>8.4f}{fid}")
    print(f"backbone {report['backbone_macs'] / 1e9:.3f} GMACs; grid: {report['grid']}")
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
        "train-exits", help="train every exit branch of a task by distillation",
        description="Train all exit branches against the frozen backbone (paper eq. 3 / eq. 4). "
                    "Runs alone or under `torchrun --nproc_per_node N -m fiancee train-exits ...` (DDP).",
        epilog="example: fiancee train-exits --task faces --scale 1/4 --min-channels 16 --recipe oasis --preset quick --out runs/faces",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=["faces", "fashion"])
    p.add_argument("--scale", default=None, help="branch width scale factor SF, e.g. 1/2 (default: the task's)")
    p.add_argument("--min-channels", type=int, default=None, help="channel floor (default: the task's)")
    p.add_argument("--recipe", choices=["oasis", "megaportraits"], default="oasis")
    p.add_argument("--preset", choices=["quick", "full", "smoke"], default="quick")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default: the preset's)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--bank", default=None, help="a feature bank folder (fiancee build-bank) to guide the branches")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train_exits)

    p = sub.add_parser(
        "evaluate-exits", help="MACs, LPIPS and FID of every exit of a trained run",
        description="Per exit: MACs, mean / median / p90 LPIPS vs the backbone on held-out inputs, FID; "
                    "writes exits.json and an image grid (one row per exit, the backbone last).",
        epilog="example: fiancee evaluate-exits runs/faces --n 500 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-exits")
    p.add_argument("--n", type=int, default=500, help="held-out inputs (default 500)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (Inception is slow on CPU)")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate_exits)
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
