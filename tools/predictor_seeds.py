"""How much of a routed saving belongs to the predictor's seed: the same predictor trained with several seeds,
per target (``lpips``, ``log``), each calibrated and routed the way ``fiancee assemble-pipeline`` and the
demo do it, on the same cached tables.

    python tools/predictor_seeds.py src/fiancee/weights/upscale/exits --seeds 6 --n 1200

prints one JSON object: per target, per seed, the mean Spearman rank correlation on the test inputs and, per
threshold, the net MACs saved (the predictor charged) and the share of test outputs truly within it, under
the Learn-then-Test guarantee assemble-pipeline fits by default; then per target the mean, min and max.
The tables are the ones train-predictor (``--n`` training inputs, seed 0), the demo (``--n-test``, seed 0)
and assemble-pipeline (``--n-calibrate`` from the task's calibration split, seed 0 + its offset) build, so a
run after those finds them cached. A shipped pipeline is one seed of this spread: docs/upscale.md states both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fiancee.assemble import CALIBRATION_SEED_OFFSET  # noqa: E402
from fiancee.metrics.macs import count_macs  # noqa: E402
from fiancee.predictor import TARGETS, QualityPredictor, error_summary, predictor_features, train_predictor  # noqa: E402
from fiancee.routing import CalibratedRouter, compliance, mean_cost  # noqa: E402
from fiancee.tables import build_lpips_table  # noqa: E402
from fiancee.train.exits import load_exits  # noqa: E402
from fiancee.train.predictor import DEFAULT_EPOCHS, DEFAULT_RECIPE  # noqa: E402


def _routed(router, predicted, true, costs, overhead, threshold):
    """Net MACs saved and the share of outputs truly within ``threshold`` when ``router`` routes ``predicted``."""
    routes = router.route(predicted, threshold)
    return 1.0 - (mean_cost(routes, costs) + overhead) / costs[-1], compliance(routes, true, threshold)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="an exit run folder (fiancee train-exits)")
    p.add_argument("--seeds", type=int, default=6, help="seeds 0 .. N-1 (default 6)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated (default lpips,log)")
    p.add_argument("--n", type=int, default=1200, help="training inputs (default 1200)")
    p.add_argument("--n-test", type=int, default=300, help="test inputs (default 300, the demo's)")
    p.add_argument("--n-calibrate", type=int, default=500, help="calibration inputs (default 500)")
    p.add_argument("--thresholds", default="0.05,0.1")
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=0.1)
    args = p.parse_args(argv)
    targets = args.targets.split(",")
    if any(t not in TARGETS for t in targets) or args.seeds < 1:
        p.error(f"--targets must name some of {TARGETS} and --seeds be >= 1")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    task, model = load_exits(args.run)
    costs = [float(c) for c in model.route_macs()]
    tables = {
        "train": build_lpips_table(model, task, args.n, 0, "train", None),
        "test": build_lpips_table(model, task, args.n_test, 0, "test", None),
        "calibrate": build_lpips_table(
            model, task, args.n_calibrate, CALIBRATION_SEED_OFFSET, task.calibration_split, None
        ),
    }
    xs = {k: predictor_features("tiny", model, t["inputs"]) for k, t in tables.items()}
    shapes = [list(x.shape[1:]) for x in xs["train"]]
    report = {"run": args.run, "task": task.name, "arch": "tiny", "recipe": DEFAULT_RECIPE, "epochs": DEFAULT_EPOCHS}
    report.update(n=args.n, n_test=args.n_test, n_calibrate=args.n_calibrate, epsilon=args.epsilon, delta=args.delta)
    report["targets"] = {}
    for target in targets:
        rows = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)  # as train-predictor: the initial weights and the batch order follow the seed
            predictor = QualityPredictor("tiny", len(costs) - 1, shapes, target=target)
            table = tables["train"]["lpips"]
            train_predictor(predictor, xs["train"], table, recipe=DEFAULT_RECIPE, epochs=DEFAULT_EPOCHS, seed=seed)
            overhead = float(count_macs(predictor, *(torch.zeros(1, *s) for s in shapes)))
            with torch.no_grad():
                test, cal = predictor(*xs["test"]), predictor(*xs["calibrate"])
            row = {"seed": seed, "spearman": error_summary(test, tables["test"]["lpips"])["spearman"]}
            for t in thresholds:
                router = CalibratedRouter(costs=costs).fit_guarantee(
                    cal, tables["calibrate"]["lpips"], [t], args.epsilon, args.delta
                )
                saved, within = _routed(router, test, tables["test"]["lpips"], costs, overhead, t)
                row[f"T{t}"] = {"macs_saved": saved, "compliance": within, "margin": router.margin(t)}
            rows.append(row)
            print(f"{target} seed {seed}: " + json.dumps(row), file=sys.stderr, flush=True)
        summary = {}
        for t in thresholds:
            saved = [r[f"T{t}"]["macs_saved"] for r in rows]
            within = [r[f"T{t}"]["compliance"] for r in rows]
            summary[f"T{t}"] = {
                "macs_saved_mean": statistics.mean(saved),
                "macs_saved_min": min(saved),
                "macs_saved_max": max(saved),
                "compliance_min": min(within),
            }
        rho = [statistics.mean(r["spearman"]) for r in rows]
        summary["spearman_mean"] = statistics.mean(rho)
        report["targets"][target] = {"seeds": rows, "summary": summary}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
