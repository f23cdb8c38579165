"""The staged-generator contract (paper section 3.1, Fig. 1).

A generator is a *stem*, an ordered list of *stages* and a *head*::

    h, cond = stem(*inputs)          # first features + the condition every stage sees (or None)
    for stage in stages:
        h = stage(h, cond)           # l_1 ... l_N of the paper
    image = head(h, cond)

Everything else in fiancee (exits, the mixed-exit tree, the bank, MACs) only talks to this
contract, so a user's own generator plugs in by subclassing :class:`StagedGenerator`, or by
wrapping an ``nn.Sequential`` with :class:`StagedSequential` and naming its split points.

To grow exit branches the generator must also say how to build a *narrower copy* of a stage and of
the head (:meth:`StagedGenerator.make_branch_stage`, :meth:`StagedGenerator.make_branch_head`).
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .checks import check_batch, check_int_list

__all__ = ["StagedGenerator", "StagedSequential", "Features", "narrow_sequential"]


class Features(NamedTuple):
    """What :meth:`StagedGenerator.features` kept: ``taps[k]`` = ``h`` after stage k ``[B, C_k, H_k, W_k]``,
    the condition every stage saw (or None), and the image when asked for (else None)."""

    taps: dict
    cond: torch.Tensor | None
    image: torch.Tensor | None


class StagedGenerator(nn.Module):
    """Base class of every generator fiancee can attach exits to.

    Subclasses assign ``self.stages`` (an ``nn.ModuleList`` whose modules are called as
    ``stage(h, cond)``), ``self.head`` (called as ``head(h, cond)``) and ``self.stage_channels``
    (one ``(in_channels, out_channels)`` pair per stage), and implement :meth:`stem`,
    :meth:`make_branch_stage` and :meth:`make_branch_head`.

    ``channel_unit`` tells the scale rule how channel counts were derived: OASIS computes every
    width as a multiple of a base width of 64, and the paper scales that base (64 * 1/3 -> 21, so
    1024 -> 336, Table S8). Generators without such a base keep 1 (plain ``int(c * scale)``).
    """

    stages: nn.ModuleList
    head: nn.Module
    stage_channels: list[tuple[int, int]]
    channel_unit: int = 1
    input_names: tuple[str, ...] | None = None  # what check_inputs calls each input (None: any count)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stem(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Turn the raw inputs into the first features ``h`` and the condition ``cond``."""
        raise NotImplementedError

    def make_branch_stage(self, index: int, in_channels: int, out_channels: int) -> nn.Module:
        """A narrower copy of stage ``index`` (0-based) with the given channel counts.

        It is called as ``module(h, cond)`` and must change the resolution exactly as the
        backbone's stage ``index`` does, so that a branch ends at the backbone's output size.
        """
        raise NotImplementedError

    def make_branch_head(self, in_channels: int) -> nn.Module:
        """A copy of the head taking ``in_channels`` features, called as ``module(h, cond)``."""
        raise NotImplementedError

    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes (random), used to count MACs and to smoke-test."""
        raise NotImplementedError

    def check_inputs(self, *inputs: torch.Tensor) -> int:
        """Raise a ValueError naming what was expected unless ``inputs`` can go through :meth:`stem`.

        The default asks for floating-point, finite tensors sharing a non-zero batch size; subclasses
        add their shapes, value ranges and resolution. Returns the batch size.
        """
        names = self.input_names or tuple(f"input {i}" for i in range(len(inputs)))
        return check_batch(inputs, names, dtype=self.weights_dtype())

    def weights_dtype(self) -> torch.dtype | None:
        """The floating type of the weights (what the inputs must be), None for a weightless generator."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def features(self, *inputs: torch.Tensor, taps: Sequence[int] = (), image: bool = False) -> Features:
        """Run the stem and the stages once, keeping ``h`` after every stage count in ``taps``.

        The one loop every feature reader uses (exit training's trunk, a route, the bank's keys and
        values, the predictor's key-stage features). ``taps`` count stages from 1 (0 = the stem's
        output). Without ``image`` the loop stops after the deepest tap; with it, it runs every stage
        and the head. Inputs are not checked here: callers check them once.
        """
        wanted = sorted({int(t) for t in taps})
        if wanted and not 0 <= wanted[0] <= wanted[-1] <= self.num_stages:
            raise ValueError(f"taps must be stage counts in 0..{self.num_stages}; got {list(taps)}")
        last = self.num_stages if image else (wanted[-1] if wanted else 0)
        h, cond = self.stem(*inputs)
        kept: dict[int, torch.Tensor] = {0: h} if 0 in wanted else {}
        for index in range(last):
            h = self.stages[index](h, cond)
            if index + 1 in wanted:
                kept[index + 1] = h
        return Features(kept, cond, self.head(h, cond) if image else None)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.check_inputs(*inputs)
        return self.features(*inputs, image=True).image


class _IgnoreCond(nn.Module):
    """Adapts a plain ``module(h)`` to the ``(h, cond)`` stage signature."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(h)


def _channel_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]


def narrow_sequential(piece: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    """Default narrow copy of a plain feed-forward piece (convs, norms, activations).

    Every conv / transposed conv / linear layer is rebuilt with the running channel count as input
    and ``out_channels`` as output (same kernel, stride, padding, bias); BatchNorm and InstanceNorm
    layers follow the running channel count. Other layers are copied as they are. Weights are
    freshly initialised: a branch is trained, not sliced from the backbone.
    """
    if not isinstance(piece, nn.Sequential):
        piece = nn.Sequential(piece)
    layers: list[nn.Module] = []
    channels = in_channels
    for layer in piece:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            new = type(layer)(
                channels,
                out_channels,
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=1,
                bias=layer.bias is not None,
                **({"output_padding": layer.output_padding} if isinstance(layer, nn.ConvTranspose2d) else {}),
            )
            channels = out_channels
        elif isinstance(layer, nn.Linear):
            new = nn.Linear(channels, out_channels, bias=layer.bias is not None)
            channels = out_channels
        elif isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            new = type(layer)(
                channels,
                eps=layer.eps,
                momentum=layer.momentum,
                affine=layer.affine,
                track_running_stats=layer.track_running_stats,
            )
        elif isinstance(layer, nn.Sequential):
            new = narrow_sequential(layer, channels, out_channels)
            if _channel_layers(layer):
                channels = out_channels
        else:
            if any(True for _ in layer.parameters()):
                raise TypeError(
                    f"narrow_sequential cannot narrow {type(layer).__name__}: pass narrow_stage= / "
                    "narrow_head= to StagedSequential to say how to build its narrower copy"
                )
            new = copy.deepcopy(layer)
        layers.append(new)
    return nn.Sequential(*layers)


class StagedSequential(StagedGenerator):
    """Wraps an ``nn.Sequential`` generator by naming its split points.

    ``boundaries`` are the indices where the stages start, the last one being where the head
    starts: ``seq[:b0]`` is the stem (may be empty), ``seq[b_i:b_{i+1}]`` stage ``i``, and
    ``seq[b_last:]`` the head. Stages ignore the condition (the sequential model has none).

    ``channels`` gives ``(in, out)`` per stage; when omitted it is read from one forward pass of
    ``example_input``. ``narrow_stage(index, piece, in_ch, out_ch)`` and ``narrow_head(piece, in_ch)``
    build the narrower copies; the default is :func:`narrow_sequential`.
    """

    def __init__(
        self,
        seq: nn.Sequential,
        boundaries: Sequence[int],
        *,
        example_input: torch.Tensor,
        channels: Sequence[tuple[int, int]] | None = None,
        narrow_stage: Callable[[int, nn.Module, int, int], nn.Module] | None = None,
        narrow_head: Callable[[nn.Module, int], nn.Module] | None = None,
    ):
        super().__init__()
        bounds = check_int_list(boundaries, "boundaries", minimum=0, maximum=len(seq) - 1, increasing=True)
        if len(bounds) < 2:
            raise ValueError(
                f"boundaries must be strictly increasing indices into the Sequential (length {len(seq)}), "
                f"at least two (one stage and the head); got {bounds}"
            )
        self.stem_module = seq[: bounds[0]]
        self.stages = nn.ModuleList(_IgnoreCond(seq[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
        self.head = _IgnoreCond(seq[bounds[-1] :])
        self._example_shape = tuple(example_input.shape[1:])
        self._narrow_stage = narrow_stage
        self._narrow_head = narrow_head
        if channels is None:
            channels = self._probe_channels(example_input)
        if len(channels) != len(self.stages):
            raise ValueError(
                f"channels must give one (in, out) pair per stage ({len(self.stages)}); got {len(channels)}"
            )
        self.stage_channels = [(int(a), int(b)) for a, b in channels]

    @torch.no_grad()
    def _probe_channels(self, example_input: torch.Tensor) -> list[tuple[int, int]]:
        was_training = self.training
        self.eval()
        taps = self.features(example_input[:1], taps=range(self.num_stages + 1)).taps  # after the stem, every stage
        channels = [(int(taps[i].shape[1]), int(taps[i + 1].shape[1])) for i in range(self.num_stages)]
        self.train(was_training)
        return channels

    input_names = ("x",)

    def check_inputs(self, x: torch.Tensor, *rest: torch.Tensor) -> int:
        batch = super().check_inputs(x, *rest)
        if tuple(x.shape[1:]) != self._example_shape:
            raise ValueError(
                f"x must be [B, {', '.join(map(str, self._example_shape))}] like the example input; got {list(x.shape)}"
            )
        return batch

    def stem(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.stem_module(x), None

    def make_branch_stage(self, index: int, in_channels: int, out_channels: int) -> nn.Module:
        piece = self.stages[index].module
        if self._narrow_stage is not None:
            return _IgnoreCond(self._narrow_stage(index, piece, in_channels, out_channels))
        return _IgnoreCond(narrow_sequential(piece, in_channels, out_channels))

    def make_branch_head(self, in_channels: int) -> nn.Module:
        piece = self.head.module
        if self._narrow_head is not None:
            return _IgnoreCond(self._narrow_head(piece, in_channels))
        # The head keeps its output channels (the image's), only its input narrows.
        out = _channel_layers(piece)
        if not out:
            raise TypeError("the head has no conv/linear layer to narrow; pass narrow_head=")
        return _IgnoreCond(
            narrow_sequential(
                piece, in_channels, out[-1].out_features if isinstance(out[-1], nn.Linear) else out[-1].out_channels
            )
        )

    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch_size, *self._example_shape, device=device),)
