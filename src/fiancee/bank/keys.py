"""Key functions of global mode (paper S1.2.1): features after the key stage ``[B, C, H, W]`` -> keys ``[B, D]``.

Named, so a saved bank says which one it was built with and a loaded bank uses the same one. They are
named like tasks (:mod:`fiancee.specs`): a built-in name, ``package.module:attr`` naming a callable, or an
entry point of group ``fiancee.key_functions``; a bank stores the spec it was built with.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..specs import Registry, SpecError

__all__ = ["KEY_FUNCTIONS", "register_key_function", "key_function"]


def _pool(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def key(h: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(h.float(), size).flatten(1)  # [B, C * size * size]

    return key


KEY_FUNCTIONS = Registry("key function", "fiancee.key_functions", "a callable [B, C, H, W] -> [B, D]")
KEY_FUNCTIONS.register("mean", _pool(1))  # channel means: appearance, no layout
KEY_FUNCTIONS.register("pool2", _pool(2))  # 2x2 average pooling keeps the coarse layout (pose) as well
KEY_FUNCTIONS.register("flatten", lambda h: h.float().flatten(1))


def register_key_function(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Add a key function for global mode (S1.2.1 uses head angles + expression codes as keys).

    A bank built with it stores ``name``; a fresh process must register it again, or name it
    ``package.module:attr`` (resolved wherever the module is importable).
    """
    if not name or not callable(fn):
        raise ValueError("a key function needs a name and a callable [B, C, H, W] -> [B, D]")
    KEY_FUNCTIONS.register(name, fn)


def key_function(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The key function ``spec`` names (registered name, ``module:attr`` or entry point)."""
    fn = KEY_FUNCTIONS.lookup(spec)
    if not callable(fn):
        raise SpecError(f"key function {spec!r} names a {type(fn).__name__}; expected {KEY_FUNCTIONS.expect}")
    return fn
