"""``fiancee exit-quality`` (with ``--bank-ablation``: the old ``bank-ablation``) and ``bank-distance``: the paper's
studies of exits trained with and without a bank (Table S1, Figs. 8, 10 and S12)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import (
    HELD_OUT,
    device_option,
    folder_code_option,
    json_option,
    n_option,
    no_fid_option,
    out_option,
    overwrite_option,
    seed_option,
)


def register(sub) -> None:
    p = sub.add_parser(
        "exit-quality",
        help="per exit and the backbone: FID vs real images, label accuracy, LPIPS (Table S1, Fig. 8); "
        "--bank-ablation: one run without vs one with the bank, start images (Fig. S12)",
        description="Measures every run on the same held-out inputs: per exit and for the backbone, FID against the "
        "real images whose label maps are used, label accuracy of the task's classifier on the generated "
        "images, mean and p90 LPIPS vs the backbone. Runs with and without a bank form two arms; each "
        "prints mean +- sample std over its runs (seeds). With both arms, lpips_kde.png: per-exit KDE of "
        "per-image LPIPS with vs without the bank (bandwidth 0.3, scipy's bw_method factor). Writes "
        "exit_quality.json and exit_quality.md. --bank-ablation (the bank ablation: Table S1 against the "
        "backbone, Fig. 8, Fig. S12): exactly two runs of one budget, the first without --bank and the "
        "second with it; FID against the backbone's images of the same inputs; also ablation.json, "
        "ablation.md (LPIPS mean, median and p90 side by side) and start_images.png.",
        epilog="example (two seeds per arm, all trained alike; more seeds give a tighter spread):\n"
        "  fiancee build-bank --task fashion --out runs/bank_fashion   (skip it if the build-bank example "
        "wrote it)\n"
        "  fiancee train-exits --task fashion --seed 0 --out runs/fashion_s0\n"
        "  fiancee train-exits --task fashion --seed 1 --out runs/fashion_s1\n"
        "  fiancee train-exits --task fashion --seed 0 --bank runs/bank_fashion --out runs/fashion_bank_s0\n"
        "  fiancee train-exits --task fashion --seed 1 --bank runs/bank_fashion --out runs/fashion_bank_s1\n"
        "  fiancee exit-quality runs/fashion_s0 runs/fashion_s1 runs/fashion_bank_s0 runs/fashion_bank_s1 "
        "--n 500 --out out/fashion_table_s1\n"
        "example (the bank ablation: exits trained without and with a bank, the same budget: only --bank "
        "differs):\n"
        "  fiancee build-bank --task faces --out runs/bank_faces\n"
        "  fiancee train-exits --task faces --preset quick --out runs/faces_nobank\n"
        "  fiancee train-exits --task faces --preset quick --bank runs/bank_faces --out runs/faces_bank\n"
        "  fiancee exit-quality runs/faces_nobank runs/faces_bank --bank-ablation --n 500 --no-fid "
        "--out out/faces_ablation\n"
        "(the shipped src/fiancee/weights/faces/exits trained 2500 steps: its bank arm needs --steps 2500)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", help="exit-training run folders of one task (with and/or without --bank)")
    out_option(
        p,
        required=True,
        help="folder for exit_quality.json, exit_quality.md, lpips_kde.png (and the --bank-ablation files)",
    )
    n_option(p, 500, help=HELD_OUT)
    seed_option(p, help="which held-out inputs (the runs' own seeds are read from them)")
    no_fid_option(p)
    p.add_argument("--no-accuracy", action="store_true", help="skip the label accuracy")
    p.add_argument("--bandwidth", type=float, default=0.3, help="KDE bandwidth, scipy's bw_method factor (default 0.3)")
    p.add_argument(
        "--bank-ablation",
        action="store_true",
        help="the bank ablation: RUNS are one run without a bank then one with it, of one budget (seed "
        "included); FID against the backbone's images; adds ablation.json, ablation.md, "
        "start_images.png",
    )
    device_option(p)
    json_option(p)
    overwrite_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_exit_quality)

    p = sub.add_parser(
        "bank-distance",
        help="routed exit vs distance of the key patches to their bank entries (Fig. 10)",
        description="Routes N held-out inputs through a pipeline with a bank at one threshold and relates each "
        "input's route to the mean L2 distance of its key patches to the bank entries they retrieved "
        "(the distances of the pipeline's own search). Writes bank_distance.json and bank_distance.png "
        "(per route, a KDE of the distances scaled by the inputs routed there; bandwidth 0.5 as Fig. 10).",
        epilog="example (a pipeline whose exits were trained with a bank; the demo writes it):\n"
        "  fiancee build-bank --task fashion --out runs/bank_fashion   (skip it if the build-bank example "
        "wrote it)\n"
        "  fiancee train-exits --task fashion --bank runs/bank_fashion --out runs/fashion_bank\n"
        "  fiancee demo --task fashion --exits runs/fashion_bank --out out/fashion_demo\n"
        "  fiancee bank-distance out/fashion_demo/pipeline --threshold 0.1 --n 500 --out out/fashion_fig10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="pipeline folder (fiancee train-predictor) whose exits use a bank")
    p.add_argument("--threshold", type=float, required=True, help="LPIPS threshold the router enforces")
    out_option(p, required=True, help="folder for bank_distance.json and bank_distance.png")
    n_option(p, 500, help=HELD_OUT)
    seed_option(p)
    overwrite_option(p)
    folder_code_option(p)
    p.set_defaults(func=run_bank_distance)


def run_exit_quality(args: argparse.Namespace) -> int:
    from ..exit_quality import ablation_table, exit_quality, markdown_table

    report = exit_quality(
        args.runs,
        n=args.n,
        seed=args.seed,
        fid=not args.no_fid,
        accuracy=not args.no_accuracy,
        device=args.device,
        out=args.out,
        bandwidth=args.bandwidth,
        progress=not args.json,
        bank_ablation=args.bank_ablation,
    )
    ablation = report["ablation"]
    if args.json:
        shown = {k: v for k, v in report.items() if k != "per_image_lpips"}
        if ablation is not None:
            shown["ablation"] = {k: v for k, v in ablation.items() if k != "per_image_lpips"}
        print(json.dumps(shown, indent=2))
        return 0
    print(markdown_table(report), end="")
    if ablation is not None:
        print()
        print(ablation_table(ablation), end="")
    kde = f"; kde: {report['kde']['path']}" if report["kde"] else ""
    start = (
        f"; ablation: {Path(args.out) / 'ablation.json'}; start images: {ablation['plots']['start_images']}"
        if ablation is not None
        else ""
    )
    print(f"json: {Path(args.out) / 'exit_quality.json'}" + kde + start)
    return 0


def run_bank_distance(args: argparse.Namespace) -> int:
    from ..exit_quality import routes_vs_bank_distance

    report = routes_vs_bank_distance(args.pipeline, threshold=args.threshold, n=args.n, seed=args.seed, out=args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "per_input"}, indent=2))
    return 0
