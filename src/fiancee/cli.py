"""The ``fiancee`` command line. It only parses: each subcommand calls one library function.

Errors a user can cause (bad arguments, missing files, wrong shapes) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its one-line style
        self.exit(2, f"{self.prog}: error: {message}\n")


def _task_spec(text: str) -> str:
    """--task: a built-in name, package.module:attr, or an entry point (checked before any work)."""
    from .tasks.registry import check_task_spec

    try:
        return check_task_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bench_backbone(text: str) -> str:
    from .bench import REFERENCE_BACKBONES

    return text if text in REFERENCE_BACKBONES else _task_spec(text)


def _macs(args: argparse.Namespace) -> int:
    from .paper import macs_table

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


def _export_backbone(args: argparse.Namespace) -> int:
    from .train.backbone import export_checkpoint

    print(json.dumps(export_checkpoint(args.run, args.out, data=args.data, device=args.device)))
    return 0


def _train_exits(args: argparse.Namespace) -> int:
    from .train.exits import make_config, train_exits

    overrides = {}
    if args.feature_distill is not None:
        overrides["features"] = args.feature_distill
    if args.critic is not None:
        overrides["critic"] = args.critic
    config = make_config(
        args.task, scale=args.scale, min_channels=args.min_channels, recipe=args.recipe, preset=args.preset,
        steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.checkpoint_every, seed=args.seed,
        bank=args.bank, init=args.init, recipe_overrides=overrides or None, fixed_inputs=args.fixed_inputs,
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
    print(f"{'':<9}{'after':>6}{'GMACs':>9}{'ratio':>7}{'mean':>8}{'median':>8}{'p90':>8}{'FID':>9}")
    for e in report["exits"]:
        fid = f"{e['fid']:>9.2f}" if e["fid"] is not None else f"{'-':>9}"
        print(f"{'exit ' + str(e['exit']):<9}{'stage ' + str(e['after_stage']):>6}{e['macs'] / 1e9:>9.3f}{e['macs_ratio']:>7.3f}"
              f"{e['lpips_mean']:>8.4f}{e['lpips_median']:>8.4f}{e['lpips_p90']:>8.4f}{fid}")
    print(f"{'backbone':<9}{'':>6}{report['backbone_macs'] / 1e9:>9.3f}{1:>7.3f}{0:>8.4f}{0:>8.4f}{0:>8.4f}{'-':>9}")
    print(f"grid (rows: exit 1..{len(report['exits'])}, then the backbone): {report['grid']}")
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
                                       fid=not args.no_fid, out=args.out, classifier=args.classifier)
    print(json.dumps(result))
    return 0


def _train_predictor(args: argparse.Namespace) -> int:
    from .train.predictor import train_predictor_for_run

    result = train_predictor_for_run(args.run, args.out, arch=args.arch, recipe=args.recipe, n=args.n, noises=args.noises,
                                     epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, error_n=args.error_n,
                                     device=args.device, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in result.items() if k != "error"}))
    _print_error(result["error"])
    return 0


def _predictor_error(args: argparse.Namespace) -> int:
    from .train.predictor import predictor_error_for_folder

    report = predictor_error_for_folder(args.predictor, run=args.run, n=args.n, seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_error(report)
    return 0


def _print_error(report: dict) -> None:
    exits = report["exits"]
    print(f"{report['task']} predictor ({report['arch']}): mean relative error |P - S| / S per exit (Tables S3 / S4)")
    print(f"{'set':<14}{'n':>6}" + "".join(f"{'B' + str(i + 1):>8}" for i in range(len(exits))) + f"{'mean':>8}{'rho':>7}")
    for name, e in report["sets"].items():
        rho = sum(e["spearman"]) / len(e["spearman"])
        print(f"{name:<14}{e['n']:>6}" + "".join(f"{100 * v:>7.1f}%" for v in e["relative_error"])
              + f"{100 * e['mean_relative_error']:>7.1f}%{rho:>7.2f}")


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_pipeline

    thresholds = _floats(args.thresholds, "--thresholds")
    report = evaluate_pipeline(args.pipeline, thresholds, n=args.n, seed=args.seed, out=args.out, progress=True)
    names = " / ".join(report.get("route_names") or [])
    print(f"{'T':>6}{'compliance':>12}{'MACs saved':>12}{'oracle':>9}{'oracle@c':>10}  shares ({names})")
    for r in report["thresholds"]:
        print(f"{r['threshold']:>6.3f}{r['compliance']:>12.1%}{r['macs_saved']:>12.1%}{r['oracle_macs_saved']:>9.1%}"
              f"{r['oracle_macs_saved_at_compliance']:>10.1%}  {' / '.join(f'{s:.0%}' for s in r['exit_shares'])}")
    print(f"report: {report['html']}")
    return 0


def _guarantee(args: argparse.Namespace) -> int:
    from .guarantee_study import run_guarantee_study, summary_lines

    result = run_guarantee_study(
        args.pipeline, args.out, thresholds=_floats(args.thresholds, "--thresholds"),
        epsilons=_floats(args.epsilons, "--epsilons"), delta=args.delta, n=args.n, n_cal=args.n_cal, n_test=args.n_test,
        splits=args.splits, seed=args.seed, methods=[m for m in args.methods.split(",") if m.strip()],
        bound=args.bound, shift=args.shift, shift_n=args.shift_n, progress=not args.json,
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "figures"}))
        return 0
    print("\n".join(summary_lines(result)))
    print(f"json: {result['json']}; figures: {', '.join(result['figures'].values())}")
    return 0


def _upscale(args: argparse.Namespace) -> int:
    from .pipeline import FianceePipeline
    from .upscaling import upscale_images

    pipe = FianceePipeline.from_pretrained(args.pipeline)
    summary = upscale_images(pipe, args.images, args.out, max_lpips=args.max_lpips, tile=args.tile,
                             overlap=args.overlap, batch_size=args.batch_size, write_route_map=args.route_map,
                             max_pixels=args.max_pixels, progress=not args.no_progress)
    for im in summary["images"]:
        print(f"{im['name']}: {im['size'][0]}x{im['size'][1]}, {im['tiles']} tiles, MACs saved {im['macs_saved']:.1%} "
              f"vs the backbone on the same tiles, exit shares {' / '.join(f'{s:.0%}' for s in im['route_shares'])} "
              f"(backbone last), {im['seconds']:.1f} s")
    print(args.out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.task, args.out, retrain=args.retrain, seed=args.seed, n_eval=args.n, n_predictor=args.n_predictor,
             n_calibrate=args.n_calibrate, preset=args.preset, exits=args.exits, progress=not args.no_progress,
             epsilon=args.epsilon, delta=args.delta, target_compliance=args.target_compliance, method=args.method)
    return 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers like 0.05,0.1; got {text!r}") from None


def _grid(text: str | None):
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--grid must look like 4x4; got {text!r}")
    return int(parts[0]), int(parts[1])


def _build_bank(args: argparse.Namespace) -> int:
    from .train.bank import build_bank

    manifest = build_bank(
        args.task, args.out, mode=args.mode, n=args.n, noises=args.noises, grid=_grid(args.grid),
        max_per_class=args.max_per_class, key_function=args.key_function, index=args.index, seed=args.seed,
        batch_size=args.batch_size, progress=not args.no_progress, device=args.device, data=args.data,
        weights=args.weights, overwrite=args.overwrite,
    )
    print(json.dumps({k: manifest[k] for k in ("task", "mode", "entries", "candidates", "per_class_counts",
                                               "key_dim", "value_shape", "backbone_fingerprint", "build_seconds")}))
    if args.latency:
        args.bank = args.out
        return _bank_latency(args)
    return 0


def _bank_latency(args: argparse.Namespace) -> int:
    from .train.bank import bank_latency

    print(json.dumps(bank_latency(args.bank, args.task, threads=args.threads, reps=args.reps, device=args.device,
                                  data=args.data, weights=args.weights)))
    return 0


def _bank_ablation(args: argparse.Namespace) -> int:
    from .bank_ablation import bank_ablation, markdown_table

    report = bank_ablation(args.nobank_run, args.bank_run, args.out, n=args.n, seed=args.seed, fid=not args.no_fid,
                           device=args.device)
    print(markdown_table(report), end="")
    print(f"kde: {report['plots']['kde']}; start images: {report['plots']['start_images']}")
    return 0


def _exit_quality(args: argparse.Namespace) -> int:
    from .exit_quality import exit_quality, markdown_table

    report = exit_quality(args.runs, n=args.n, seed=args.seed, fid=not args.no_fid, accuracy=not args.no_accuracy,
                          device=args.device, out=args.out, bandwidth=args.bandwidth, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "per_image_lpips"}, indent=2))
        return 0
    print(markdown_table(report), end="")
    print(f"json: {Path(args.out) / 'exit_quality.json'}" + (f"; kde: {report['kde']['path']}" if report["kde"] else ""))
    return 0


def _bank_distance(args: argparse.Namespace) -> int:
    from .exit_quality import routes_vs_bank_distance

    report = routes_vs_bank_distance(args.pipeline, threshold=args.threshold, n=args.n, seed=args.seed, out=args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "per_input"}, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import format_onnx_table, format_table, run_bench, run_onnx_bench
    from .io import write_json

    if args.runtime == "onnx":
        if args.opt or args.device != "cpu":
            raise ValueError("--runtime onnx compares PyTorch and ONNX Runtime on the CPU; --opt and --device do not apply")
        report = run_onnx_bench(
            args.backbone, size=args.size, scale=args.scale, min_channels=args.min_channels, batches=args.batch or "1,32",
            threads=[args.threads] if args.threads is not None else (1, 2), reps=args.reps, warmup=args.warmup,
            seed=args.seed, predictor=args.predictor, progress=not args.no_progress,
        )
        write_json(args.json, report)
        print(format_onnx_table(report), end="")
        print(f"json: {args.json}")
        return 0
    report = run_bench(
        args.backbone, size=args.size, scale=args.scale, min_channels=args.min_channels, device=args.device,
        batches=args.batch or "1,8,32", reps=args.reps, warmup=args.warmup, threads=args.threads, options=args.opt, seed=args.seed,
        bank_inputs=args.bank_inputs, predictor=args.predictor, progress=not args.no_progress, bank=args.bank_choice,
    )
    write_json(args.json, report)
    print(format_table(report), end="")
    print(f"json: {args.json}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_pipeline

    manifest = export_pipeline(args.pipeline, args.out, opset=args.opset, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out), "segments": [s["file"] for s in manifest["segments"]],
                      "route_macs": manifest["route_macs"], "router": manifest["router"]["kind"],
                      "bank": manifest["bank"] is not None}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="fiancee", description="Conditional early exits for trained image generators.",
                     epilog="`fiancee COMMAND --help` shows a command's options and a worked example.")
    parser.add_argument("--version", action="version", version=f"fiancee {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", parser_class=_Parser)

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
        epilog="example: fiancee lpips tests/fixtures/lpips/ex_ref.png tests/fixtures/lpips/ex_p0.png --net alex",
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
        epilog="example: fiancee train-backbone --task fashion --config fashion_backbone "
               "--out runs/fashion_backbone --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["fashion"], required=True, help="only fashion is trained (faces is pretrained)")
    p.add_argument("--config", required=True, help="training config: a JSON file, or the name of one shipped in "
                                                    "fiancee/configs (fashion_backbone)")
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
        "export-backbone", help="export a fashion backbone run's checkpoint (EMA generator + discriminator)",
        description="Write the backbone folder of a train-backbone run from its checkpoint.safetensors without "
                    "training: the EMA generator (BatchNorm statistics re-measured as training does) and the U-Net "
                    "discriminator (discriminator.safetensors), which the exits' oasis critics copy (paper eq. 3).",
        epilog="example (after the train-backbone example, which writes runs/fashion_backbone):\n"
               "  fiancee export-backbone runs/fashion_backbone   (writes runs/fashion_backbone/backbone)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-backbone (config.json + checkpoint.safetensors)")
    p.add_argument("--out", default=None, help="backbone folder to write (default RUN/backbone; replaced whole)")
    p.add_argument("--data", default=None, help="folder with the Fashion-MNIST idx .gz files")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_export_backbone)
    p = sub.add_parser(
        "train-exits", help="train every exit branch of a task by distillation",
        description="Train all exit branches against the frozen backbone (paper eq. 3 / eq. 4). "
                    "Runs alone or under `torchrun --nproc_per_node N -m fiancee train-exits ...` (DDP).",
        epilog="example: fiancee train-exits --task faces --scale 1/4 --min-channels 16 --recipe oasis --preset quick --out runs/faces\n"
               "         PYTHONPATH=. fiancee train-exits --task mymodule:MyTask --out runs/mine   (after writing your "
               "generator's mymodule.py: docs/own-generator.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, type=_task_spec, help="a built-in task (faces, fashion), package.module:attr naming a Task, or an entry point of fiancee.tasks")
    p.add_argument("--scale", default=None, help="branch width scale factor SF, e.g. 1/2 (default: the task's)")
    p.add_argument("--min-channels", type=int, default=None, help="channel floor (default: the task's)")
    p.add_argument("--recipe", choices=["oasis", "megaportraits"], default="oasis")
    p.add_argument("--preset", choices=["quick", "full", "smoke"], default="quick")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default: the preset's)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--bank", default=None, help="a feature bank folder (fiancee build-bank) to guide the branches")
    p.add_argument("--init", choices=["inherit", "random"], default="inherit",
                   help="branch weights start from the backbone's most active channels (inherit, default) or fresh (random)")
    p.add_argument("--critic", choices=["task", "dcgan", "patch", "oasis"], default=None,
                   help="branch critics (default: the recipe's; oasis's is the task's kind): oasis = copies of the "
                        "backbone's own discriminator (eq. 3; fashion with a discriminator in its backbone folder)")
    p.add_argument("--fixed-inputs", type=int, default=None, metavar="N",
                   help="train on N fixed training inputs whose backbone outputs are computed once and kept in memory "
                        "(for a backbone as costly as its branches' training, e.g. upscale; default: fresh inputs every step)")
    p.add_argument("--feature-distill", type=float, default=None, metavar="W",
                   help="weight of the intermediate-feature distillation term (default: the recipe's, 0)")
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
        epilog="example: fiancee evaluate-exits src/fiancee/weights/faces/exits --n 500 --no-fid --out out/faces_exits\n"
               "(src/fiancee/weights/faces/exits: the faces exits shipped with the package; exits are numbered "
               "1..E in the output, the backbone last)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-exits")
    p.add_argument("--n", type=int, default=500, help="held-out inputs (default 500)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (Inception is slow on CPU)")
    p.add_argument("--out", default="out/evaluate-exits", help="folder for exits.json and exits_grid.png "
                                                               "(default out/evaluate-exits)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_evaluate_exits)
    p = sub.add_parser(
        "sample", help="write backbone samples of a task as PNG files and a grid",
        description="N backbone images of a task (faces: z ~ N(0, I); fashion: label maps of the test set + noise).",
        epilog="example: fiancee sample --task faces --out out/faces --n 16 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", type=_task_spec, required=True, help="a built-in task (faces, fashion), package.module:attr naming a Task, or an entry point of fiancee.tasks")
    p.add_argument("--out", required=True, help="folder for sample_*.png and grid.png")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="fashion: folder with the idx .gz files")
    p.add_argument("--weights", default=None, help="faces: weights.tar; fashion: backbone folder (default: the one shipped in fiancee/weights/fashion)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_sample)

    p = sub.add_parser(
        "train-classifier", help="train the fashion label classifier on the real training set",
        description="Small CNN on real Fashion-MNIST (32x32 padded); used to score generated garments.",
        epilog="example: fiancee train-classifier --task fashion --out runs/fashion_classifier --seed 0 --epochs 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["fashion"], required=True)
    p.add_argument("--out", required=True, help="folder for classifier.safetensors + classifier.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder with the idx .gz files")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser(
        "evaluate-backbone", help="label accuracy and FID of the fashion backbone",
        description="Generates from N test label maps; label accuracy by the classifier beside the weights "
                    "(else the shipped one), FID against the N matching real test images.",
        epilog="example: fiancee evaluate-backbone --task fashion --n 1000 --seed 0 --no-fid --out out/fashion_eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=["fashion"], required=True)
    p.add_argument("--weights", default=None, help="backbone folder (default: the one shipped in fiancee/weights/fashion)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fid", action="store_true", help="label accuracy only (FID runs Inception, slow on CPU)")
    p.add_argument("--out", default=None, help="also write metrics.json and grid.png here")
    p.add_argument("--classifier", default=None,
                   help="folder with classifier.safetensors (default: beside --weights, else the shipped one)")
    p.add_argument("--data", default=None, help="folder with the idx .gz files")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_evaluate_backbone)

    p = sub.add_parser(
        "train-predictor", help="train the quality predictor of a trained exit run",
        description="Builds (and caches) the table of inputs x true LPIPS of every exit vs the backbone, trains the "
                    "predictor (paper Sec. 3.2) and writes DIR/config.json, DIR/weights.safetensors, DIR/error.json.",
        epilog="example: fiancee train-predictor src/fiancee/weights/faces/exits --out runs/faces_predictor --n 2000 --epochs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder of fiancee train-exits")
    p.add_argument("--out", required=True, help="predictor folder")
    p.add_argument("--arch", choices=["mlp", "conv", "features", "tiny"], default=None,
                   help="default: tiny, a head on the key-stage features costing well under 1%% of the backbone; features: Table S7's head on them; conv: Table S7's on the label map and noise; mlp reads z")
    p.add_argument("--recipe", choices=["mse-sgd", "mae-adamw"], default="mae-adamw",
                   help="mae-adamw (default): MAE, AdamW (MegaPortraits); mse-sgd: MSE, SGD lr 0.01, cosine (OASIS)")
    p.add_argument("--n", type=int, default=2000, help="training inputs (label-map tasks: maps x noises)")
    p.add_argument("--noises", type=int, default=None, help="label-map tasks: fixed noise vectors crossed with the maps (default 10)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--error-n", type=int, default=500, help="held-out inputs for the error report")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_train_predictor)

    p = sub.add_parser(
        "predictor-error", help="mean relative error per exit of a trained predictor (Tables S3 / S4)",
        description="Held-out inputs: test maps with the training noises and with new noises (label-map tasks), "
                    "held-out z (faces). Also MAE and Spearman rank correlation per exit.",
        epilog="example: fiancee predictor-error runs/faces_predictor --n 500 --json   (after the train-predictor example)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictor", help="predictor folder of fiancee train-predictor")
    p.add_argument("--run", default=None, help="exit run (default: the run the predictor was trained on)")
    p.add_argument("--n", type=int, default=500, help="held-out inputs (label-map tasks: n test maps, each with one of the K training noises and each with a new one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out inputs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_predictor_error)
    p = sub.add_parser(
        "evaluate", help="compute saved and compliance of a pipeline at quality thresholds",
        description="Routes held-out inputs at every threshold; writes report.json, report.html and PNG plots.",
        epilog="example: fiancee evaluate out/demo/pipeline --thresholds 0.05,0.1,0.2 --n 500 --out out/demo_eval   "
               "(after `make demo` or the demo example, which write out/demo)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="a pipeline folder (FianceePipeline.save)")
    p.add_argument("--thresholds", default="0.05,0.075,0.1,0.125,0.15,0.2,0.25,0.3", help="comma-separated LPIPS thresholds")
    p.add_argument("--n", type=int, default=500, help="held-out inputs (default 500)")
    p.add_argument("--out", default=None, help="report folder (default PIPELINE/report)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "guarantee", help="a pipeline's calibration methods over many calibration / test splits, and under shift",
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
    p.add_argument("--out", required=True, help="folder for guarantee.json and the figures")
    p.add_argument("--thresholds", default="0.05,0.1", help="comma-separated LPIPS thresholds (default 0.05,0.1)")
    p.add_argument("--epsilons", default="0.02,0.05,0.1,0.15,0.2",
                   help="requested miss rates, comma-separated (default 0.02,0.05,0.1,0.15,0.2)")
    p.add_argument("--delta", type=float, default=0.1, help="high-probability methods: 1 - confidence (default 0.1)")
    p.add_argument("--methods", default="average,crc,ltt,ucb", help="comma-separated, of average, crc, ltt, ucb (default all)")
    p.add_argument("--bound", choices=["hoeffding-bentkus", "clopper-pearson"], default="hoeffding-bentkus",
                   help="ucb's upper confidence bound (default hoeffding-bentkus; clopper-pearson accepts what ltt does)")
    p.add_argument("--n", type=int, default=5000, help="held-out inputs in the table (default 5000)")
    p.add_argument("--n-cal", type=int, default=1000, help="calibration inputs per split (default 1000)")
    p.add_argument("--n-test", type=int, default=None, help="test inputs per split (default: all the others)")
    p.add_argument("--splits", type=int, default=500, help="random calibration / test splits, at least 100 (default 500)")
    p.add_argument("--shift", default=None, help="also test on shifted inputs the task declares (faces norm:1.5, "
                                                 "fashion classes:0,2,4,6)")
    p.add_argument("--shift-n", type=int, default=2000, help="shifted inputs (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bars)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_guarantee)

    p = sub.add_parser(
        "upscale", help="upscale photos tile by tile, each tile on the cheapest exit meeting --max-lpips",
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
    p.add_argument("pipeline", help="a pipeline folder of a tile task (e.g. upscale)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, WebP, ...)")
    p.add_argument("--max-lpips", type=float, required=True, help="per-tile LPIPS threshold vs the backbone, in (0, 1]")
    p.add_argument("--out", required=True, help="output folder (written whole)")
    p.add_argument("--tile", type=int, default=None, help="tile side in input pixels (default and only: the pipeline's)")
    p.add_argument("--overlap", type=int, default=4, help="input pixels neighbouring tiles share, 0..tile/2 (default 4)")
    p.add_argument("--batch-size", type=int, default=16, help="tiles per batch (default 16)")
    p.add_argument("--route-map", action="store_true", help="also write NAME_routes.png: which exit each tile took")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest input accepted, in pixels (default 16M)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_upscale)

    p = sub.add_parser(
        "demo", help="the whole method end to end (exits, predictor, calibrated router, report)",
        description="Exits (committed quick run, or --retrain), predictor, calibrated router, evaluation; "
                    "ends with the MACs saved at LPIPS <= 0.1 and the path of the HTML report.",
        epilog="example: fiancee demo --task faces --out out/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", type=_task_spec, default="faces", help="default faces; or fashion, package.module:attr "
                                                                     "naming a Task, or an entry point of fiancee.tasks")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--retrain", action="store_true", help="train the exits again instead of using the committed run")
    p.add_argument("--n", type=int, default=1000, help="test inputs for the report (default 1000)")
    p.add_argument("--n-predictor", type=int, default=2000, help="training inputs of the predictor (default 2000)")
    p.add_argument("--n-calibrate", type=int, default=1000, help="held-out inputs the router is calibrated on (default 1000)")
    p.add_argument("--epsilon", type=float, default=0.05, help="guarantee: at most this share of outputs miss the threshold (default 0.05)")
    p.add_argument("--delta", type=float, default=0.1, help="guarantee: ... with probability >= 1 - delta over the calibration draw (default 0.1)")
    p.add_argument("--target-compliance", type=float, default=None,
                   help="fit the router for this average compliance instead of the guarantee (split-conformal margins)")
    p.add_argument("--method", choices=["ltt", "ucb", "crc"], default="ltt",
                   help="the guarantee's calibration: ltt (Learn-then-Test, default), ucb (upper confidence bound; both "
                        "with probability >= 1 - delta), crc (Conformal Risk Control: expected miss rate <= epsilon); "
                        "docs/guarantee.md")
    p.add_argument("--exits", default=None, help="a train-exits run of the task to use (default: the committed one, "
                                                  "else a fresh run)")
    p.add_argument("--preset", choices=["quick", "full", "smoke"], default="quick",
                   help="train-exits preset when the task has no committed exits or with --retrain (default quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "build-bank", help="build the guiding feature bank of a task (FAISS, farthest-point sampling)",
        description="Populate a feature bank from training inputs (paper 3.3, S1.1.1, S1.2.1): patch mode (keys = "
                    "key-stage patches, values = middle-stage patches, searched per semantic class) or global mode "
                    "(one key per input, value = the backbone's RGB image). Writes a bank folder.",
        epilog="example: fiancee build-bank --task fashion --out runs/bank_fashion --latency",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", type=_task_spec, required=True, help="a built-in task (faces, fashion), package.module:attr naming a Task, or an entry point of fiancee.tasks")
    p.add_argument("--out", required=True, help="bank folder to write (must not exist unless --overwrite)")
    p.add_argument("--mode", choices=["patch", "global"], default=None, help="default: fashion patch, faces global")
    p.add_argument("--n", type=int, default=None, help="inputs (fashion: label maps) to populate from (default: the task's)")
    p.add_argument("--noises", type=int, default=None, help="fixed noise vectors per label map (conditional tasks)")
    p.add_argument("--grid", default=None, help="patch grid on the key-stage features, e.g. 4x4 (patch mode)")
    p.add_argument("--max-per-class", type=int, default=None, help="entries kept per class by farthest-point sampling")
    p.add_argument("--key-function", default="pool2", help="global mode key: mean, pool2 (default), flatten, or package.module:attr naming a "
                                                        "callable [B, C, H, W] -> [B, D] (an entry point of "
                                                        "fiancee.key_functions works too)")
    p.add_argument("--index", choices=["flat", "ivf", "hnsw"], default="flat", help="FAISS index (default exact flat)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="fashion: folder with the idx .gz files")
    p.add_argument("--weights", default=None, help="backbone weights (faces: weights.tar; fashion: folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank folder")
    p.add_argument("--latency", action="store_true", help="then measure retrieval latency (as bank-latency)")
    p.add_argument("--threads", type=int, default=1, help="--latency: torch/FAISS threads (default 1)")
    p.add_argument("--reps", type=int, default=50, help="--latency: timed repetitions")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_build_bank)

    p = sub.add_parser(
        "bank-latency", help="retrieval latency of a bank vs the smallest route, batch 1 and 32",
        description="Median wall time of retrieval (keys, FAISS search, guide tensor) and of the smallest route "
                    "(exit 1) measured in the same process; prints JSON with their ratio.",
        epilog="example: fiancee bank-latency runs/bank_fashion --task fashion --threads 1   (after the build-bank example)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bank", help="bank folder (fiancee build-bank)")
    p.add_argument("--task", type=_task_spec, required=True, help="a built-in task (faces, fashion), package.module:attr naming a Task, or an entry point of fiancee.tasks")
    p.add_argument("--threads", type=int, default=1, help="torch/FAISS threads (default 1, the real-time setting)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None)
    p.add_argument("--weights", default=None)
    p.set_defaults(func=_bank_latency)

    p = sub.add_parser(
        "bank-ablation", help="exits trained with vs without the bank: LPIPS/FID table, KDE plot, start images",
        description="Evaluates two train-exits runs of the same budget (one with --bank) on the same held-out "
                    "inputs; writes ablation.json, ablation.md, lpips_kde.png and start_images.png.",
        epilog="example (exits trained without and with a bank, the same budget: only --bank differs):\n"
               "  fiancee build-bank --task faces --out runs/bank_faces\n"
               "  fiancee train-exits --task faces --preset quick --out runs/faces_nobank\n"
               "  fiancee train-exits --task faces --preset quick --bank runs/bank_faces --out runs/faces_bank\n"
               "  fiancee bank-ablation runs/faces_nobank runs/faces_bank --out out/faces_ablation --n 500 --no-fid\n"
               "(the shipped src/fiancee/weights/faces/exits trained 2500 steps: its bank arm needs --steps 2500)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("nobank_run", help="run folder trained without a bank")
    p.add_argument("bank_run", help="run folder trained with --bank (same task and budget)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=500, help="held-out inputs (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fid", action="store_true", help="skip FID (Inception is slow on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_bank_ablation)
    p = sub.add_parser(
        "exit-quality", help="per exit and the backbone: FID vs real images, label accuracy, LPIPS (Table S1, Fig. 8)",
        description="Measures every run on the same held-out inputs: per exit and for the backbone, FID against the "
                    "real images whose label maps are used, label accuracy of the task's classifier on the generated "
                    "images, mean and p90 LPIPS vs the backbone. Runs with and without a bank form two arms; each "
                    "prints mean +- sample std over its runs (seeds). With both arms, lpips_kde.png: per-exit KDE of "
                    "per-image LPIPS with vs without the bank (bandwidth 0.3, scipy's bw_method factor). Writes "
                    "exit_quality.json and exit_quality.md.",
        epilog="example (two seeds per arm, all trained alike; more seeds give a tighter spread):\n"
               "  fiancee build-bank --task fashion --out runs/bank_fashion   (skip it if the build-bank example wrote it)\n"
               "  fiancee train-exits --task fashion --seed 0 --out runs/fashion_s0\n"
               "  fiancee train-exits --task fashion --seed 1 --out runs/fashion_s1\n"
               "  fiancee train-exits --task fashion --seed 0 --bank runs/bank_fashion --out runs/fashion_bank_s0\n"
               "  fiancee train-exits --task fashion --seed 1 --bank runs/bank_fashion --out runs/fashion_bank_s1\n"
               "  fiancee exit-quality runs/fashion_s0 runs/fashion_s1 runs/fashion_bank_s0 runs/fashion_bank_s1 "
               "--n 500 --out out/fashion_table_s1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", help="exit-training run folders of one task (with and/or without --bank)")
    p.add_argument("--out", required=True, help="folder for exit_quality.json, exit_quality.md, lpips_kde.png")
    p.add_argument("--n", type=int, default=500, help="held-out inputs (default 500)")
    p.add_argument("--seed", type=int, default=0, help="which held-out inputs (the runs' own seeds are read from them)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (Inception is slow on CPU)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the label accuracy")
    p.add_argument("--bandwidth", type=float, default=0.3, help="KDE bandwidth, scipy's bw_method factor (default 0.3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_exit_quality)
    p = sub.add_parser(
        "bank-distance", help="routed exit vs distance of the key patches to their bank entries (Fig. 10)",
        description="Routes N held-out inputs through a pipeline with a bank at one threshold and relates each "
                    "input's route to the mean L2 distance of its key patches to the bank entries they retrieved "
                    "(the distances of the pipeline's own search). Writes bank_distance.json and bank_distance.png "
                    "(per route, a KDE of the distances scaled by the inputs routed there; bandwidth 0.5 as Fig. 10).",
        epilog="example (a pipeline whose exits were trained with a bank; the demo writes it):\n"
               "  fiancee build-bank --task fashion --out runs/bank_fashion   (skip it if the build-bank example wrote it)\n"
               "  fiancee train-exits --task fashion --bank runs/bank_fashion --out runs/fashion_bank\n"
               "  fiancee demo --task fashion --exits runs/fashion_bank --out out/fashion_demo\n"
               "  fiancee bank-distance out/fashion_demo/pipeline --threshold 0.1 --n 500 --out out/fashion_fig10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="pipeline folder (fiancee train-predictor) whose exits use a bank")
    p.add_argument("--threshold", type=float, required=True, help="LPIPS threshold the router enforces")
    p.add_argument("--out", required=True, help="folder for bank_distance.json and bank_distance.png")
    p.add_argument("--n", type=int, default=500, help="held-out inputs (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=_bank_distance)

    p = sub.add_parser(
        "bench", help="milliseconds per route next to MACs; mixed-exit tree; predictor + bank overhead",
        description="Median latency of every route at each batch size beside its MACs (latency_ratio vs macs_ratio), "
                    "the mixed-exit tree against the ideal, deepest-needed and grouped execution, the predictor + "
                    "bank cost as a fraction of the smallest route, and optional speed-ups (--opt) with their "
                    "output differences. Prints a table and writes the JSON report (BENCHMARKS.md).",
        epilog="example: fiancee bench --backbone oasis --size tiny --batch 1,8,32 --json out/bench/oasis_tiny_cpu.json\n"
               "         fiancee bench --backbone oasis --device cuda --opt channels_last,bf16,compile,cudagraphs --json out/bench/oasis_gpu.json"
               "   (on a machine with a CUDA GPU)\n"
               "         fiancee bench --backbone faces --runtime onnx --json out/bench/faces_onnx_cpu.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backbone", type=_bench_backbone, required=True,
                   help="oasis / g2d: reference architectures, random weights; a task (faces, fashion, "
                        "package.module:attr naming a Task, an entry point of fiancee.tasks): its backbone")
    p.add_argument("--size", choices=["paper", "tiny"], default=None, help="oasis / g2d configuration (default paper)")
    p.add_argument("--scale", default=None, help="branch scale factor SF (default: oasis 1/4, g2d 1/3, tasks: theirs)")
    p.add_argument("--min-channels", type=int, default=None,
                   help="channel floor (default: oasis 64, g2d 24 at paper size, 4 tiny; tasks: theirs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,8,32; --runtime onnx: 1,32)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before each measurement (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / FAISS CPU threads (default: leave torch's; --runtime onnx: 1 and 2, each in turn)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: the pipeline under PyTorch and under ONNX Runtime side by side, per route and mixed "
                        "batch (fiancee.runtime; BENCHMARKS.md)")
    p.add_argument("--opt", default=None,
                   help="speed options to try, comma-separated: channels_last, bf16, fp16, compile, cudagraphs")
    p.add_argument("--bank-inputs", type=int, default=None,
                   help="bank population: inputs (fashion: label maps x 8 noises); default faces 1024, fashion 250, "
                        "oasis / g2d 16")
    p.add_argument("--bank", dest="bank_choice", choices=["auto", "on", "off"], default="auto",
                   help="time a bank retrieval: auto = when the pipeline this backbone ships with has a bank "
                        "(faces' shipped exits have none; fashion, oasis, g2d: their default bank); on / off force it")
    p.add_argument("--predictor", choices=["mlp", "conv", "features", "tiny"], default=None,
                   help="predictor arch (default: tiny, what train-predictor trains)")
    p.add_argument("--json", required=True, help="where to write the JSON report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "export", help="export a pipeline to ONNX segments that fiancee.runtime runs without PyTorch",
        description="One ONNX graph per segment with a dynamic batch dimension (the trunk with the predictor, every "
                    "remaining backbone stage, every branch, the head, the bank's guide), the bank's FAISS indexes and "
                    "manifest.json (route table, MACs, router, inputs, fingerprints). Written whole (docs/deploy.md).",
        epilog="example: fiancee export out/demo/pipeline --out out/demo/onnx   (after `make demo`)\n"
               "         python -c \"from fiancee.runtime import OnnxPipeline; import numpy as np; "
               "print(OnnxPipeline('out/demo/onnx')(np.random.randn(4, 100).astype('float32'), max_lpips=0.1).exits)\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="pipeline folder (fiancee demo, FianceePipeline.save)")
    p.add_argument("--out", required=True, help="folder to write (must not exist unless --overwrite)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13..21, default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `fiancee` alone: the list of commands
        parser.print_help()
        return 0
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        _refuse_existing_out(args)
        return func(args)
    except ImportError as e:
        # A missing optional package (matplotlib, FAISS): one line naming the extra that installs it.
        if os.environ.get("FIANCEE_DEBUG"):
            raise
        from .extras import MissingDependency, install_hint

        hint = None if isinstance(e, MissingDependency) else install_hint(e.name)
        text = _one_line(e) + (f": {hint}" if hint else "")
        print(f"fiancee {args.command}: error: {text}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError, MemoryError) as e:
        # What a user can cause (bad arguments, missing or corrupt files, wrong shapes): one line, exit 2.
        # FIANCEE_DEBUG=1 shows the traceback instead, for bug reports.
        if os.environ.get("FIANCEE_DEBUG"):
            raise
        print(f"fiancee {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyError as e:  # a file lacking an entry its reader needs (the readers name most of them first)
        if os.environ.get("FIANCEE_DEBUG"):
            raise
        print(f"fiancee {args.command}: error: missing key {e} in a config or checkpoint", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fiancee {args.command}: interrupted", file=sys.stderr)
        return 130


# Commands that write a folder: the option naming it. An existing, non-empty folder is refused unless
# --overwrite is given, so no worked example silently replaces a committed or earlier result.
# (build-bank checks its own folder; train-exits and train-backbone resume with --resume.)
_OUT_FOLDERS = {
    "sample": "out", "train-classifier": "out", "evaluate-backbone": "out", "evaluate-exits": "out",
    "train-predictor": "out", "evaluate": "out", "demo": "out", "bank-ablation": "out", "exit-quality": "out",
    "bank-distance": "out", "upscale": "out", "guarantee": "out",
}


def _refuse_existing_out(args: argparse.Namespace) -> None:
    attr = _OUT_FOLDERS.get(args.command)
    folder = getattr(args, attr, None) if attr else None
    if args.command == "evaluate" and folder is None:  # its default report folder
        folder = str(Path(args.pipeline) / "report")
    if folder is None or getattr(args, "overwrite", False):
        return
    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"--{attr} {folder} already exists and is not empty; "
                              "pass --overwrite to replace what this command writes there, or choose a new folder")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())  # third-party messages (FAISS, torch) can span lines
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.strerror}: {e.filename}"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        text = f"no space left on the device writing {e.filename or 'a file'}; nothing was half-written (free space and retry)"
    elif isinstance(e, MemoryError):
        text = "out of memory: " + (text or "the request is larger than this machine can hold")
    elif isinstance(e, OverflowError):
        text = "a number is too large: " + text
    elif type(e).__name__ == "DecompressionBombError":  # PIL: an image far larger than its file
        text = "refusing to decode an image that large (decompression bomb?): " + text
    if len(text) > _MAX_ERROR:  # a third-party message may embed a whole tensor
        text = text[: _MAX_ERROR - 30].rstrip() + f" ... ({len(text)} characters)"
    return text or type(e).__name__


_MAX_ERROR = 600
