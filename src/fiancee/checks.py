"""Input checks shared by every public entry point.

A user's label maps, noise vectors and weights reach the generator through a handful of doors
(``StagedGenerator.forward``, ``ExitGenerator.route / mixed / trunk``, the pipeline, the loaders).
Each door calls these functions first, so bad input fails at once with a message naming what was
expected and what came, instead of deep inside a convolution (or, worse, silently: a NaN noise
vector or a label map of class indices broadcasts into a plausible-looking but wrong image).

Every function raises ``ValueError`` (``TypeError`` for a non-tensor), which the CLI prints as one line.
The scalar checks (counts, numbers in a range, integer lists, choices, flags) live in the torch-free
:mod:`fiancee.core.args`, which the exported runtime shares; they are re-exported here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .core.args import (
    check_bool,
    check_choice,
    check_counts,
    check_float,
    check_int,
    check_int_list,
    check_optional_int,
    check_unit,
)

__all__ = [
    "check_tensor",
    "check_finite",
    "check_batch",
    "check_one_hot",
    "check_spatial",
    "check_state_finite",
    "check_counts",
    "check_int",
    "check_optional_int",
    "check_float",
    "check_unit",
    "check_int_list",
    "check_choice",
    "check_bool",
]


def _describe(x: torch.Tensor) -> str:
    return f"{x.dtype} {list(x.shape)}"


def check_tensor(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor; got {type(x).__name__}")
    return x


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Floating tensors must hold no NaN or Inf (integer tensors always pass)."""
    if x.is_meta:  # shape-only tensors (MACs counting) have no values to check
        return x
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(
                f"{what} holds NaN or Inf ({int(bad.sum())} of {x.numel()} values); expected finite numbers"
            )
    return x


def check_batch(
    inputs: Sequence[torch.Tensor],
    names: Sequence[str],
    finite_known: Sequence[str] = (),
    dtype: torch.dtype | None = None,
) -> int:
    """``inputs`` match ``names`` one to one, are floating point (of ``dtype``, the model weights' type,
    when given), finite and share a non-zero batch size.

    A float64 or float16 input for float32 weights is refused rather than converted: converting
    silently would hide a copy (and, for float64, a precision the model never had); ``.float()`` is
    one call away, and autocast handles mixed precision without changing the inputs' type.

    ``finite_known`` names inputs already checked (a valid one-hot map is finite): each check is a
    pass over the tensor and a host sync, which adds up on large label maps. Returns the batch size.
    """
    if len(inputs) != len(names):
        raise ValueError(f"expected {len(names)} input(s) ({', '.join(names)}); got {len(inputs)}")
    batch = None
    for x, name in zip(inputs, names):
        check_tensor(x, name)
        if x.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension; got a scalar")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got {_describe(x)}")
        if dtype is not None and x.dtype != dtype:
            raise ValueError(
                f"{name} must be {dtype} like the model's weights; got {_describe(x)} (convert it, e.g. x.to({dtype}))"
            )
        if x.shape[0] == 0:
            raise ValueError(f"empty batch: {name} has 0 samples; pass at least one")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"inputs disagree on the batch size: {names[0]} has {batch}, {name} has {x.shape[0]}")
        batch = x.shape[0]
        if name not in finite_known:
            check_finite(x, name)
    return int(batch)


def check_one_hot(label: torch.Tensor, classes: int, what: str = "label map") -> torch.Tensor:
    """A float one-hot map ``[B, classes, H, W]``: every pixel exactly one 1, the rest 0."""
    check_tensor(label, what)
    if label.dim() != 4:
        raise ValueError(
            f"{what} must be one-hot [B, {classes}, H, W]; got {_describe(label)}"
            + (" (class indices? convert them with fiancee.tasks.fashion.one_hot)" if label.dim() == 3 else "")
        )
    if label.shape[1] != classes:
        raise ValueError(f"{what} must have {classes} class channels; got {label.shape[1]} ({_describe(label)})")
    if not label.is_floating_point():
        raise ValueError(f"{what} must be a floating-point one-hot tensor; got {_describe(label)}")
    if label.is_meta or label.numel() == 0:
        return label
    # One fused test and one host sync on the valid path: no value below 0, every pixel's largest
    # value 1 and its sum 1 means exactly one channel at 1 (NaN fails every comparison).
    sums = label.sum(dim=1)
    ok = (label.amin() >= 0) & (label.amax(dim=1) == 1).all() & (sums == 1).all()
    if not bool(ok):
        check_finite(label, what)
        raise ValueError(
            f"{what} must be one-hot (each pixel one channel at 1, the others 0); got values in "
            f"[{float(label.min()):g}, {float(label.max()):g}] and per-pixel sums in "
            f"[{float(sums.min()):g}, {float(sums.max()):g}]"
        )
    return label


def check_spatial(x: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
    """The last two dimensions equal ``size`` (the resolution the model was built for)."""
    if tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(
            f"{what} must be {size[0]}x{size[1]} (the resolution this model was built for); "
            f"got {x.shape[-2]}x{x.shape[-1]}"
        )
    return x


def check_state_finite(tensors: Mapping[str, torch.Tensor], source: str) -> Mapping[str, torch.Tensor]:
    """Weights read from ``source`` hold no NaN or Inf (a diverged or corrupted checkpoint)."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{source}: tensor {name!r} holds NaN or Inf; expected finite weights "
                "(a diverged run or a corrupted file)"
            )
    return tensors
