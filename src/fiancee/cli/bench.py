"""``fiancee bench``: milliseconds per route beside MACs, the mixed-exit tree, predictor and bank overhead
(BENCHMARKS.md)."""

from __future__ import annotations

import argparse

from ._args import choice_option, device_option, head_option, progress_option, seed_option, size_option, task_spec


def backbone_spec(text: str) -> str:
    """--backbone: a reference architecture (random weights) or a task spec."""
    from ..bench import REFERENCE_BACKBONES

    return text if text in REFERENCE_BACKBONES else task_spec(text)


def thresholds_list(text: str) -> list[float]:
    """--thresholds: LPIPS values in (0, 1], comma-separated (checked again by the bench before any work)."""
    from ..bench.end_to_end import check_thresholds

    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LPIPS values in (0, 1] separated by commas, like 0.05,0.1; got {text!r}"
        ) from None
    try:
        return check_thresholds(values)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def runtimes() -> list[str]:
    from ..bench import RUNTIMES

    return list(RUNTIMES)


def bank_modes() -> list[str]:
    from ..bench import BANK_MODES

    return list(BANK_MODES)


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="milliseconds per route next to MACs; mixed-exit tree; predictor + bank overhead",
        description="Median latency of every route at each batch size beside its MACs (latency_ratio vs macs_ratio), "
        "the mixed-exit tree against the ideal, deepest-needed and grouped execution, the predictor + "
        "bank cost as a fraction of the smallest route, and optional speed-ups (--opt) with their "
        "output differences. Prints a table and writes the JSON report (BENCHMARKS.md).",
        epilog="example: fiancee bench --backbone oasis --size tiny --batch 1,8,32 "
        "--json out/bench/oasis_tiny_cpu.json\n"
        "         fiancee bench --backbone oasis --device cuda --opt channels_last,bf16,compile,cudagraphs "
        "--json out/bench/oasis_gpu.json"
        "   (on a machine with a CUDA GPU)\n"
        "         fiancee bench --backbone faces --runtime onnx --json out/bench/faces_onnx_cpu.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--backbone",
        type=backbone_spec,
        required=True,
        help="oasis / g2d: reference architectures, random weights; a task (faces, fashion, "
        "package.module:attr naming a Task, an entry point of fiancee.tasks): its backbone",
    )
    size_option(p, default=None, help="oasis / g2d configuration (default paper)")
    p.add_argument("--scale", default=None, help="branch scale factor SF (default: oasis 1/4, g2d 1/3, tasks: theirs)")
    p.add_argument(
        "--min-channels",
        type=int,
        default=None,
        help="channel floor (default: oasis 64, g2d 24 at paper size, 4 tiny; tasks: theirs)",
    )
    device_option(p, help="cpu or cuda (default cpu)")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,8,32; --runtime onnx: 1,32)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before each measurement (default 5)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch / FAISS CPU threads (default: leave torch's; --runtime onnx: 1 and 2, each in turn)",
    )
    choice_option(
        p,
        "--runtime",
        names=runtimes,
        default="torch",
        help="onnx: the pipeline under PyTorch and under ONNX Runtime side by side, per route and mixed "
        "batch (fiancee.runtime; BENCHMARKS.md)",
    )
    p.add_argument(
        "--opt",
        default=None,
        help="speed options to try, comma-separated: channels_last, bf16, fp16, compile, cudagraphs "
        "(with --pipeline, compile also times the whole routed call compiled: pipe.for_inference(compile=True))",
    )
    p.add_argument(
        "--bank-inputs",
        type=int,
        default=None,
        help="bank population: inputs (fashion: label maps x 8 noises); default faces 1024, fashion 250, "
        "oasis / g2d 16",
    )
    choice_option(
        p,
        "--bank",
        names=bank_modes,
        dest="bank_choice",
        default="auto",
        help="time a bank retrieval: auto = when the pipeline this backbone ships with has a bank "
        "(faces' shipped exits have none; fashion, oasis, g2d: their default bank); on / off force it",
    )
    head_option(p, "--predictor", help="predictor arch (default: tiny, what train-predictor trains)")
    _pipeline_options(p)
    p.add_argument("--json", required=True, help="where to write the JSON report")
    seed_option(p)
    progress_option(p)
    p.set_defaults(func=run_bench)


def _pipeline_options(p) -> None:
    """--pipeline and what it sets: the end-to-end rows and the routed mixes."""
    p.add_argument(
        "--pipeline",
        default=None,
        help="a pipeline folder of the --backbone task: its exits are timed, and the mixed tree on the route shares "
        "its router chooses for the test inputs at LPIPS <= 0.05 and 0.1 (default: uniform and every single route)",
    )
    p.add_argument(
        "--thresholds",
        type=thresholds_list,
        default=None,
        help="with --pipeline: the LPIPS thresholds of the end-to-end rows and the routed mixes, comma-separated "
        "(default 0.05,0.1)",
    )


def run_bench(args: argparse.Namespace) -> int:
    from .. import bench
    from ..io import write_json

    if args.runtime == "onnx":
        if args.opt or args.device != "cpu":
            raise ValueError(
                "--runtime onnx compares PyTorch and ONNX Runtime on the CPU; --opt and --device do not apply"
            )
        report = bench.run_onnx_bench(
            args.backbone,
            size=args.size,
            scale=args.scale,
            min_channels=args.min_channels,
            batches=args.batch or "1,32",
            threads=[args.threads] if args.threads is not None else (1, 2),
            reps=args.reps,
            warmup=args.warmup,
            seed=args.seed,
            predictor=args.predictor,
            progress=not args.no_progress,
            pipeline=args.pipeline,
            **_thresholds(args),
        )
        write_json(args.json, report)
        print(bench.format_onnx_table(report), end="")
        print(f"json: {args.json}")
        return 0
    report = bench.run_bench(
        args.backbone,
        size=args.size,
        scale=args.scale,
        min_channels=args.min_channels,
        device=args.device,
        batches=args.batch or "1,8,32",
        reps=args.reps,
        warmup=args.warmup,
        threads=args.threads,
        options=args.opt,
        seed=args.seed,
        bank_inputs=args.bank_inputs,
        predictor=args.predictor,
        progress=not args.no_progress,
        bank=args.bank_choice,
        pipeline=args.pipeline,
        **_thresholds(args),
    )
    write_json(args.json, report)
    print(bench.format_table(report), end="")
    print(f"json: {args.json}")
    return 0


def _thresholds(args: argparse.Namespace) -> dict:
    """--thresholds only where given (the bench keeps its default otherwise); it needs --pipeline."""
    if args.thresholds is None:
        return {}
    if args.pipeline is None:
        raise ValueError("--thresholds sets the end-to-end rows and routed mixes of a pipeline; give --pipeline too")
    return {"thresholds": args.thresholds}
