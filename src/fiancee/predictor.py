"""The quality predictor: inputs -> predicted LPIPS of every exit (paper section 3.2, S1.1.2, S1.2.2).

Architectures (after Table S7), chosen with ``arch``:

- ``"mlp"``: vector inputs (faces' z): flatten, then Linear + LeakyReLU layers narrowing to one output
  per exit (Table S7, MegaPortraits column: 512 -> 256 -> 128 -> 64 -> E).
- ``"conv"``: semantic tasks (fashion): the label map with the noise broadcast over it as extra channels
  (OASIS's 3D noise), Conv2D + ReLU, stride-2 convs down to at most 8x8, a ResBlock, flatten, and a
  ReLU MLP (Table S7, OASIS column: Conv2D + ReLU, ResBlock, Flatten, Linear + ReLU ... Linear).
- ``"features"``: the same conv + ResBlock + MLP on the backbone's features after the key stage (the
  stage before the first exit). Table S7's OASIS predictor reads 1024 channels, the width of OASIS's
  first module: this is that option. The bank computes these features anyway and every route runs
  them, so they cost the predictor nothing extra at inference.

Targets and inputs are standardized with statistics of the training table kept as buffers (so the
saved predictor needs nothing else); ``forward`` returns LPIPS in LPIPS units ``[B, E]``.

Training set (S1.1.2): the inputs x the true LPIPS of every exit against the backbone, computed once
and cached on disk under a hash of what produced it (:func:`build_lpips_table`). For label-map tasks
the paper fixes a set of noise vectors and crosses it with the training maps ("100 3D noise tensors
... 500 semantic maps ... 50 000 examples"): pass ``noises=K``. For faces (z only) the table is ``n``
draws of z.

Recipes (:func:`train_predictor`):

- ``"mse-sgd"`` (OASIS, Eq. S2): MSE, SGD lr 0.01 with momentum 0.9, cosine schedule to 0.
- ``"mae-adamw"`` (MegaPortraits, S1.2.2): MAE, AdamW betas (0.05, 0.999), lr 2e-4, weight decay 1e-2,
  cosine schedule to 1e-6.

Both losses are taken on per-exit standardized LPIPS (the paper's loss divided by each exit's target
variance, resp. std): one exit with larger LPIPS does not drown the others, and SGD at lr 0.01 sees
gradients of order one.

Error (Tables S3, S4): :func:`predictor_error` gives the mean relative error ``|P - S| / S`` per exit
on held-out inputs: held-out maps with the training noises and with new noises (fashion), held-out z
(faces).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_finite
from .io import cache_dir, load_tensors, read_json, read_manifest, save_tensors, tensor_fingerprint, write_json

__all__ = [
    "ARCHS", "RECIPES", "QualityPredictor", "ResBlock", "key_features", "predictor_features", "predict",
    "sample_table_inputs", "build_lpips_table", "train_predictor", "save_predictor", "load_predictor",
    "exits_fingerprints", "relative_error", "predictor_error", "train_predictor_for_run", "predictor_error_for_folder",
]

ARCHS = ("mlp", "conv", "features")
RECIPES = ("mse-sgd", "mae-adamw")
FORMAT = 1


class ResBlock(nn.Module):
    """Two 3x3 convs with a skip (Table S7's ResBlock, width kept)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class QualityPredictor(nn.Module):
    """Predicted LPIPS ``[B, E]`` of the E exit branches (the backbone's is 0 and not predicted).

    ``input_shapes`` are the per-sample shapes of what the predictor reads: ``[[z_dim]]`` for ``mlp``
    on faces, ``[[C, H, W], [z_dim]]`` (label map, noise) for ``conv``, ``[[C, h, w]]`` (key-stage
    features) for ``features``. All constructor arguments are JSON values (saved in config.json).
    """

    def __init__(self, arch: str, num_exits: int, input_shapes: Sequence[Sequence[int]], *,
                 width: int = 64, hidden: Sequence[int] = (512, 256, 128, 64), max_grid: int = 8):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}; got {arch!r}")
        if int(num_exits) < 1:
            raise ValueError(f"num_exits must be >= 1; got {num_exits}")
        self.arch, self.num_exits = arch, int(num_exits)
        self.input_shapes = [list(int(d) for d in s) for s in input_shapes]
        self.width, self.hidden, self.max_grid = int(width), [int(h) for h in hidden], int(max_grid)
        shapes = self.input_shapes
        if arch == "mlp":
            if any(len(s) != 1 for s in shapes):
                raise ValueError(f"arch 'mlp' reads vectors; got input shapes {shapes}")
            flat = sum(s[0] for s in shapes)
            self.body = None
            act = lambda: nn.LeakyReLU(0.2)  # noqa: E731  Table S7: Linear + LeakyReLU
        else:
            if arch == "conv" and (len(shapes) != 2 or len(shapes[0]) != 3 or len(shapes[1]) != 1):
                raise ValueError(f"arch 'conv' reads (label map [C, H, W], noise [Z]); got input shapes {shapes}")
            if arch == "features" and (len(shapes) != 1 or len(shapes[0]) != 3):
                raise ValueError(f"arch 'features' reads key-stage features [C, h, w]; got input shapes {shapes}")
            c, h, w = shapes[0]
            c_in = c + (shapes[1][0] if arch == "conv" else 0)
            layers: list[nn.Module] = [nn.Conv2d(c_in, self.width, 3, padding=1), nn.ReLU()]
            while max(h, w) > self.max_grid:  # stride-2 convs keep the flattened size small
                layers += [nn.Conv2d(self.width, self.width, 3, stride=2, padding=1), nn.ReLU()]
                h, w = (h + 1) // 2, (w + 1) // 2
            layers += [ResBlock(self.width), nn.Flatten()]
            self.body = nn.Sequential(*layers)
            flat = self.width * h * w
            act = nn.ReLU  # Table S7 OASIS column: Linear + ReLU
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
        return self.arch == "features"

    @torch.no_grad()
    def fit_statistics(self, xs: Sequence[torch.Tensor], lpips: torch.Tensor) -> None:
        """Per-channel mean / std of the inputs and per-exit mean / std of the targets."""
        for i, x in enumerate(xs):
            dims = [0] + list(range(2, x.dim()))  # per channel (or per feature for vectors)
            getattr(self, f"in{i}_mean").copy_(x.float().mean(dim=dims))
            getattr(self, f"in{i}_std").copy_(x.float().std(dim=dims).clamp_min(1e-6))
        self.y_mean.copy_(lpips.float().mean(0))
        self.y_std.copy_(lpips.float().std(0).clamp_min(1e-6))

    def _check(self, xs: Sequence[torch.Tensor]) -> None:
        if len(xs) != len(self.input_shapes) or any(list(x.shape[1:]) != s for x, s in zip(xs, self.input_shapes)):
            raise ValueError(f"{self.arch} predictor expects inputs of per-sample shapes {self.input_shapes}; "
                             f"got {[list(x.shape[1:]) for x in xs]}")
        for i, x in enumerate(xs):
            check_finite(x, f"predictor input {i}")

    def standardized(self, *xs: torch.Tensor) -> torch.Tensor:
        """The network's raw output ``[B, E]`` (standardized LPIPS; the loss is taken here)."""
        self._check(xs)
        norm = []
        for i, x in enumerate(xs):
            shape = [1, -1] + [1] * (x.dim() - 2)
            norm.append((x.float() - getattr(self, f"in{i}_mean").view(shape)) / getattr(self, f"in{i}_std").view(shape))
        if self.arch == "mlp":
            h = torch.cat([x.flatten(1) for x in norm], dim=1)  # [B, D]
        elif self.arch == "conv":
            label, z = norm  # [B, C, H, W], [B, Z]
            noise = z[:, :, None, None].expand(-1, -1, *label.shape[-2:])  # OASIS-style 3D noise
            h = self.body(torch.cat([label, noise], dim=1))  # [B, width * h * w]
        else:
            h = self.body(norm[0])
        return self.mlp(h)  # [B, E]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Predicted LPIPS ``[B, E]``."""
        return self.standardized(*xs) * self.y_std + self.y_mean


# ----------------------------------------------------------------------------------------------
# What the predictor reads


@torch.no_grad()
def key_features(model, *inputs: torch.Tensor) -> torch.Tensor:
    """Backbone features after the key stage (``model.exits[0]``) ``[B, C, h, w]``: what the bank
    searches with and what every route computes first."""
    return model.backbone.features(*inputs, taps=(model.key_stage,)).taps[model.key_stage]


def predictor_features(arch: str, model, inputs: tuple[torch.Tensor, ...], batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """The tensors a predictor of ``arch`` reads for ``inputs``: z for ``mlp``, (label, z) for ``conv``,
    key-stage features for ``features`` (computed in batches)."""
    if arch != "features":
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
# The training table


def sample_table_inputs(task, n: int, seed: int, split: str, noises: int | torch.Tensor | None = None,
                        noise_seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Generator inputs of a table. Without ``noises``: ``task.sample_inputs(n, seed, split)``.

    With ``noises`` (label-map tasks only; paper S1.1.2): ``n`` maps of ``split`` crossed with a fixed
    set of noise vectors (``K`` drawn from ``noise_seed``, or a ``[K, z_dim]`` tensor): ``n * K``
    inputs, map-major. Reusing the training noises with held-out maps gives Table S3's set; new
    noises give Table S4's.
    """
    inputs = task.sample_inputs(n, seed, split)
    if noises is None:
        return inputs
    if len(inputs) != 2 or inputs[0].dim() != 4:
        raise ValueError(f"noises= crosses label maps with fixed noise vectors; task {task.name!r} has no label map "
                         f"(its inputs are {[list(x.shape) for x in inputs]})")
    label, z = inputs  # [n, C, H, W], [n, Z]
    if isinstance(noises, int):
        if noises < 1:
            raise ValueError(f"noises must be >= 1; got {noises}")
        noises = torch.randn(noises, z.shape[1], generator=torch.Generator().manual_seed(noise_seed + 7_777_777))
    if noises.dim() != 2 or noises.shape[1] != z.shape[1]:
        raise ValueError(f"noises must be [K, {z.shape[1]}]; got {list(noises.shape)}")
    k = noises.shape[0]
    return label.repeat_interleave(k, dim=0), noises.repeat(n, 1)  # [n*K, C, H, W], [n*K, Z]


def exits_fingerprints(model) -> dict[str, str]:
    """Fingerprints of the backbone's weights and of the exits' weights (a table / predictor is only
    valid for the exact weights that produced its LPIPS)."""
    return {"backbone": tensor_fingerprint(model.backbone.state_dict()),
            "exits": tensor_fingerprint(model.branches.state_dict())}


def _table_key(fps: dict, inputs: tuple[torch.Tensor, ...], guide_key: str | None, net: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"fps": fps, "guide": guide_key, "net": net, "v": FORMAT}, sort_keys=True).encode())
    h.update(tensor_fingerprint({f"x{i}": x for i, x in enumerate(inputs)}).encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def build_lpips_table(model, task, n: int, seed: int, split: str, guide=None, cache: bool | str | Path = True, *,
                      noises: int | torch.Tensor | None = None, noise_seed: int = 0, guide_key: str | None = None,
                      batch_size: int = 128, net: str = "alex", progress: bool = False) -> dict:
    """Inputs x the true LPIPS of every exit vs the backbone (section 3.2's labels S).

    Returns ``{"inputs": tuple, "lpips": [N, E] float32, "key": str, "cached": bool}``. ``cache=True``
    stores it under ``cache_dir("lpips_tables")``, a path puts it in that folder, ``False`` skips the
    cache. The key hashes the backbone and exit weights, the inputs, the LPIPS net and ``guide_key``;
    a callable ``guide`` (a bank) cannot be hashed, so pass ``guide_key`` (e.g. the bank's folder and
    fingerprint) or the table is not cached.
    """
    from .evaluate import per_image_lpips, route_images

    inputs = tuple(x.cpu() for x in sample_table_inputs(task, n, seed, split, noises, noise_seed))
    key = _table_key(exits_fingerprints(model), inputs, guide_key, net)
    use_cache = cache is not False and (guide is None or guide_key is not None)
    folder = Path(cache) if isinstance(cache, (str, Path)) else cache_dir("lpips_tables")
    path = folder / f"{key}.safetensors"
    if use_cache and path.is_file():
        return {"inputs": inputs, "lpips": load_tensors(path)["lpips"], "key": key, "cached": True}
    device = next(model.parameters()).device
    e = model.num_routes - 1
    rows = []
    total = inputs[0].shape[0]
    starts = range(0, total, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="lpips table", unit="batch")
    for s in starts:
        batch = tuple(x[s : s + batch_size].to(device) for x in inputs)
        images = route_images(model, batch, batch_size=batch_size, guide=guide)  # E+1 x [b, C, H, W], backbone last
        rows.append(torch.stack([per_image_lpips(images[r], images[-1], task.to_lpips_images, net=net)
                                 for r in range(e)], dim=1))  # [b, E]
    lpips = torch.cat(rows).float()
    if use_cache:
        save_tensors(path, {"lpips": lpips}, metadata={"task": task.name, "n": str(n), "seed": str(seed), "split": split})
    return {"inputs": inputs, "lpips": lpips, "key": key, "cached": False}


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
                   extra: dict | None = None) -> Path:
    """Write ``out/config.json`` (constructor arguments, fingerprints, provenance) + ``out/weights.safetensors``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "weights.safetensors", predictor.state_dict())
    write_json(out / "config.json", {"kind": "quality_predictor", "format": FORMAT, "predictor": predictor.config(),
                                     "fingerprints": dict(fingerprints), **(extra or {})})
    return out


def load_predictor(path: str | Path, model=None, device: str | torch.device = "cpu") -> tuple[QualityPredictor, dict]:
    """``(predictor, config)`` from a folder; with ``model`` the backbone and exit fingerprints must match."""
    path = Path(path)
    config = read_manifest(path / "config.json", kind="quality_predictor", version_key="format", version=FORMAT,
                           what="quality predictor config", required=("predictor", "fingerprints"))
    if model is not None:
        want = config.get("fingerprints", {})
        have = exits_fingerprints(model)
        for part in ("backbone", "exits"):
            if want.get(part) != have[part]:
                raise ValueError(f"{path} was trained for {part} weights {want.get(part)}, but these {part} have {have[part]}: "
                                 "its predicted LPIPS would describe other images; retrain it for these exits")
    predictor = QualityPredictor(**config["predictor"])
    predictor.load_state_dict(load_tensors(path / "weights.safetensors"))
    return predictor.to(device).eval(), config


# ----------------------------------------------------------------------------------------------
# Error (Tables S3, S4)


def relative_error(predicted: torch.Tensor, true: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Mean relative error per exit ``[E]``: mean of ``|P - S| / max(S, floor)`` (floor avoids dividing by ~0)."""
    return ((predicted - true).abs() / true.clamp_min(floor)).mean(0)


def _error_entry(predicted: torch.Tensor, true: torch.Tensor) -> dict:
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


def predictor_error(predictor: QualityPredictor, model, task, *, n: int = 500, seed: int = 0, guide=None,
                    guide_key: str | None = None, train_noises: int | None = None, noise_seed: int = 0,
                    cache: bool | str | Path = True) -> dict:
    """Tables S3 / S4: mean relative error per exit on held-out (``test`` split) inputs.

    Label-map tasks (``train_noises`` = K, the training noise count, drawn from ``noise_seed``): ``n``
    test maps x the K training noises (``"train_noises"``, Table S3) and the same ``n`` maps x K new
    noises (``"new_noises"``, Table S4). Vector tasks: ``n`` held-out z (``"held_out"``, the only
    input there is). Each entry also gives the MAE and the Spearman rank correlation per exit.
    """
    sets = {}
    if train_noises is None:
        table = build_lpips_table(model, task, n, seed, "test", guide, cache, guide_key=guide_key)
        sets["held_out"] = table
    else:
        sets["train_noises"] = build_lpips_table(model, task, n, seed, "test", guide, cache, noises=train_noises,
                                                 noise_seed=noise_seed, guide_key=guide_key)
        sets["new_noises"] = build_lpips_table(model, task, n, seed, "test", guide, cache, noises=train_noises,
                                               noise_seed=noise_seed + 1_000_003, guide_key=guide_key)
    report = {"task": task.name, "arch": predictor.arch, "exits": list(model.exits), "sets": {}}
    for name, table in sets.items():
        pred = predict(predictor, model, table["inputs"])
        report["sets"][name] = _error_entry(pred, table["lpips"])
    return report


def train_predictor_for_run(run_dir: str | Path, out: str | Path, *, arch: str | None = None, recipe: str = "mse-sgd",
                            n: int = 2000, noises: int | None = None, epochs: int = 60, batch_size: int = 64,
                            seed: int = 0, error_n: int = 500, device: str = "cpu", progress: bool = True) -> dict:
    """Train a predictor for a trained exit run and write it to ``out`` with its error report.

    Default ``arch``: ``conv`` for label-map tasks, ``features`` otherwise (on faces it ranks inputs
    much better than ``mlp`` on z: Spearman 0.78 vs 0.58, see docs/predictor.md). ``noises`` (label-map tasks):
    the fixed noise set crossed with ``n`` training maps (default 10 noises x n/10 maps).
    """
    from .evaluate import _bank_guide
    from .train.exits import load_exits
    from .train.run import RunDir

    task, model = load_exits(run_dir, device=device)
    guide = _bank_guide(run_dir, model)
    bank = RunDir(run_dir).read_config().get("bank")
    guide_key = None if bank is None else _bank_key(bank)
    labelled = len(task.sample_inputs(1, 0, "train")) == 2
    arch = arch or ("conv" if labelled else "features")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}; got {arch!r}")
    if arch == "conv" and not labelled:
        raise ValueError(f"arch 'conv' reads a label map; task {task.name!r} has none (use 'mlp' or 'features')")
    if labelled and noises is None:
        noises = 10
    if not labelled and noises is not None:
        raise ValueError(f"task {task.name!r} has no label map: noises= does not apply (its training set is n draws of z)")
    maps = n if noises is None else max(1, n // noises)
    table = build_lpips_table(model, task, maps, seed, "train", guide, noises=noises, noise_seed=seed,
                              guide_key=guide_key, progress=progress)
    xs = predictor_features(arch, model, table["inputs"])
    torch.manual_seed(seed)  # the initial weights too: same seed, same predictor, same demo figures
    predictor = QualityPredictor(arch, model.num_routes - 1, [list(x.shape[1:]) for x in xs])
    history = train_predictor(predictor, xs, table["lpips"], recipe=recipe, epochs=epochs, batch_size=batch_size,
                              seed=seed, progress=progress)
    error = predictor_error(predictor, model, task, n=error_n if noises is None else max(1, error_n // noises),
                            seed=seed, guide=guide, guide_key=guide_key, train_noises=noises, noise_seed=seed)
    error["command_seed"] = seed
    extra = {"task": task.name, "run": str(run_dir), "recipe": recipe, "seed": seed, "noise_seed": seed, "epochs": epochs,
             "train_inputs": int(table["lpips"].shape[0]), "noises": noises, "final_loss": history[-1],
             "exits": list(model.exits), "route_macs": [int(m) for m in model.route_macs()]}
    save_predictor(predictor, out, fingerprints=exits_fingerprints(model), extra=extra)
    write_json(Path(out) / "error.json", error)
    return {"out": str(out), **extra, "error": error}


def predictor_error_for_folder(predictor_dir: str | Path, *, run: str | Path | None = None, n: int = 500, seed: int = 0,
                               device: str = "cpu") -> dict:
    """:func:`predictor_error` of a saved predictor on its exit run (``n`` held-out inputs in all; label-map
    tasks use ``n // K`` test maps x the K training noises, and x K new noises)."""
    from .evaluate import _bank_guide
    from .train.exits import load_exits
    from .train.run import RunDir

    config = read_json(Path(predictor_dir) / "config.json")
    run = run if run is not None else config.get("run")
    if run is None:
        raise ValueError(f"{predictor_dir} does not name its exit run; pass run=")
    task, model = load_exits(run, device=device)
    predictor, config = load_predictor(predictor_dir, model=model, device=device)
    guide = _bank_guide(run, model)
    bank = RunDir(run).read_config().get("bank")
    noises = config.get("noises")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return predictor_error(predictor, model, task, n=n if noises is None else max(1, n // noises), seed=seed, guide=guide,
                           guide_key=None if bank is None else _bank_key(bank), train_noises=noises,
                           noise_seed=config.get("noise_seed", 0))


def _bank_key(bank) -> str:
    # The bank's folder name and the fingerprint of its files' bytes identify the guide it gives.
    path = Path(str(bank))
    h = hashlib.sha256(str(path.resolve()).encode())
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]
