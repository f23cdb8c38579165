"""``fiancee train-exits`` and ``fiancee evaluate-exits``: a task's exit branches, trained by distillation and
measured."""

from __future__ import annotations

import argparse
import json

from ._args import (
    HELD_OUT,
    choice_option,
    critics,
    device_option,
    exit_inits,
    exit_recipes,
    folder_code_option,
    json_option,
    lr_schedules,
    n_option,
    no_fid_option,
    out_option,
    overwrite_option,
    preset_option,
    progress_option,
    seed_option,
    task_option,
)


def register(sub) -> None:
    _add_train_exits(sub)
    _add_evaluate_exits(sub)


def _add_train_exits(sub) -> None:
    p = sub.add_parser(
        "train-exits",
        help="train every exit branch of a task by distillation",
        description="Train all exit branches against the frozen backbone (paper eq. 3 / eq. 4). "
        "Runs alone or under `torchrun --nproc_per_node N -m fiancee train-exits ...` (DDP).",
        epilog="example: fiancee train-exits --task faces --scale 1/4 --min-channels 16 --recipe oasis --preset quick "
        "--out runs/faces\n"
        "         PYTHONPATH=. fiancee train-exits --task mymodule:MyTask --out runs/mine   (after writing your "
        "generator's mymodule.py: docs/own-generator.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(p)
    p.add_argument("--scale", default=None, help="branch width scale factor SF, e.g. 1/2 (default: the task's)")
    p.add_argument("--min-channels", type=int, default=None, help="channel floor (default: the task's)")
    choice_option(p, "--recipe", names=exit_recipes, default="oasis")
    preset_option(p)
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default: the preset's)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--bank", default=None, help="a feature bank folder (fiancee build-bank) to guide the branches")
    choice_option(
        p,
        "--init",
        names=exit_inits,
        default="inherit",
        help="branch weights start from the backbone's most active channels (inherit, default) or fresh (random)",
    )
    choice_option(
        p,
        "--critic",
        names=critics,
        default=None,
        help="branch critics (default: the recipe's; oasis's is the task's kind): oasis = copies of the "
        "backbone's own discriminator (eq. 3; fashion with a discriminator in its backbone folder)",
    )
    p.add_argument(
        "--warm-start",
        default=None,
        metavar="EXITS",
        help="start the branches from the last weights of EXITS, a run or an exported exits folder of the same "
        "task and geometry (e.g. the exits shipped with fiancee), instead of --init: training on where it "
        "stopped, with fresh critics and optimizer state",
    )
    p.add_argument(
        "--fixed-inputs",
        type=int,
        default=None,
        metavar="N",
        help="train on N fixed training inputs whose backbone outputs are computed once and kept in memory "
        "(for a backbone as costly as its branches' training, e.g. upscale; default: fresh inputs "
        "every step)",
    )
    p.add_argument(
        "--feature-distill",
        type=float,
        default=None,
        metavar="W",
        help="weight of the intermediate-feature distillation term (default: the recipe's, 0)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: the recipe's; oasis 4e-4), e.g. lower to train on from --warm-start",
    )
    choice_option(
        p,
        "--schedule",
        names=lr_schedules,
        default=None,
        help="learning-rate schedule over --steps (default: the recipe's; oasis constant): cosine decays it to "
        "the recipe's floor (oasis 0) by the last step",
    )
    out_option(p, required=True, help="run folder", refuse_existing=False)  # --resume continues it
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    device_option(p, default=None, help="cpu or cuda (default: cuda if available)")
    seed_option(p)
    progress_option(p)
    folder_code_option(p, task=False)
    p.set_defaults(func=run_train_exits)


def _add_evaluate_exits(sub) -> None:
    p = sub.add_parser(
        "evaluate-exits",
        help="MACs, LPIPS and FID of every exit of a trained run",
        description="Per exit: MACs, mean / median / p90 LPIPS vs the backbone on held-out inputs, FID; "
        "writes exits.json and an image grid (one row per exit, the backbone last).",
        epilog="example: fiancee evaluate-exits src/fiancee/weights/faces/exits --n 500 --no-fid "
        "--out out/faces_exits\n"
        "(src/fiancee/weights/faces/exits: the faces exits shipped with the package; exits are numbered "
        "1..E in the output, the backbone last)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-exits")
    n_option(p, 500, help=HELD_OUT)
    no_fid_option(p)
    out_option(
        p, default="out/evaluate-exits", help="folder for exits.json and exits_grid.png (default out/evaluate-exits)"
    )
    device_option(p)
    seed_option(p)
    json_option(p)
    overwrite_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_evaluate_exits)


def exit_config(args: argparse.Namespace):
    """The ``ExitsConfig`` a ``train-exits`` command line asks for (also what tests read an example's budget from)."""
    from ..train.exits import make_config

    overrides = {}
    if args.feature_distill is not None:
        overrides["features"] = args.feature_distill
    if args.critic is not None:
        overrides["critic"] = args.critic
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.schedule is not None:
        overrides["schedule"] = args.schedule
    return make_config(
        args.task,
        scale=args.scale,
        min_channels=args.min_channels,
        recipe=args.recipe,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        bank=args.bank,
        init=args.init,
        recipe_overrides=overrides or None,
        fixed_inputs=args.fixed_inputs,
    )


def run_train_exits(args: argparse.Namespace) -> int:
    from ..train.exits import train_exits

    run = train_exits(
        exit_config(args),
        args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        warm_start=args.warm_start,
    )
    print(run)
    return 0


def run_evaluate_exits(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_exits, format_exits_table

    report = evaluate_exits(
        args.run,
        n=args.n,
        seed=args.seed,
        fid=not args.no_fid,
        out=args.out,
        device=args.device,
        progress=not args.json,
    )
    print(json.dumps(report, indent=2) if args.json else format_exits_table(report))
    return 0
