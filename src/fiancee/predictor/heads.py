"""Quality-predictor heads: the layers between the standardized inputs and the MLP (after Table S7).

A head is one class registered with ``@HEADS.add("name")``; :class:`fiancee.predictor.QualityPredictor`
(``arch="name"``) and its folded inference copy dispatch to it and switch on no name. A head says

- ``reads_features``: whether it reads the backbone's key-stage features (which every route computes
  anyway) instead of the generator's inputs;
- ``reads`` / :meth:`Head.fits`: what per-sample input shapes it reads (the one-line refusal of others),
  and ``example_shapes``, small ones it reads (the registry-parametrized tests build every head on them);
- :meth:`Head.cannot_read`: why it cannot read inputs of a task's declared kinds, if it cannot;
- ``defaults``: its ``width`` / ``hidden`` / ``max_grid`` when the caller gives none;
- :meth:`Head.build` / :meth:`Head.activation`: its body and the MLP's activation;
- :meth:`Head.run`: the body on the standardized inputs;
- :meth:`Head.fold_layer`: the first layer into which the input standardization folds exactly, if any.

The MLP after the body (Linear + activation per ``hidden`` size, then Linear to one output per exit)
and the standardization buffers are the predictor's, the same for every head.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..specs import Registry

__all__ = ["HEADS", "Head", "ResBlock", "arch_names", "get_head", "TINY_WIDTH", "TINY_HIDDEN", "TINY_GRID"]

# The entry-point group keeps the module's old name (installed plugins register under it);
HEADS = Registry("predictor head", "fiancee.predictor_heads", "a predictor head class (a fiancee.predictor_heads.Head)")

# ``tiny``'s defaults: a 1x1 conv to 32 channels, a grid of at most 4x4, one hidden layer of 64.
TINY_WIDTH, TINY_HIDDEN, TINY_GRID = 32, (64,), 4


def arch_names() -> tuple[str, ...]:
    """The registered heads in registration order (the built-ins first, as commands list them)."""
    return tuple(HEADS.in_order())


def get_head(arch: str) -> "Head":
    """A head of the registered ``arch``; refused in one line naming the registered ones."""
    if not isinstance(arch, str) or arch not in HEADS:
        raise ValueError(f"arch must be one of {arch_names()}; got {arch!r}")
    return HEADS.get(arch)()


class ResBlock(nn.Module):
    """Two 3x3 convs with a skip (Table S7's ResBlock, width kept)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class Head:
    """The interface of a head (and the defaults of Table S7's OASIS column). Stateless: the modules
    :meth:`build` returns are the predictor's (its ``body``), so their parameters are saved as ``body.*``."""

    reads_features = False
    reads = "its inputs"  # per-sample shapes it reads, for the refusal of others
    example_shapes: list[list[int]] = []  # small per-sample shapes it reads (tests build it on them)
    defaults = {"width": 64, "hidden": (512, 256, 128, 64), "max_grid": 8}

    def fits(self, shapes: list[list[int]]) -> bool:
        return True

    def cannot_read(self, kinds: list[str]) -> str | None:
        """Why this head cannot read a task whose declared input kinds are ``kinds`` (None: it can)."""
        return None

    def activation(self) -> nn.Module:
        return nn.ReLU()  # Table S7 OASIS column: Linear + ReLU

    def build(self, shapes: list[list[int]], width: int, max_grid: int) -> tuple[nn.Module | None, int]:
        """``(body, flat)``: the body (None for none) and the size of its flattened output per sample."""
        raise NotImplementedError

    def run(self, body: nn.Module | None, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The body on the standardized inputs -> ``[B, flat]``."""
        raise NotImplementedError

    def fold_layer(self, body: nn.Module | None, mlp: nn.Sequential) -> nn.Module | None:
        """The first layer, reading the inputs' channels (or vector entries) in order as its input columns,
        into which ``(x - mean) / std`` folds exactly; None keeps one fused multiply-add in front."""
        return None


@HEADS.add("mlp")
class MLPHead(Head):
    """Vector inputs (faces' z): flattened and concatenated, Linear + LeakyReLU layers narrowing to one
    output per exit (Table S7, MegaPortraits column: 512 -> 256 -> 128 -> 64 -> E)."""

    reads = "vectors"
    example_shapes = [[6], [4]]

    def fits(self, shapes):
        return all(len(s) == 1 for s in shapes)

    def activation(self):
        return nn.LeakyReLU(0.2)  # Table S7: Linear + LeakyReLU

    def build(self, shapes, width, max_grid):
        return None, sum(s[0] for s in shapes)

    def run(self, body, xs):
        return torch.cat([x.float().flatten(1) for x in xs], dim=1)  # [B, D]

    def fold_layer(self, body, mlp):
        return mlp[0]  # the first Linear: one slice of its columns per input


def _conv_body(c_in: int, h: int, w: int, width: int, max_grid: int) -> tuple[nn.Sequential, int]:
    """Conv2D + ReLU, stride-2 convs down to at most ``max_grid``, a ResBlock, flatten (Table S7)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
    while max(h, w) > max_grid:  # stride-2 convs keep the flattened size small
        layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU()]
        h, w = (h + 1) // 2, (w + 1) // 2
    layers += [ResBlock(width), nn.Flatten()]
    return nn.Sequential(*layers), width * h * w


@HEADS.add("conv")
class ConvHead(Head):
    """Semantic tasks (fashion): the label map with the noise broadcast over it as extra channels (OASIS's
    3D noise), then Table S7's OASIS column. Ahead of a zero-padded 3x3 conv the standardization does not
    fold exactly, so it keeps its multiply-add."""

    reads = "(label map [C, H, W], noise [Z])"
    example_shapes = [[5, 8, 8], [3]]

    def fits(self, shapes):
        return len(shapes) == 2 and len(shapes[0]) == 3 and len(shapes[1]) == 1

    def cannot_read(self, kinds):
        return None if kinds == ["label_map", "noise"] else "reads a label map and a noise vector"

    def build(self, shapes, width, max_grid):
        c, h, w = shapes[0]
        return _conv_body(c + shapes[1][0], h, w, width, max_grid)

    def run(self, body, xs):
        label, z = xs  # [B, C, H, W], [B, Z]
        noise = z[:, :, None, None].expand(-1, -1, *label.shape[-2:])  # OASIS-style 3D noise
        return body(torch.cat([label, noise], dim=1))  # [B, width * h * w]


@HEADS.add("features")
class FeaturesHead(Head):
    """Table S7's conv + ResBlock + MLP on the backbone's features after the key stage (the stage before
    the first exit). Table S7's OASIS predictor reads 1024 channels, the width of OASIS's first module:
    this is that option. The bank computes these features anyway and every route runs them, so they
    cost the predictor nothing extra at inference."""

    reads_features = True
    reads = "key-stage features [C, h, w]"
    example_shapes = [[8, 6, 6]]

    def fits(self, shapes):
        return len(shapes) == 1 and len(shapes[0]) == 3

    def build(self, shapes, width, max_grid):
        c, h, w = shapes[0]
        return _conv_body(c, h, w, width, max_grid)

    def run(self, body, xs):
        return body(xs[0].float())


@HEADS.add("tiny")
class TinyHead(FeaturesHead):
    """Not in the paper: a head that costs well under 1 % of a backbone on top of the key-stage features
    every route computes anyway. A 1x1 conv reduces the channels (the costly part of Table S7's head is
    its 3x3 convs at full width), average pooling bounds the grid, one hidden layer."""

    defaults = {"width": TINY_WIDTH, "hidden": TINY_HIDDEN, "max_grid": TINY_GRID}
    example_shapes = [[8, 8, 8]]

    def build(self, shapes, width, max_grid):
        c, h0, w0 = shapes[0]
        h, w = min(h0, max_grid), min(w0, max_grid)
        # A fixed average pooling where the grid divides the map (the same numbers, and exportable to
        # ONNX with a dynamic batch, which adaptive pooling to a smaller size is not); else adaptive.
        pool = nn.AvgPool2d((h0 // h, w0 // w)) if h0 % h == 0 and w0 % w == 0 else nn.AdaptiveAvgPool2d((h, w))
        return nn.Sequential(nn.Conv2d(c, width, 1), nn.ReLU(), pool, nn.Flatten()), width * h * w

    def fold_layer(self, body, mlp):
        return body[0]  # the 1x1 conv: one input column per channel
