"""``fiancee build-bank`` and ``fiancee bank-latency``: a task's guiding feature bank (paper 3.3) and its cost."""

from __future__ import annotations

import argparse
import json

from ._args import (
    bank_indexes,
    bank_modes,
    choice_option,
    data_option,
    device_option,
    folder_code_option,
    n_option,
    out_option,
    overwrite_option,
    progress_option,
    seed_option,
    task_option,
    weights_option,
)


def register(sub) -> None:
    p = sub.add_parser(
        "build-bank",
        help="build the guiding feature bank of a task (FAISS, farthest-point sampling)",
        description="Populate a feature bank from training inputs (paper 3.3, S1.1.1, S1.2.1): patch mode (keys = "
        "key-stage patches, values = middle-stage patches, searched per semantic class) or global mode "
        "(one key per input, value = the backbone's RGB image). Writes a bank folder.",
        epilog="example: fiancee build-bank --task fashion --out runs/bank_fashion --latency",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(p)
    # build_bank checks its own folder (and writes it whole)
    out_option(p, required=True, help="bank folder to write (must not exist unless --overwrite)", refuse_existing=False)
    choice_option(p, "--mode", names=bank_modes, default=None, help="default: fashion patch, faces global")
    n_option(p, None, help="inputs (fashion: label maps) to populate from (default: the task's)")
    p.add_argument("--noises", type=int, default=None, help="fixed noise vectors per label map (conditional tasks)")
    p.add_argument("--grid", default=None, help="patch grid on the key-stage features, e.g. 4x4 (patch mode)")
    p.add_argument("--max-per-class", type=int, default=None, help="entries kept per class by farthest-point sampling")
    p.add_argument(
        "--key-function",
        default="pool2",
        help="global mode key: mean, pool2 (default), flatten, or package.module:attr naming a "
        "callable [B, C, H, W] -> [B, D] (an entry point of fiancee.key_functions works too)",
    )
    choice_option(p, "--index", names=bank_indexes, default="flat", help="FAISS index (default exact flat)")
    p.add_argument("--batch-size", type=int, default=64)
    seed_option(p)
    device_option(p)
    data_option(p, help="fashion: folder with the idx .gz files")
    weights_option(p, help="backbone weights (faces: weights.tar; fashion: folder)")
    overwrite_option(p, help="replace an existing bank folder")
    p.add_argument("--latency", action="store_true", help="then measure retrieval latency (as bank-latency)")
    threads_option(p, help="--latency: torch/FAISS threads (default 1)")
    reps_option(p, help="--latency: timed repetitions")
    progress_option(p)
    p.set_defaults(func=run_build_bank)

    p = sub.add_parser(
        "bank-latency",
        help="retrieval latency of a bank vs the smallest route, batch 1 and 32",
        description="Median wall time of retrieval (keys, FAISS search, guide tensor) and of the smallest route "
        "(exit 1) measured in the same process; prints JSON with their ratio.",
        epilog="example: fiancee bank-latency runs/bank_fashion --task fashion --threads 1   (after the build-bank "
        "example)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bank", help="bank folder (fiancee build-bank)")
    task_option(p)
    threads_option(p, help="torch/FAISS threads (default 1, the real-time setting)")
    reps_option(p)
    device_option(p)
    data_option(p)
    weights_option(p)
    folder_code_option(p, task=False)
    p.set_defaults(func=run_bank_latency)


def threads_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--threads", type=int, default=1, help=help)


def reps_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--reps", type=int, default=50, help=help)


def grid(text: str | None) -> tuple[int, int] | None:
    """--grid 4x4 (or 4,4): the patch grid."""
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--grid must look like 4x4; got {text!r}")
    return int(parts[0]), int(parts[1])


def run_build_bank(args: argparse.Namespace) -> int:
    from ..train.bank import build_bank

    manifest = build_bank(
        args.task,
        args.out,
        mode=args.mode,
        n=args.n,
        noises=args.noises,
        grid=grid(args.grid),
        max_per_class=args.max_per_class,
        key_function=args.key_function,
        index=args.index,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        device=args.device,
        data=args.data,
        weights=args.weights,
        overwrite=args.overwrite,
    )
    print(
        json.dumps(
            {
                k: manifest[k]
                for k in (
                    "task",
                    "mode",
                    "entries",
                    "candidates",
                    "per_class_counts",
                    "key_dim",
                    "value_shape",
                    "backbone_fingerprint",
                    "build_seconds",
                )
            }
        )
    )
    if args.latency:  # reads back the bank just built, whose key function the user named
        from ..specs import allow_folder_code

        args.bank = args.out
        with allow_folder_code(*([args.key_function] if args.key_function else [])):
            return run_bank_latency(args)
    return 0


def run_bank_latency(args: argparse.Namespace) -> int:
    from ..train.bank import bank_latency

    print(
        json.dumps(
            bank_latency(
                args.bank,
                args.task,
                threads=args.threads,
                reps=args.reps,
                device=args.device,
                data=args.data,
                weights=args.weights,
            )
        )
    )
    return 0
