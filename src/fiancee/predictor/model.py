"""The quality predictor network and its folded inference copy (paper section 3.2, Table S7).

:class:`QualityPredictor` is a head of :data:`fiancee.predictor.heads.HEADS` (``arch``), then an MLP to one
output per exit; inputs and targets are standardized with statistics of the training table kept as buffers
(so the saved predictor needs nothing else). :class:`FoldedPredictor` is the same function with the
standardization folded into the first and last layers, what the pipeline runs.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..checks import check_finite
from .folder import TARGETS, read_predictor, save_predictor
from .heads import HEADS, arch_names, get_head

__all__ = ["ARCHS", "FEATURE_ARCHS", "TARGETS", "LOG_FLOOR", "QualityPredictor", "FoldedPredictor", "load_predictor"]

# The built-in heads' names, for compatibility (the registry is the source: ``arch_names()`` includes heads
# registered later, these tuples do not).
ARCHS = arch_names()
FEATURE_ARCHS = tuple(a for a in ARCHS if HEADS.get(a).reads_features)  # read the key-stage features

# What the network regresses: ``lpips`` itself (the paper's predictor, section 3.2), or ``log``, the log of LPIPS
# floored at LOG_FLOOR (outputs are ``exp`` of it, still in LPIPS units). A router decides at the low end of the
# scale (at T = 0.1 an exit is taken when its prediction plus the margin is under T), where the LPIPS of
# different tiles differ by factors, not by hundredths: on Real-ESRGAN's tiles the log target lets the
# calibrated router send more tiles early under the same guarantee (docs/upscale.md). TARGETS: fiancee.predictor.folder.
LOG_FLOOR = 1e-3  # LPIPS below it route alike at any threshold a router is fitted for


class QualityPredictor(nn.Module):
    """Predicted LPIPS ``[B, E]`` of the E exit branches (the backbone's is 0 and not predicted).

    ``input_shapes`` are the per-sample shapes of what the predictor reads: ``[[z_dim]]`` for ``mlp``
    on faces, ``[[C, H, W], [z_dim]]`` (label map, noise) for ``conv``, ``[[C, h, w]]`` (key-stage
    features) for ``features``. ``target``: what the network regresses (:data:`TARGETS`); the output is LPIPS
    either way. All constructor arguments are JSON values (saved in config.json).
    """

    def __init__(
        self,
        arch: str,
        num_exits: int,
        input_shapes: Sequence[Sequence[int]],
        *,
        width: int | None = None,
        hidden: Sequence[int] | None = None,
        max_grid: int | None = None,
        target: str = "lpips",
    ):
        super().__init__()
        head = get_head(arch)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
        self.target = target
        if int(num_exits) < 1:
            raise ValueError(f"num_exits must be >= 1; got {num_exits}")
        self.arch, self.num_exits, self.head = arch, int(num_exits), head  # ``head`` holds no modules
        self.input_shapes = [list(int(d) for d in s) for s in input_shapes]
        width = head.defaults["width"] if width is None else width
        hidden = head.defaults["hidden"] if hidden is None else hidden
        max_grid = head.defaults["max_grid"] if max_grid is None else max_grid
        self.width, self.hidden, self.max_grid = int(width), [int(h) for h in hidden], int(max_grid)
        shapes = self.input_shapes
        if not head.fits(shapes):
            raise ValueError(f"arch {arch!r} reads {head.reads}; got input shapes {shapes}")
        # Parameters in this order: the head's body, then the MLP (the same initial weights for one seed).
        self.body, flat = head.build(shapes, self.width, self.max_grid)
        act = head.activation
        mlp: list[nn.Module] = []
        for size in self.hidden:
            mlp += [nn.Linear(flat, size), act()]
            flat = size
        mlp.append(nn.Linear(flat, self.num_exits))
        self.mlp = nn.Sequential(*mlp)
        # Standardization statistics of the training table (set by ``fit_statistics``).
        for i, s in enumerate(shapes):
            c = s[0]
            self.register_buffer(f"in{i}_mean", torch.zeros(c))
            self.register_buffer(f"in{i}_std", torch.ones(c))
        self.register_buffer("y_mean", torch.zeros(self.num_exits))
        self.register_buffer("y_std", torch.ones(self.num_exits))

    def config(self) -> dict:
        return {
            "arch": self.arch,
            "num_exits": self.num_exits,
            "input_shapes": self.input_shapes,
            "width": self.width,
            "hidden": self.hidden,
            "max_grid": self.max_grid,
            **({"target": self.target} if self.target != "lpips" else {}),  # folders before targets: lpips
        }

    def save_pretrained(
        self, out, *, fingerprints: dict[str, str], extra: dict | None = None, files: dict | None = None
    ):
        """Write the predictor's folder (:func:`fiancee.predictor.folder.save_predictor`: ``config.json`` with
        the header ``fiancee-predictor``, ``weights.safetensors``); ``fingerprints`` ties it to the backbone and
        exit weights whose LPIPS it learned (:func:`fiancee.predictor.folder.exits_fingerprints`)."""
        return save_predictor(self, out, fingerprints=fingerprints, extra=extra, files=files)

    @classmethod
    def from_pretrained(cls, path, model=None, device: str | torch.device = "cpu") -> "QualityPredictor":
        """The predictor of a folder :meth:`save_pretrained` wrote (eval mode); with ``model`` (an
        :class:`fiancee.exits.ExitGenerator`) its backbone and exit fingerprints must be the recorded ones.
        :func:`load_predictor` also returns the folder's config."""
        return read_predictor(path, cls, model, device)[0]

    @property
    def reads_features(self) -> bool:
        return self.head.reads_features

    def to_target(self, lpips: torch.Tensor) -> torch.Tensor:
        """LPIPS as the network regresses it (before standardization): itself, or its floored log."""
        lpips = lpips.float()
        return lpips.clamp_min(LOG_FLOOR).log() if self.target == "log" else lpips

    def from_target(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_target` (above the floor): predictions in LPIPS units."""
        return y.exp() if self.target == "log" else y

    @torch.no_grad()
    def fit_statistics(self, xs: Sequence[torch.Tensor], lpips: torch.Tensor) -> None:
        """Per-channel mean / std of the inputs and per-exit mean / std of the targets (:meth:`to_target`)."""
        for i, x in enumerate(xs):
            dims = [0] + list(range(2, x.dim()))  # per channel (or per feature for vectors)
            getattr(self, f"in{i}_mean").copy_(x.float().mean(dim=dims))
            getattr(self, f"in{i}_std").copy_(x.float().std(dim=dims).clamp_min(1e-6))
        y = self.to_target(lpips)
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0).clamp_min(1e-6))

    def _check(self, xs: Sequence[torch.Tensor], finite: bool = True) -> None:
        if len(xs) != len(self.input_shapes) or any(list(x.shape[1:]) != s for x, s in zip(xs, self.input_shapes)):
            raise ValueError(
                f"{self.arch} predictor expects inputs of per-sample shapes {self.input_shapes}; "
                f"got {[list(x.shape[1:]) for x in xs]}"
            )
        for i, x in enumerate(xs if finite else ()):
            check_finite(x, f"predictor input {i}")

    def standardized(self, *xs: torch.Tensor) -> torch.Tensor:
        """The network's raw output ``[B, E]`` (the standardized target; the loss is taken here)."""
        self._check(xs)
        return self._raw(xs)

    def _raw(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        norm = []
        for i, x in enumerate(xs):
            shape = [1, -1] + [1] * (x.dim() - 2)
            norm.append(
                (x.float() - getattr(self, f"in{i}_mean").view(shape)) / getattr(self, f"in{i}_std").view(shape)
            )
        return self.mlp(self.head.run(self.body, norm))  # [B, E]

    def forward(self, *xs: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Predicted LPIPS ``[B, E]``.

        In eval mode without autograd (how the pipeline runs it) the standardization is folded into the
        weights (:meth:`folded`): every input pays the predictor, and at batch 1 its elementwise steps and
        the input check cost more time than its layers.
        ``check=False`` skips the finiteness check of the inputs (a host sync), for callers that computed
        them from checked inputs (the pipeline's trunk); their shapes are always checked.
        """
        self._check(xs, finite=check)
        if self.training or torch.is_grad_enabled():
            return self.from_target(self._raw(xs) * self.y_std + self.y_mean)
        return self.folded()(*xs)

    def folded(self) -> "FoldedPredictor":
        """The same function with the standardization folded into the first and last layers (exact up
        to float rounding), rebuilt when a weight or buffer changed since the last call."""
        state = list(self.parameters()) + list(self.buffers())
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in state)
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != key:
            cached = (key, FoldedPredictor(self))
            self.__dict__["_folded"] = cached  # not a submodule: never saved, never trained
        return cached[1]


class FoldedPredictor(nn.Module):
    """Inference copy of a :class:`QualityPredictor`: ``(x - mean) / std`` folded into the first layer
    where that is exact (the head's :meth:`~fiancee.predictor.heads.Head.fold_layer`: a 1x1 conv for ``tiny``,
    the first Linear for ``mlp``; ahead of a zero-padded 3x3 conv it is not, so ``conv`` / ``features`` keep
    one fused multiply-add), and ``y * y_std + y_mean`` into the last Linear. Built by
    :meth:`QualityPredictor.folded`."""

    @torch.no_grad()
    def __init__(self, p: QualityPredictor):
        super().__init__()
        self.arch, self.head, self.log = p.arch, p.head, p.target == "log"
        self.body = copy.deepcopy(p.body)
        self.mlp = copy.deepcopy(p.mlp)
        scales = [1.0 / getattr(p, f"in{i}_std") for i in range(len(p.input_shapes))]
        shifts = [-getattr(p, f"in{i}_mean") * s for i, s in enumerate(scales)]
        self.pre: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        first = p.head.fold_layer(self.body, self.mlp)
        if first is not None:
            # The first layer's input columns: the 1x1 conv's channels, or the Linear's slices of the
            # concatenated vectors, one slice per input.
            w, start = first.weight.view(first.weight.shape[0], -1), 0  # [out, in]
            for sc, sh in zip(scales, shifts):
                part = w[:, start : start + sc.numel()]
                first.bias.add_(part @ sh)
                part.mul_(sc)
                start += sc.numel()
        else:
            self.pre = [(sc, sh) for sc, sh in zip(scales, shifts)]
        last = self.mlp[-1]
        last.weight.mul_(p.y_std[:, None])
        last.bias.mul_(p.y_std).add_(p.y_mean)
        self.requires_grad_(False)  # an inference copy: tracing (ONNX export) sees plain constants

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            xs = tuple(
                torch.addcmul(sh.view(1, -1, *[1] * (x.dim() - 2)), x.float(), sc.view(1, -1, *[1] * (x.dim() - 2)))
                for x, (sc, sh) in zip(xs, self.pre)
            )
        y = self.mlp(self.head.run(self.body, xs))
        return y.exp() if self.log else y


def load_predictor(path, model=None, device: str | torch.device = "cpu") -> tuple[QualityPredictor, dict]:
    """``(predictor, config)`` from a folder :meth:`QualityPredictor.save_pretrained` wrote; with ``model`` the
    backbone and exit fingerprints must match (:func:`fiancee.predictor.folder.read_predictor`)."""
    return read_predictor(path, QualityPredictor, model, device)
