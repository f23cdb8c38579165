"""``fiancee train-predictor`` and ``fiancee predictor-error``: the quality predictor of an exit run (paper 3.2)."""

from __future__ import annotations

import argparse
import json

from ._args import (
    choice_option,
    device_option,
    folder_code_option,
    head_option,
    json_option,
    n_option,
    out_option,
    overwrite_option,
    predictor_recipes,
    predictor_targets,
    progress_option,
    seed_option,
)


def register(sub) -> None:
    p = sub.add_parser(
        "train-predictor",
        help="train the quality predictor of a trained exit run",
        description="Builds (and caches) the table of inputs x true LPIPS of every exit vs the backbone, trains the "
        "predictor (paper Sec. 3.2) and writes DIR/config.json, DIR/weights.safetensors, DIR/error.json.",
        epilog="example: fiancee train-predictor src/fiancee/weights/faces/exits --out runs/faces_predictor --n 2000 "
        "--epochs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-exits")
    out_option(p, required=True, help="predictor folder")
    head_option(
        p,
        "--arch",
        help="default: tiny, a head on the key-stage features costing well under 1%% of the "
        "backbone; features: Table S7's head on them; conv: Table S7's on the label map and "
        "noise; mlp reads z",
    )
    choice_option(
        p,
        "--recipe",
        names=predictor_recipes,
        default="mae-adamw",
        help="mae-adamw (default): MAE, AdamW (MegaPortraits); mse-sgd: MSE, SGD lr 0.01, cosine (OASIS)",
    )
    choice_option(
        p,
        "--target",
        names=predictor_targets,
        default="lpips",
        help="what the network regresses: lpips (default, the paper's) or log, the log of LPIPS (predictions "
        "stay in LPIPS units; sharper at the low LPIPS a router decides on, docs/predictor.md)",
    )
    n_option(p, 2000, help="training inputs (label-map tasks: maps x noises)")
    p.add_argument(
        "--noises",
        type=int,
        default=None,
        help="label-map tasks: fixed noise vectors crossed with the maps (default 10)",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--error-n", type=int, default=500, help="held-out inputs for the error report")
    device_option(p)
    seed_option(p)
    progress_option(p)
    overwrite_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_train_predictor)

    p = sub.add_parser(
        "predictor-error",
        help="mean relative error per exit of a trained predictor (Tables S3 / S4)",
        description="Held-out inputs: test maps with the training noises and with new noises (label-map tasks), "
        "held-out z (faces). Also MAE and Spearman rank correlation per exit.",
        epilog="example: fiancee predictor-error runs/faces_predictor --n 500 --json   (after the train-predictor "
        "example)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictor", help="predictor folder of fiancee train-predictor")
    p.add_argument("--run", default=None, help="exit run (default: the run the predictor was trained on)")
    n_option(
        p,
        500,
        help="held-out inputs (label-map tasks: n test maps, each with one of the K training noises "
        "and each with a new one)",
    )
    seed_option(p, help="seed of the held-out inputs")
    device_option(p)
    json_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_predictor_error)


def run_train_predictor(args: argparse.Namespace) -> int:
    from ..tables import format_predictor_error
    from ..train.predictor import train_predictor_for_run

    result = train_predictor_for_run(
        args.run,
        args.out,
        arch=args.arch,
        recipe=args.recipe,
        target=args.target,
        n=args.n,
        noises=args.noises,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        error_n=args.error_n,
        device=args.device,
        progress=not args.no_progress,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "error"}))
    print(format_predictor_error(result["error"]))
    return 0


def run_predictor_error(args: argparse.Namespace) -> int:
    from ..tables import format_predictor_error
    from ..train.predictor import predictor_error_for_folder

    report = predictor_error_for_folder(args.predictor, run=args.run, n=args.n, seed=args.seed, device=args.device)
    print(json.dumps(report, indent=2) if args.json else format_predictor_error(report))
    return 0
