"""Layer by layer: where a route's milliseconds leave its MACs.

A route's milliseconds follow its MACs only where its layers run at the backbone's multiply-accumulates per
second. :func:`time_layers` runs one route once with forward hooks on its layers (every module without children,
and the rewritten layers of :mod:`fiancee.rewrites`, which hold the layer they replace), records each call's
inputs, then times every call alone on those inputs and counts its MACs: per layer ``ms``, ``macs`` and
``gmacs_per_s``; per route the layers' sum, and ``other_ms`` = the route's own call minus that sum (the
functional steps between layers, Python and the route's bookkeeping). Comparing the first exit with the
backbone shows which layer shapes a narrow branch runs slowly (the report's ``layers`` section; a user's own
generator gets the same table).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..metrics.macs import count_macs
from ..rewrites import ColumnsConvTranspose2d, MatmulConvTranspose2d
from .measure import Clock

__all__ = ["time_layers"]


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (ColumnsConvTranspose2d, MatmulConvTranspose2d)) or not any(True for _ in m.children())


def _describe(m: nn.Module, args: tuple) -> str:
    conv = getattr(m, "conv", m)
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    where = "" if x is None or x.dim() != 4 else f" at {x.shape[-2]}x{x.shape[-1]}"
    if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
        k = "x".join(map(str, conv.kernel_size))
        return f"{type(m).__name__} {conv.in_channels}->{conv.out_channels} k{k}{where}"
    return f"{type(m).__name__}{where}"


@torch.no_grad()
def _recorded_calls(model, inputs: tuple[torch.Tensor, ...], route: int) -> list[tuple[nn.Module, tuple]]:
    calls: list[tuple[nn.Module, tuple]] = []
    layers = {id(m): m for m in model.modules() if _is_layer(m)}
    inner = {id(c) for m in layers.values() if any(True for _ in m.children()) for c in m.modules() if c is not m}
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.append((mod, args)))
        for key, m in layers.items()
        if key not in inner  # a rewritten layer is timed whole, not the original it holds
    ]
    try:
        model(*inputs, route=route)
    finally:
        for h in hooks:
            h.remove()
    return calls


def time_layers(
    model,
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    batches: Sequence[int],
    clock: Clock,
    routes: Sequence[int] | None = None,
    step: Callable[[str], None] = lambda label: None,
) -> dict:
    """The report's ``layers`` section: per batch size and route (default: the first exit and the backbone), every
    layer call of ``model(*inputs, route=r)`` timed alone (:meth:`Clock.__call__`) with its MACs, and the route's
    whole call timed the same way."""
    routes = [0, model.num_routes - 1] if routes is None else list(routes)
    out = []
    for b in batches:
        xs = inputs_on[b]
        for r in routes:
            rows = []
            with torch.no_grad():
                for m, args in _recorded_calls(model, xs, r):
                    ms = clock(lambda m=m, args=args: m(*args))["median_ms"]
                    macs = count_macs(m, *args)
                    rows.append(
                        {
                            "layer": _describe(m, args),
                            "ms": round(ms, 4),
                            "macs": int(macs),
                            "gmacs_per_s": round(macs / ms / 1e6, 3) if ms > 0 else None,
                        }
                    )
                whole = clock(lambda r=r: model(*xs, route=r))["median_ms"]
            layers_ms = sum(row["ms"] for row in rows)
            out.append(
                {
                    "batch": int(b),
                    "route": int(r),
                    "route_ms": round(whole, 4),
                    "layers_ms": round(layers_ms, 4),
                    "other_ms": round(whole - layers_ms, 4),
                    "macs": int(sum(row["macs"] for row in rows)),
                    "layers": rows,
                }
            )
            step(f"layers route {r} batch {b}")
    return {
        "timing": "each layer call alone on the inputs it met in one call of the route, median of the bench's reps",
        "rows": out,
    }
