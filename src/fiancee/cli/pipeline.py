"""``fiancee assemble-pipeline``, ``evaluate``, ``guarantee``, ``upscale`` and ``demo``: a pipeline folder assembled
from an exit run and a predictor, measured, its calibrations studied, photos upscaled through it, and the whole
method end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import (
    HELD_OUT,
    calibration_options,
    choice_option,
    floats,
    folder_code_option,
    json_option,
    n_option,
    out_option,
    overwrite_option,
    preset_option,
    progress_option,
    risk_bounds,
    seed_option,
    task_option,
)


def register(sub) -> None:
    _add_assemble_pipeline(sub)
    _add_evaluate(sub)
    _add_guarantee(sub)
    _add_upscale(sub)
    _add_demo(sub)


def _add_assemble_pipeline(sub) -> None:
    p = sub.add_parser(
        "assemble-pipeline",
        help="calibrate a router for an exit run and its predictor; write a pipeline folder",
        description="Measures the true LPIPS of every exit on --n-calibrate held-out inputs (the task's "
        "calibration split under seed + 7919, the training split unless the task names another, as upscale "
        "does: never the predictor's training inputs, nor a report's test inputs), fits "
        "the router's margins on them and writes the pipeline folder whole (branches, predictor, "
        "router, the run's bank): the demo's step 3. By default with a guarantee (--method ltt: with "
        "probability >= 1 - delta at most epsilon of new outputs miss the threshold); "
        "--target-compliance fits for an average compliance instead (docs/pipeline.md).",
        epilog="example:\n"
        "  fiancee train-predictor src/fiancee/weights/faces/exits --out out/faces_predictor\n"
        "  fiancee assemble-pipeline src/fiancee/weights/faces/exits --predictor out/faces_predictor "
        "--out out/faces_pipeline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="EXITS_RUN", help="run folder of fiancee train-exits")
    p.add_argument("--predictor", required=True, help="predictor folder of fiancee train-predictor for that run")
    out_option(p, required=True, help="pipeline folder (written whole)", refuse_existing=False)
    p.add_argument(
        "--thresholds",
        default="0.05,0.075,0.1,0.125,0.15,0.2,0.25,0.3",
        help="comma-separated LPIPS thresholds the router is fitted at (default: the demo's, 0.05 to 0.3)",
    )
    calibration_options(p)
    seed_option(p, help="the predictor's --seed: calibration inputs are drawn with seed + 7919 (default 0)")
    progress_option(p)
    overwrite_option(p, help="replace an existing --out pipeline folder")
    folder_code_option(p)
    p.set_defaults(func=run_assemble_pipeline)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compute saved and compliance of a pipeline at quality thresholds",
        description="Routes held-out inputs at every threshold; writes report.json, report.html and PNG plots.",
        epilog="example: fiancee evaluate out/demo/pipeline --thresholds 0.05,0.1,0.2 --n 500 --out out/demo_eval   "
        "(after `make demo` or the demo example, which write out/demo)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="a pipeline folder (FianceePipeline.save)")
    p.add_argument(
        "--thresholds", default="0.05,0.075,0.1,0.125,0.15,0.2,0.25,0.3", help="comma-separated LPIPS thresholds"
    )
    n_option(p, 500, help=HELD_OUT)
    out_option(
        p, help="report folder (default PIPELINE/report)", unset=lambda args: str(Path(args.pipeline) / "report")
    )
    seed_option(p)
    overwrite_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_evaluate)


def _add_guarantee(sub) -> None:
    p = sub.add_parser(
        "guarantee",
        help="a pipeline's calibration methods over many calibration / test splits, and under shift",
        description="Measures the true LPIPS of every exit on --n held-out inputs (cached) and the predictor's "
        "estimates, then calibrates the router with every method (average compliance, Conformal Risk "
        "Control, Learn-then-Test, upper confidence bound) on --splits random calibration sets of --n-cal "
        "inputs and measures each on the rest: per threshold and epsilon the realized miss rate (mean, "
        "90th percentile, share of splits above epsilon), the net MACs saved and the calibration size "
        "each method needs; with several thresholds, the family-wise share (Bonferroni over thresholds). "
        "--shift tests every split's router on inputs the task draws from a shifted distribution. "
        "Writes guarantee.json, risk.png, saved.png (and shift.png) under --out (docs/guarantee.md).",
        epilog="example:\n"
        "  fiancee demo --task faces --out out/demo_faces\n"
        "  fiancee guarantee out/demo_faces/pipeline --thresholds 0.05,0.1 --splits 500 --shift norm:1.5 "
        "--out out/guarantee_faces",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="a pipeline folder (fiancee demo, FianceePipeline.save)")
    out_option(p, required=True, help="folder for guarantee.json and the figures")
    p.add_argument("--thresholds", default="0.05,0.1", help="comma-separated LPIPS thresholds (default 0.05,0.1)")
    p.add_argument(
        "--epsilons",
        default="0.02,0.05,0.1,0.15,0.2",
        help="requested miss rates, comma-separated (default 0.02,0.05,0.1,0.15,0.2)",
    )
    p.add_argument("--delta", type=float, default=0.1, help="high-probability methods: 1 - confidence (default 0.1)")
    p.add_argument(
        "--methods", default="average,crc,ltt,ucb", help="comma-separated, of average, crc, ltt, ucb (default all)"
    )
    choice_option(
        p,
        "--bound",
        names=risk_bounds,
        default="hoeffding-bentkus",
        help="ucb's upper confidence bound (default hoeffding-bentkus; clopper-pearson accepts what ltt does)",
    )
    n_option(p, 5000, help="held-out inputs in the table (default 5000)")
    p.add_argument("--n-cal", type=int, default=1000, help="calibration inputs per split (default 1000)")
    p.add_argument("--n-test", type=int, default=None, help="test inputs per split (default: all the others)")
    p.add_argument(
        "--splits", type=int, default=500, help="random calibration / test splits, at least 100 (default 500)"
    )
    p.add_argument(
        "--shift",
        default=None,
        help="also test on shifted inputs the task declares (faces norm:1.5, fashion classes:0,2,4,6)",
    )
    p.add_argument("--shift-n", type=int, default=2000, help="shifted inputs (default 2000)")
    seed_option(p)
    json_option(p, help="print the result as JSON (no progress bars)")
    overwrite_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_guarantee)


def _add_upscale(sub) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale photos tile by tile, each tile on the cheapest exit meeting --max-lpips",
        description="Cuts each photo into overlapping tiles, routes every tile by its predicted LPIPS, runs the tiles "
        "as a mixed-exit tree in batches and blends the overlaps without seams; one row of tiles at a time "
        "(bounded memory). Writes NAME_x4.png, NAME_routes.png (--route-map) and summary.json. "
        "Greyscale is repeated to RGB, an alpha channel is dropped, 16-bit images are read at full "
        "precision; the output is 8-bit RGB.",
        epilog="example (the demo writes a pipeline of the upscale task):\n"
        "  fiancee demo --task upscale --out out/demo_upscale\n"
        "  fiancee upscale out/demo_upscale/pipeline photo.png --max-lpips 0.1 --route-map --out out/upscaled"
        "   (after saving any photo as photo.png)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "pipeline",
        help="a pipeline folder of a tile task (e.g. upscale), or its ONNX export (fiancee export; run without torch)",
    )
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, TIFF, WebP, ...)")
    p.add_argument(
        "--photo",
        action="append",
        default=[],
        metavar="NAME",
        help="also a photo the upscale task ships with its packages, by name (e.g. astronaut; repeatable)",
    )
    p.add_argument("--max-lpips", type=float, required=True, help="per-tile LPIPS threshold vs the backbone, in (0, 1]")
    out_option(p, required=True, help="output folder (written whole)")
    p.add_argument(
        "--tile", type=int, default=None, help="tile side in input pixels (default and only: the pipeline's)"
    )
    p.add_argument(
        "--overlap", type=int, default=4, help="input pixels neighbouring tiles share, 0..tile/2 (default 4)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="tiles per batch (default 16)")
    p.add_argument("--route-map", action="store_true", help="also write NAME_routes.png: which exit each tile took")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest input accepted, in pixels (default 16M)")
    p.add_argument(
        "--compare-backbone",
        action="store_true",
        help="also upscale each photo with the backbone alone, tiled the same way (NAME_x4_backbone.png), and "
        "compare: LPIPS, PSNR, seams, seconds (the two run a tile row each in turn, so both see the same machine)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch or ONNX Runtime; default: theirs)")
    overwrite_option(p, help="replace an existing --out folder")
    progress_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_upscale)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole method end to end (exits, predictor, calibrated router, report)",
        description="Exits (committed quick run, or --retrain), predictor, calibrated router, evaluation; "
        "ends with the MACs saved at LPIPS <= 0.1 and the path of the HTML report.",
        epilog="example: fiancee demo --task faces --out out/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_option(
        p,
        default="faces",
        help="default faces; or fashion, package.module:attr naming a Task, or an entry point of fiancee.tasks",
    )
    out_option(p, default="out/demo")
    p.add_argument("--retrain", action="store_true", help="train the exits again instead of using the committed run")
    n_option(p, 1000, help="test inputs for the report (default 1000)")
    p.add_argument("--n-predictor", type=int, default=2000, help="training inputs of the predictor (default 2000)")
    calibration_options(p)
    p.add_argument(
        "--exits",
        default=None,
        help="a train-exits run of the task to use (default: the committed one, else a fresh run)",
    )
    preset_option(p, help="train-exits preset when the task has no committed exits or with --retrain (default quick)")
    seed_option(p)
    progress_option(p)
    overwrite_option(p)
    folder_code_option(p, task=False)
    p.set_defaults(func=run_demo)


def run_assemble_pipeline(args: argparse.Namespace) -> int:
    from ..assemble import assemble_pipeline, summary_lines

    assembled = assemble_pipeline(
        args.run,
        args.predictor,
        args.out,
        thresholds=floats(args.thresholds, "--thresholds"),
        method=args.method,
        epsilon=args.epsilon,
        delta=args.delta,
        target_compliance=args.target_compliance,
        n_calibrate=args.n_calibrate,
        seed=args.seed,
        task=args.task,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print("\n".join(summary_lines(assembled)))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_pipeline, format_thresholds_table

    thresholds = floats(args.thresholds, "--thresholds")
    report = evaluate_pipeline(args.pipeline, thresholds, n=args.n, seed=args.seed, out=args.out, progress=True)
    print(format_thresholds_table(report))
    return 0


def run_guarantee(args: argparse.Namespace) -> int:
    from ..guarantee_study import run_guarantee_study, summary_lines

    result = run_guarantee_study(
        args.pipeline,
        args.out,
        thresholds=floats(args.thresholds, "--thresholds"),
        epsilons=floats(args.epsilons, "--epsilons"),
        delta=args.delta,
        n=args.n,
        n_cal=args.n_cal,
        n_test=args.n_test,
        splits=args.splits,
        seed=args.seed,
        methods=[m for m in args.methods.split(",") if m.strip()],
        bound=args.bound,
        shift=args.shift,
        shift_n=args.shift_n,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "figures"}))
        return 0
    print("\n".join(summary_lines(result)))
    print(f"json: {result['json']}; figures: {', '.join(result['figures'].values())}")
    return 0


def run_upscale(args: argparse.Namespace) -> int:
    from ..core.args import check_optional_int
    from ..tasks.upscale import photo_path
    from ..upscaling import format_upscale_summary, load_tile_pipeline, upscale_images

    check_optional_int(args.threads, "--threads", minimum=1)
    images = list(args.images) + [photo_path(name) for name in args.photo]
    if not images:
        raise ValueError("give at least one image file (or --photo NAME)")
    pipe = load_tile_pipeline(args.pipeline, threads=args.threads, trust_task_code=args.trust_task_code)
    summary = upscale_images(
        pipe,
        images,
        args.out,
        max_lpips=args.max_lpips,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        write_route_map=args.route_map,
        max_pixels=args.max_pixels,
        compare_backbone=args.compare_backbone,
        progress=not args.no_progress,
    )
    print(format_upscale_summary(summary))
    print(args.out)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .. import demo

    demo.run_demo(
        args.task,
        args.out,
        retrain=args.retrain,
        seed=args.seed,
        n_eval=args.n,
        n_predictor=args.n_predictor,
        n_calibrate=args.n_calibrate,
        preset=args.preset,
        exits=args.exits,
        progress=not args.no_progress,
        epsilon=args.epsilon,
        delta=args.delta,
        target_compliance=args.target_compliance,
        method=args.method,
    )
    return 0
