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
        modes = _modes(module)
        module.eval()
        try:
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                module(*args, **kwargs)
        finally:
            _restore(modes)
        return counter.get_total_flops() // 2
    params = {name: _to_meta(p) for name, p in module.named_parameters(remove_duplicate=False)}
    buffers = {name: _to_meta(b) for name, b in module.named_buffers(remove_duplicate=False)}
    modes = _modes(module)
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            functional_call(
                module,
                {**params, **buffers},
                _to_meta(args),
                {k: _to_meta(v) for k, v in kwargs.items()},
                strict=False,
                tie_weights=False,
            )
    finally:
        _restore(modes)
    return counter.get_total_flops() // 2


def _modes(module: nn.Module) -> list[tuple[nn.Module, bool]]:
    # Every submodule's own mode: ``module.train(flag)`` afterwards would set them all alike, e.g. put a
    # frozen backbone shared with an exit model under construction back into training mode.
    return [(m, m.training) for m in module.modules()]


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training
