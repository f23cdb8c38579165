"""Multiply-accumulate counts (the paper's "GFLOPs" are GMACs).

Counted with ``torch.utils.flop_counter`` (which reports FLOPs = 2 x MACs for matmuls and convs)
and divided by 2. Element-wise work (norms, activations, upsampling) is not counted, as in the paper.
The count runs on the ``meta`` device: shapes only, no arithmetic, and the model's own weights are
left untouched, so it takes milliseconds even for the paper-scale generators.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs"]


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty_like(x, device="meta")
    if isinstance(x, (tuple, list)):
        return type(x)(_to_meta(v) for v in x)
    return x


def count_macs(module: nn.Module, *args: Any, meta: bool = True, **kwargs: Any) -> int:
    """MACs of ``module(*args, **kwargs)`` in eval mode.

    With ``meta=True`` (default) weights and inputs are replaced by meta tensors: shapes only.
    Pass ``meta=False`` when the forward depends on tensor *values* (the mixed-exit tree reads the
    exit of every sample), at the price of really running it.
    """
    if not meta:
        was_training = module.training
        module.eval()
        try:
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                module(*args, **kwargs)
        finally:
            module.train(was_training)
        return counter.get_total_flops() // 2
    params = {name: _to_meta(p) for name, p in module.named_parameters(remove_duplicate=False)}
    buffers = {name: _to_meta(b) for name, b in module.named_buffers(remove_duplicate=False)}
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            functional_call(module, {**params, **buffers}, _to_meta(args), {k: _to_meta(v) for k, v in kwargs.items()},
                            strict=False, tie_weights=False)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


# The paper's GFLOPs (= GMACs) per route, shallowest exit first, the backbone last.
# OASIS: Table 1 (min channels 64). MegaPortraits G2D: Table 2 (min channels 24).
PAPER_GMACS: dict[str, dict[str, list[float]]] = {
    "oasis": {"1/2": [157, 171, 193, 227, 319], "1/3": [137, 154, 182, 227, 319], "1/4": [120, 138, 168, 227, 319]},
    "g2d": {"1/3": [65, 100, 136, 213], "1/6": [51, 89, 135, 213], "1/15": [47, 85, 127, 213]},
}

PAPER_MIN_CHANNELS = {"oasis": 64, "g2d": 24}


def macs_table(backbone: str, scale: str, min_channels: int, size: str = "paper") -> dict:
    """MACs of the backbone and of every exit route of a reference backbone, next to the paper's.

    Returns ``{"backbone", "scale", "min_channels", "unit", "backbone_gmacs", "routes": [GMACs, ...],
    "exits": [...], "paper_routes": [...] | None, "paper_backbone_gmacs": ... | None}``; ``routes``
    lists the exits shallowest first and excludes the backbone.
    """
    from ..backbones import build_backbone
    from ..exits import ExitGenerator, parse_scale

    sf = parse_scale(scale)
    model = build_backbone(backbone, size=size, device="meta")
    with torch.device("meta"):
        exits = ExitGenerator(model, model.config.exits, sf, min_channels)
    gmacs = [m / 1e9 for m in exits.route_macs()]
    key = f"{sf.numerator}/{sf.denominator}"
    paper = PAPER_GMACS.get(backbone, {}).get(key) if size == "paper" and min_channels == PAPER_MIN_CHANNELS.get(backbone) else None
    return {
        "backbone": backbone,
        "size": size,
        "scale": key,
        "min_channels": min_channels,
        "unit": "GMACs (multiply-accumulates = FLOPs / 2; the paper's 'GFLOPs')",
        "exits_after_stages": list(exits.exits),
        "backbone_gmacs": gmacs[-1],
        "routes": gmacs[:-1],
        "branch_channels": [[list(c) for c in b.block_channels] for b in exits.branches],
        "paper_backbone_gmacs": paper[-1] if paper else None,
        "paper_routes": paper[:-1] if paper else None,
    }
