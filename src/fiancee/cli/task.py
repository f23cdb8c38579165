"""``fiancee sample``, ``fiancee train-classifier`` and ``fiancee evaluate-backbone``: a task's backbone images, and
the fashion task's label classifier and the scores of its backbone."""

from __future__ import annotations

import argparse
import json

from ._args import (
    data_option,
    n_option,
    no_fid_option,
    out_option,
    overwrite_option,
    seed_option,
    task_option,
    weights_option,
)


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="write backbone samples of a task as PNG files and a grid",
        description="N backbone images of a task (faces: z ~ N(0, I); fashion: label maps of the test set + noise).",
        epilog="example: fiancee sample --task faces --out out/faces --n 16 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(p)
    out_option(p, required=True, help="folder for sample_*.png and grid.png")
    n_option(p, 16)
    seed_option(p)
    data_option(p, help="fashion: folder with the idx .gz files")
    weights_option(
        p, help="faces: weights.tar; fashion: backbone folder (default: the one shipped in fiancee/weights/fashion)"
    )
    overwrite_option(p)
    p.set_defaults(func=run_sample)

    p = sub.add_parser(
        "train-classifier",
        help="train the fashion label classifier on the real training set",
        description="Small CNN on real Fashion-MNIST (32x32 padded); used to score generated garments.",
        epilog="example: fiancee train-classifier --task fashion --out runs/fashion_classifier --seed 0 --epochs 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(p, only="fashion", help=None)
    out_option(p, required=True, help="folder for classifier.safetensors + classifier.json")
    p.add_argument("--epochs", type=int, default=2)
    seed_option(p)
    data_option(p, help="folder with the idx .gz files")
    overwrite_option(p)
    p.set_defaults(func=run_train_classifier)

    p = sub.add_parser(
        "evaluate-backbone",
        help="label accuracy and FID of the fashion backbone",
        description="Generates from N test label maps; label accuracy by the classifier beside the weights "
        "(else the shipped one), FID against the N matching real test images.",
        epilog="example: fiancee evaluate-backbone --task fashion --n 1000 --seed 0 --no-fid --out out/fashion_eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(p, only="fashion", help=None)
    weights_option(p, help="backbone folder (default: the one shipped in fiancee/weights/fashion)")
    n_option(p, 1000)
    seed_option(p)
    no_fid_option(p, help="label accuracy only (FID runs Inception, slow on CPU)")
    out_option(p, help="also write metrics.json and grid.png here")
    p.add_argument(
        "--classifier",
        default=None,
        help="folder with classifier.safetensors (default: beside --weights, else the shipped one)",
    )
    data_option(p, help="folder with the idx .gz files")
    overwrite_option(p)
    p.set_defaults(func=run_evaluate_backbone)


def run_sample(args: argparse.Namespace) -> int:
    from ..tasks import get_task, write_samples

    task = get_task(args.task, data=args.data, weights=args.weights)
    print(json.dumps(write_samples(task, args.out, n=args.n, seed=args.seed)))
    return 0


def run_train_classifier(args: argparse.Namespace) -> int:
    from ..tasks.fashion import train_label_classifier

    print(json.dumps(train_label_classifier(args.out, data=args.data, seed=args.seed, epochs=args.epochs)))
    return 0


def run_evaluate_backbone(args: argparse.Namespace) -> int:
    from ..tasks.fashion import evaluate_fashion_backbone

    result = evaluate_fashion_backbone(
        weights=args.weights,
        data=args.data,
        n=args.n,
        seed=args.seed,
        fid=not args.no_fid,
        out=args.out,
        classifier=args.classifier,
    )
    print(json.dumps(result))
    return 0
