"""RRDBNet x4 (ESRGAN / Real-ESRGAN's generator) as a staged generator.

The network (Wang et al., ESRGAN 2018; Real-ESRGAN 2021)::

    x [B, 3, H, W] RGB
    feat = conv_first(x)                                  3 -> 64, kept for the global skip
    h = RRDB x 23 (feat)                                  3 residual dense blocks each (growth 32)
    h = conv_body(h) + feat
    nearest x2 -> conv_up1 -> lrelu -> nearest x2 -> conv_up2 -> lrelu -> conv_hr -> lrelu -> conv_last
    y [B, 3, 4H, 4W]

Parameters carry the usual names (``conv_first``, ``body.{i}.rdb{1,2,3}.conv{1..5}``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``), so an official state dict loads with
``strict=True``. The staged view (paper section 3.1): stem = ``conv_first`` (its output is also the
condition every stage sees, which the head adds back: the global skip), stages = consecutive groups of
RRDB blocks (``stage_blocks``), head = ``conv_body`` + skip + the x4 tail. Stages and head are views
onto those modules (stored outside the module registry), so every weight has exactly one name.

Images follow the project's convention, [-1, 1] in and out: the stem maps the input to the [0, 1]
RRDBNet was trained on and the head maps its output back (``(y + 1) / 2`` is Real-ESRGAN's image).

Exit branches (paper S1.1.1 mirrors every remaining stage at a width factor): 23 identical blocks make
that rule too deep to save much, so a branch copy of a stage keeps ``branch_blocks[i]`` of its blocks
(its first ones; default: none but the last stage's, so every branch is "the last stage's blocks + the
tail", whatever stage it follows) at full width, and the branch's tail can be narrower
(``tail_width``). With ``--init inherit`` the kept blocks and the tail start from the backbone's own.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..staged import StagedGenerator

__all__ = ["ResidualDenseBlock", "RRDB", "RRDBNet", "REALESRGAN_X4PLUS", "TAIL_PIXELS", "conv_names"]

# RealESRGAN_x4plus: 23 blocks, 64 features, growth 32 (16,697,987 parameters).
REALESRGAN_X4PLUS = {"num_block": 23, "num_feat": 64, "num_grow": 32}


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each reading the block input and every earlier output; out * 0.2 + in."""

    def __init__(self, num_feat: int = 64, num_grow: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow, num_grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow, num_grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow, num_grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, out * 0.2 + in."""

    def __init__(self, num_feat: int = 64, num_grow: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class _Group(nn.Module):
    """A stage: consecutive RRDB blocks, called as ``stage(h, cond)`` (cond, the skip, is not used here)."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.seq = seq

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.seq(h)


# Input pixels (rows x H x W) the head runs at once. Its 64-channel maps at 4x the tile's side (128 x 128 for a
# 32 x 32 tile, 4 MiB a row) outgrow the CPU's caches over a batch: timed per tile on one thread (oneDNN), the
# head ran as fast per MAC as the RRDB blocks on up to 4096 input pixels at a time (four 32 x 32 tiles, one
# 64 x 64) and 1.6-1.9x slower per tile on 8 or 16 tiles at once. An exit pays the head as the backbone does,
# on about a third of the MACs, so a slow head takes more off an exit's speed-up than off the backbone's.
TAIL_PIXELS = 4096


class _Tail(nn.Module):
    """The head: ``conv_body`` + the global skip (``cond`` = the stem's features), then the x4 upsampler.
    Returns the image in [-1, 1]. A batch runs in chunks of at most :data:`TAIL_PIXELS` input pixels (one row
    at least): the same arithmetic, row by row, in the caches' reach."""

    def __init__(
        self, conv_body: nn.Conv2d, conv_up1: nn.Conv2d, conv_up2: nn.Conv2d, conv_hr: nn.Conv2d, conv_last: nn.Conv2d
    ):
        super().__init__()
        self.conv_body, self.conv_up1, self.conv_up2 = conv_body, conv_up1, conv_up2
        self.conv_hr, self.conv_last = conv_hr, conv_last

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._rows(h, cond)  # a traced or compiled graph keeps a dynamic batch: no loop over its rows
        rows = max(1, TAIL_PIXELS // (h.shape[-2] * h.shape[-1]))
        if h.shape[0] <= rows:
            return self._rows(h, cond)
        return torch.cat([self._rows(a, c) for a, c in zip(h.split(rows), cond.split(rows))])

    def _rows(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv_body(h) + cond  # [B, 64, H, W]
        h = F.leaky_relu(self.conv_up1(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)  # [B, C, 2H, 2W]
        h = F.leaky_relu(self.conv_up2(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)  # [B, C, 4H, 4W]
        y = self.conv_last(F.leaky_relu(self.conv_hr(h), 0.2))  # [B, 3, 4H, 4W], about [0, 1]
        return y * 2 - 1


def _tail_convs(in_channels: int, num_feat: int, width: int) -> list[nn.Conv2d]:
    return [
        nn.Conv2d(in_channels, num_feat, 3, 1, 1),
        nn.Conv2d(num_feat, width, 3, 1, 1),
        nn.Conv2d(width, width, 3, 1, 1),
        nn.Conv2d(width, width, 3, 1, 1),
        nn.Conv2d(width, 3, 3, 1, 1),
    ]


class RRDBNet(StagedGenerator):
    """RRDBNet x4: x ``[B, 3, H, W]`` in [-1, 1] -> ``[B, 3, 4H, 4W]`` in about [-1, 1].

    ``stage_blocks`` groups the ``num_block`` blocks into stages (must add up to ``num_block``);
    ``branch_blocks`` says how many blocks a branch's copy of each stage keeps (default: 0 for every
    stage but the last, which keeps all of its blocks); ``tail_width`` the channels of a branch's
    upsampler (default ``num_feat``); ``example_size`` the tile side used to count MACs.
    """

    input_names = ("x",)

    def __init__(
        self,
        num_block: int = 23,
        num_feat: int = 64,
        num_grow: int = 32,
        stage_blocks: Sequence[int] = (4, 4, 4, 4, 5, 2),
        branch_blocks: Sequence[int] | None = None,
        tail_width: int | None = None,
        example_size: int = 32,
    ):
        super().__init__()
        stage_blocks = [int(b) for b in stage_blocks]
        if any(b <= 0 for b in stage_blocks) or sum(stage_blocks) != num_block:
            raise ValueError(f"stage_blocks must be positive block counts adding up to {num_block}; got {stage_blocks}")
        keep = (
            [0] * (len(stage_blocks) - 1) + [stage_blocks[-1]]
            if branch_blocks is None
            else [int(b) for b in branch_blocks]
        )
        if len(keep) != len(stage_blocks) or any(not 0 <= k <= b for k, b in zip(keep, stage_blocks)):
            raise ValueError(f"branch_blocks must give, per stage, a count in 0..its blocks {stage_blocks}; got {keep}")
        self.num_feat, self.num_grow = num_feat, num_grow
        self.stage_blocks, self.branch_blocks = stage_blocks, keep
        self.tail_width = int(tail_width or num_feat)
        self.example_size = int(example_size)
        self.image_channels = 3
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow) for _ in range(num_block)))
        self.conv_body, self.conv_up1, self.conv_up2, self.conv_hr, self.conv_last = _tail_convs(
            num_feat, num_feat, num_feat
        )
        bounds = [0]
        for b in stage_blocks:
            bounds.append(bounds[-1] + b)
        object.__setattr__(
            self, "stages", nn.ModuleList(_Group(self.body[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
        )
        object.__setattr__(
            self, "head", _Tail(self.conv_body, self.conv_up1, self.conv_up2, self.conv_hr, self.conv_last)
        )
        self.stage_channels = [(num_feat, num_feat)] * len(stage_blocks)

    def check_inputs(self, *inputs: torch.Tensor) -> int:
        batch = super().check_inputs(*inputs)
        (x,) = inputs
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 1:
            raise ValueError(f"x must be RGB tiles [B, 3, H, W] in [-1, 1]; got {list(x.shape)}")
        return batch

    def stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.conv_first((x + 1) * 0.5)  # [B, 64, H, W]; RRDBNet reads [0, 1]
        return feat, feat

    def make_branch_stage(self, index: int, in_channels: int, out_channels: int) -> nn.Module:
        # A residual group keeps its width: a branch narrows by depth (branch_blocks) and in its tail.
        if in_channels != self.num_feat or out_channels != self.num_feat:
            raise ValueError(
                f"an RRDB branch block keeps {self.num_feat} channels (residual blocks); got "
                f"{in_channels} -> {out_channels}: use scale 1 and min_channels {self.num_feat}"
            )
        return _Group(nn.Sequential(*(RRDB(self.num_feat, self.num_grow) for _ in range(self.branch_blocks[index]))))

    def make_branch_head(self, in_channels: int) -> nn.Module:
        return _Tail(*_tail_convs(in_channels, self.num_feat, self.tail_width))

    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        s = self.example_size
        return (torch.rand(batch_size, 3, s, s, device=device) * 2 - 1,)


def conv_names(num_block: int = 23) -> list[str]:
    """Parameter prefixes of every convolution of RRDBNet in forward order (how ncnn's graph lists them)."""
    names = ["conv_first"]
    for i in range(num_block):
        names += [f"body.{i}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
