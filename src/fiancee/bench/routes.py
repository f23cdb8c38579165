"""Routes: milliseconds of every route beside its MACs.

Median wall time of ``ExitGenerator.route(*inputs, route=r)`` for every route (shallowest exit first, the
backbone last) at every batch size, over ``reps`` timed calls after ``warmup`` untimed ones
(:func:`fiancee.timing.time_ms`), next to its MACs (:meth:`ExitGenerator.route_macs`).
``latency_ratio = latency(route) / latency(backbone)`` sits beside ``macs_ratio = MACs(route) / MACs(backbone)``:
where latency follows MACs the two agree.
"""

from __future__ import annotations

from typing import Callable

import torch

from .measure import Clock

__all__ = ["time_routes"]


def time_routes(
    model,
    batches: list[int],
    ratio_batch: int,
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    clock: Clock,
    step: Callable[[str], None],
) -> tuple[list[dict], dict[int, list[dict]]]:
    """The routes phase: the report's ``routes`` (ratios read at ``ratio_batch``) and every timing,
    ``{batch: [time_ms of route 0, 1, ...]}``, which the later phases compare against."""
    from ..metrics.macs import count_macs

    # MACs: counted on shapes (meta tensors), per sample.
    macs = [int(m) for m in model.route_macs(1)]
    macs[-1] = int(count_macs(model.backbone, *model.backbone.example_inputs(1)))
    route_ms: dict[int, list[dict]] = {}
    for b in batches:
        route_ms[b] = []
        for r in range(model.num_routes):
            route_ms[b].append(clock(lambda: model.route(*inputs_on[b], route=r)))
            step(f"route {r} batch {b}")
    routes = [_route_entry(model, r, macs, batches, ratio_batch, route_ms) for r in range(model.num_routes)]
    return routes, route_ms


def _route_entry(
    model, r: int, macs: list[int], batches: list[int], ratio_batch: int, route_ms: dict[int, list[dict]]
) -> dict:
    per_batch = {}
    for b in batches:
        t = route_ms[b][r]
        per_batch[str(b)] = {
            "median_ms": round(t["median_ms"], 4),
            "iqr_ms": round(t["iqr_ms"], 4),
            "per_sample_ms": round(t["median_ms"] / b, 4),
            "latency_ratio": round(t["median_ms"] / route_ms[b][-1]["median_ms"], 4),
        }
    backbone_route = r == model.num_routes - 1
    return {
        "route": r,
        "name": "backbone" if backbone_route else f"exit after stage {model.attach_after[r]}",
        "after_stage": None if backbone_route else model.attach_after[r],
        "macs": macs[r],
        "macs_ratio": round(macs[r] / macs[-1], 4),
        "latency_ms": per_batch[str(ratio_batch)]["median_ms"],
        "latency_ratio": per_batch[str(ratio_batch)]["latency_ratio"],
        "per_batch": per_batch,
    }
