"""The quality predictor: inputs -> predicted LPIPS of every exit (paper section 3.2, S1.1.2, S1.2.2).

Architectures (after Table S7), chosen with ``arch``: the heads registered in
:data:`fiancee.predictor_heads.HEADS` (a new head is one class there or in any module, with one decorator):

- ``"mlp"``: vector inputs (faces' z): flatten, then Linear + LeakyReLU layers narrowing to one output
  per exit (Table S7, MegaPortraits column: 512 -> 256 -> 128 -> 64 -> E).
- ``"conv"``: semantic tasks (fashion): the label map with the noise broadcast over it as extra channels
  (OASIS's 3D noise), Conv2D + ReLU, stride-2 convs down to at most 8x8, a ResBlock, flatten, and a
  ReLU MLP (Table S7, OASIS column: Conv2D + ReLU, ResBlock, Flatten, Linear + ReLU ... Linear).
- ``"features"``: the same conv + ResBlock + MLP on the backbone's features after the key stage (the
  stage before the first exit). Table S7's OASIS predictor reads 1024 channels, the width of OASIS's
  first module: this is that option. The bank computes these features anyway and every route runs
  them, so they cost the predictor nothing extra at inference.
- ``"tiny"`` (the default): a 1x1 conv, average pooling to at most 4x4 and one hidden layer on the same
  key-stage features, well under 1 % of a backbone.

Targets and inputs are standardized with statistics of the training table kept as buffers (so the
saved predictor needs nothing else); ``forward`` returns LPIPS in LPIPS units ``[B, E]``.

Training set (S1.1.2): the inputs x the true LPIPS of every exit against the backbone, built and
cached by :func:`fiancee.tables.build_lpips_table`; :func:`fiancee.train.predictor.train_predictor_for_run`
trains a predictor for an exit run. This module only holds the model and takes tensors.

Recipes (:func:`train_predictor`):

- ``"mse-sgd"`` (OASIS, Eq. S2): MSE, SGD lr 0.01 with momentum 0.9, cosine schedule to 0.
- ``"mae-adamw"`` (MegaPortraits, S1.2.2): MAE, AdamW betas (0.05, 0.999), lr 2e-4, weight decay 1e-2,
  cosine schedule to 1e-6.

Both losses are taken on per-exit standardized LPIPS (the paper's loss divided by each exit's target
variance, resp. std): one exit with larger LPIPS does not drown the others, and SGD at lr 0.01 sees
gradients of order one.

Error (Tables S3, S4): :func:`fiancee.tables.predictor_error` gives the mean relative error ``|P - S| / S`` per exit
on held-out inputs: held-out maps with the training noises and with new noises (fashion), held-out z
(faces).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_counts, check_finite
from .io import (atomic_folder, build_bounded, cache_dir, read_whole_folder, check_replaceable, config_int, config_int_list, config_str, load_tensors, read_json,
                 read_manifest, resolve_inside, save_tensors, tensor_fingerprint, write_json)
from .predictor_heads import HEADS, TINY_GRID, TINY_HIDDEN, TINY_WIDTH, ResBlock, arch_names, get_head  # noqa: F401

__all__ = [
    "ARCHS", "FEATURE_ARCHS", "RECIPES", "QualityPredictor", "FoldedPredictor", "ResBlock", "key_features", "predictor_features", "predict",
    "train_predictor", "save_predictor", "load_predictor", "exits_fingerprints", "relative_error", "error_summary",
]

# The built-in heads' names, for compatibility (the registry is the source: ``arch_names()`` includes heads
# registered later, these tuples do not).
ARCHS = arch_names()
FEATURE_ARCHS = tuple(a for a in ARCHS if HEADS.get(a).reads_features)  # read the key-stage features
RECIPES = ("mse-sgd", "mae-adamw")
FORMAT = 1


class QualityPredictor(nn.Module):
    """Predicted LPIPS ``[B, E]`` of the E exit branches (the backbone's is 0 and not predicted).

    ``input_shapes`` are the per-sample shapes of what the predictor reads: ``[[z_dim]]`` for ``mlp``
    on faces, ``[[C, H, W], [z_dim]]`` (label map, noise) for ``conv``, ``[[C, h, w]]`` (key-stage
    features) for ``features``. All constructor arguments are JSON values (saved in config.json).
    """

    def __init__(self, arch: str, num_exits: int, input_shapes: Sequence[Sequence[int]], *,
                 width: int | None = None, hidden: Sequence[int] | None = None, max_grid: int | None = None):
        super().__init__()
        head = get_head(arch)
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
        return {"arch": self.arch, "num_exits": self.num_exits, "input_shapes": self.input_shapes,
                "width": self.width, "hidden": self.hidden, "max_grid": self.max_grid}

    @property
    def reads_features(self) -> bool:
        return self.head.reads_features

    @torch.no_grad()
    def fit_statistics(self, xs: Sequence[torch.Tensor], lpips: torch.Tensor) -> None:
        """Per-channel mean / std of the inputs and per-exit mean / std of the targets."""
        for i, x in enumerate(xs):
            dims = [0] + list(range(2, x.dim()))  # per channel (or per feature for vectors)
            getattr(self, f"in{i}_mean").copy_(x.float().mean(dim=dims))
            getattr(self, f"in{i}_std").copy_(x.float().std(dim=dims).clamp_min(1e-6))
        self.y_mean.copy_(lpips.float().mean(0))
        self.y_std.copy_(lpips.float().std(0).clamp_min(1e-6))

    def _check(self, xs: Sequence[torch.Tensor], finite: bool = True) -> None:
        if len(xs) != len(self.input_shapes) or any(list(x.shape[1:]) != s for x, s in zip(xs, self.input_shapes)):
            raise ValueError(f"{self.arch} predictor expects inputs of per-sample shapes {self.input_shapes}; "
                             f"got {[list(x.shape[1:]) for x in xs]}")
        for i, x in enumerate(xs if finite else ()):
            check_finite(x, f"predictor input {i}")

    def standardized(self, *xs: torch.Tensor) -> torch.Tensor:
        """The network's raw output ``[B, E]`` (standardized LPIPS; the loss is taken here)."""
        self._check(xs)
        return self._raw(xs)

    def _raw(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        norm = []
        for i, x in enumerate(xs):
            shape = [1, -1] + [1] * (x.dim() - 2)
            norm.append((x.float() - getattr(self, f"in{i}_mean").view(shape)) / getattr(self, f"in{i}_std").view(shape))
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
            return self._raw(xs) * self.y_std + self.y_mean
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
    where that is exact (the head's :meth:`~fiancee.predictor_heads.Head.fold_layer`: a 1x1 conv for ``tiny``,
    the first Linear for ``mlp``; ahead of a zero-padded 3x3 conv it is not, so ``conv`` / ``features`` keep
    one fused multiply-add), and ``y * y_std + y_mean`` into the last Linear. Built by
    :meth:`QualityPredictor.folded`."""

    @torch.no_grad()
    def __init__(self, p: QualityPredictor):
        super().__init__()
        import copy

        self.arch, self.head = p.arch, p.head
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
            xs = tuple(torch.addcmul(sh.view(1, -1, *[1] * (x.dim() - 2)), x.float(), sc.view(1, -1, *[1] * (x.dim() - 2)))
                       for x, (sc, sh) in zip(xs, self.pre))
        return self.mlp(self.head.run(self.body, xs))


# ----------------------------------------------------------------------------------------------
# What the predictor reads


@torch.no_grad()
def key_features(model, *inputs: torch.Tensor) -> torch.Tensor:
    """Backbone features after the key stage (``model.exits[0]``) ``[B, C, h, w]``: what the bank
    searches with and what every route computes first."""
    return model.backbone.features(*inputs, taps=(model.key_stage,)).taps[model.key_stage]


def predictor_features(arch: str, model, inputs: tuple[torch.Tensor, ...], batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """The tensors a predictor of ``arch`` reads for ``inputs``: z for ``mlp``, (label, z) for ``conv``,
    key-stage features for ``features`` and ``tiny`` (computed in batches)."""
    if not get_head(arch).reads_features:
        return tuple(x.flatten(1) if x.dim() == 4 and x.shape[-2:] == (1, 1) else x for x in inputs)
    n = inputs[0].shape[0]
    return (torch.cat([key_features(model, *(x[s : s + batch_size] for x in inputs)).cpu() for s in range(0, n, batch_size)]),)


@torch.no_grad()
def predict(predictor: QualityPredictor, model, inputs: tuple[torch.Tensor, ...], batch_size: int = 256) -> torch.Tensor:
    """Predicted LPIPS ``[N, E]`` for generator ``inputs`` (features computed when the predictor reads them)."""
    predictor.eval()
    xs = predictor_features(predictor.arch, model, inputs, batch_size)
    n = xs[0].shape[0]
    return torch.cat([predictor(*(x[s : s + batch_size] for x in xs)) for s in range(0, n, batch_size)])


# ----------------------------------------------------------------------------------------------
# Fingerprints


def exits_fingerprints(model) -> dict[str, str]:
    """Fingerprints of the backbone's weights and of the exits' weights (a table / predictor is only
    valid for the exact weights that produced its LPIPS)."""
    return {"backbone": tensor_fingerprint(model.backbone.state_dict()),
            "exits": tensor_fingerprint(model.branches.state_dict())}


# ----------------------------------------------------------------------------------------------
# Training


def train_predictor(predictor: QualityPredictor, xs: Sequence[torch.Tensor], lpips: torch.Tensor, *,
                    recipe: str = "mse-sgd", epochs: int = 100, batch_size: int = 64, lr: float | None = None,
                    seed: int = 0, fit_statistics: bool = True, progress: bool = False) -> list[float]:
    """Fit ``predictor`` to ``lpips [N, E]`` from ``xs`` (what it reads, see :func:`predictor_features`).

    Returns the mean training loss per epoch. Recipes: see the module notes (paper S1.1.2, S1.2.2).
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}; got {recipe!r}")
    if lpips.dim() != 2 or lpips.shape[1] != predictor.num_exits:
        raise ValueError(f"lpips must be [N, {predictor.num_exits}]; got {list(lpips.shape)}")
    n = lpips.shape[0]
    if any(x.shape[0] != n for x in xs):
        raise ValueError(f"inputs and lpips disagree on N: {[x.shape[0] for x in xs]} vs {n}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1; got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    if fit_statistics:
        predictor.fit_statistics(xs, lpips)
    predictor.train()
    steps = epochs * math.ceil(n / batch_size)
    if recipe == "mse-sgd":
        opt = torch.optim.SGD(predictor.parameters(), lr=lr or 0.01, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.0)
        loss_fn = F.mse_loss
    else:
        opt = torch.optim.AdamW(predictor.parameters(), lr=lr or 2e-4, betas=(0.05, 0.999), weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-6)
        loss_fn = F.l1_loss
    target = (lpips.float() - predictor.y_mean) / predictor.y_std  # [N, E] standardized
    gen = torch.Generator().manual_seed(seed)
    history = []
    it = range(epochs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"predictor {recipe}", unit="epoch")
    for _ in it:
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            loss = loss_fn(predictor.standardized(*(x[idx] for x in xs)), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        history.append(total / n)
        if not math.isfinite(history[-1]):
            raise RuntimeError(f"predictor training diverged (loss {history[-1]}); lower the learning rate")
    predictor.eval()
    return history


# ----------------------------------------------------------------------------------------------
# Folders


def save_predictor(predictor: QualityPredictor, out: str | Path, *, fingerprints: dict[str, str],
                   extra: dict | None = None, files: dict[str, Any] | None = None) -> Path:
    """Write ``out/config.json`` (constructor arguments, fingerprints, provenance) + ``out/weights.safetensors``
    (+ ``files``: name -> JSON object, e.g. the error report), the folder replaced whole
    (:func:`fiancee.io.atomic_folder`); refused when ``out`` holds something other than a predictor."""
    out = Path(out)
    with atomic_folder(out, kind="quality_predictor", what="quality predictor") as tmp:
        save_tensors(tmp / "weights.safetensors", predictor.state_dict())
        for name, obj in (files or {}).items():
            write_json(tmp / name, obj)
        write_json(tmp / "config.json", {"kind": "quality_predictor", "format": FORMAT, "predictor": predictor.config(),
                                         "fingerprints": dict(fingerprints), **(extra or {})})
    return out


def _check_predictor_config(args: Any, weights: Path, source: Path) -> dict:
    """The constructor arguments of a saved predictor, type-checked (the size is bounded by
    :func:`fiancee.io.build_bounded` where it is built)."""
    if not isinstance(args, dict):
        raise ValueError(f"{source}: field 'predictor' must be a JSON object; got {args!r}")
    known = {"arch", "num_exits", "input_shapes", "width", "hidden", "max_grid"}
    if set(args) - known:
        raise ValueError(f"{source}: field 'predictor' has unknown keys {sorted(set(args) - known)}")
    config_str(args, "arch", source)
    config_int(args, "num_exits", source, minimum=1)
    config_int(args, "width", source, minimum=1, optional=True)
    config_int_list(args, "hidden", source, minimum=1, nonempty=False, optional=True)
    config_int(args, "max_grid", source, minimum=1, optional=True)
    shapes = args.get("input_shapes")
    if not isinstance(shapes, list) or not shapes or not all(
            isinstance(s, list) and config_int_list({"s": s}, "s", source, minimum=1) for s in shapes):
        raise ValueError(f"{source}: field 'input_shapes' must be a non-empty list of shapes (lists of positive "
                         f"integers); got {shapes!r}")
    return args


@read_whole_folder("config.json")  # a save swapping the folder mid-load makes it load again
def load_predictor(path: str | Path, model=None, device: str | torch.device = "cpu") -> tuple[QualityPredictor, dict]:
    """``(predictor, config)`` from a folder; with ``model`` the backbone and exit fingerprints must match."""
    path = Path(path)
    config = read_manifest(resolve_inside(path, "config.json"), kind="quality_predictor", version_key="format",
                           version=FORMAT, what="quality predictor config", required=("predictor", "fingerprints"))
    weights = resolve_inside(path, "weights.safetensors")
    if not isinstance(config["fingerprints"], dict):
        raise ValueError(f"{path / 'config.json'}: field 'fingerprints' must be a JSON object; got {config['fingerprints']!r}")
    if model is not None:
        want = config.get("fingerprints", {})
        have = exits_fingerprints(model)
        for part in ("backbone", "exits"):
            if want.get(part) != have[part]:
                raise ValueError(f"{path} was trained for {part} weights {want.get(part)}, but these {part} have {have[part]}: "
                                 "its predicted LPIPS would describe other images; retrain it for these exits")
    args = _check_predictor_config(config["predictor"], weights, path / "config.json")
    predictor = build_bounded(lambda: QualityPredictor(**args), weights, path / "config.json")
    predictor.load_state_dict(load_tensors(weights))
    return predictor.to(device).eval(), config


# ----------------------------------------------------------------------------------------------
# Error (Tables S3, S4)


def relative_error(predicted: torch.Tensor, true: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Mean relative error per exit ``[E]``: mean of ``|P - S| / max(S, floor)`` (floor avoids dividing by ~0)."""
    return ((predicted - true).abs() / true.clamp_min(floor)).mean(0)


def error_summary(predicted: torch.Tensor, true: torch.Tensor) -> dict:
    """Per exit: relative error, MAE and Spearman rank correlation of ``predicted`` vs ``true`` ``[N, E]``."""
    rel = relative_error(predicted, true)
    mae = (predicted - true).abs().mean(0)
    # Spearman rank correlation per exit: the router needs the order of inputs right more than the values.
    def ranks(x):
        return x.argsort(0).argsort(0).double()

    rp, rt = ranks(predicted), ranks(true)
    rp, rt = rp - rp.mean(0), rt - rt.mean(0)
    rho = (rp * rt).sum(0) / (rp.norm(dim=0) * rt.norm(dim=0)).clamp_min(1e-12)
    return {"n": int(true.shape[0]), "relative_error": [float(v) for v in rel], "mean_relative_error": float(rel.mean()),
            "mae": [float(v) for v in mae], "spearman": [float(v) for v in rho], "true_mean": [float(v) for v in true.mean(0)]}


