"""Train the fashion backbone with the OASIS recipe (Sushko et al., 2021).

- Generator: :class:`fiancee.backbones.oasis.OASISGenerator` (SPADE blocks, 3D noise broadcast).
- Discriminator: a U-Net segmenter with N + 1 classes (:mod:`fiancee.train.discriminators`).
  Real pixels are to be labelled with their semantic class, generated pixels with "fake"; the
  real-image and generator terms are cross-entropies weighted by inverse class frequency in the
  batch (class balancing), so small classes count as much as the background.
- LabelMix: real and generated images mixed by a mask made of a random subset of the label map's
  classes; the discriminator's logits on the mix must equal the same mix of its logits on the two
  (MSE, weight ``lambda_labelmix``).
- EMA copy of the generator (what is exported), Adam with beta1 = 0, beta2 = 0.999.

A run is a folder: ``config.json`` (written before the first step), ``stats.jsonl``,
``checkpoint.safetensors`` (G, D, EMA G, both Adam states; step in its metadata) and
``backbone/`` (the EMA generator as ``config.json`` + ``backbone.safetensors``, and the U-Net
discriminator as ``discriminator.safetensors`` with its constructor arguments under ``config.json``'s
``discriminator``: the exits' critics of eq. 3 are copies of it). Every file is written atomically.
:func:`export_checkpoint` writes that export from an existing run's checkpoint without training. Randomness is
drawn per step from a generator seeded with ``(seed, step)``,
so a resumed run continues with exactly the numbers an uninterrupted one would have used.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.oasis import OASISConfig, OASISGenerator
from ..backbones.oasis_discriminator import FAKE, UNetDiscriminator
from ..core.folders import BACKBONE_RUN, FASHION_BACKBONE, make_header
from ..io import (
    RunLock,
    atomic_folder,
    check_replaceable,
    folder_kind,
    load_tensors,
    read_json,
    save_tensors,
    tensor_fingerprint,
    write_json,
)
from ..tasks.fashion import FashionTask, load_split

__all__ = [
    "BackboneTrainConfig",
    "load_train_config",
    "class_balance_weights",
    "balanced_cross_entropy",
    "labelmix_mask",
    "ema_update",
    "recompute_bn_stats",
    "train_backbone",
    "export_backbone",
    "export_checkpoint",
]

# Fields that may differ between a run and its resumption (they do not change the numbers).
_RESUMABLE = {"steps", "checkpoint_every", "log_every"}


@dataclass
class BackboneTrainConfig:
    task: str = FashionTask.name  # the one backbone trained here (the fashion task's OASIS)
    generator: dict = field(
        default_factory=lambda: dict(
            label_channels=11,
            z_dim=16,
            channels=(64, 64, 48, 32, 16),
            out_size=(32, 32),
            spade_hidden=32,
            channel_unit=16,
            spectral=True,
            exits=(1, 2, 3),
        )
    )
    disc_channels: tuple[int, ...] = (32, 64, 128)
    batch_size: int = 32
    steps: int = 2000
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    lambda_labelmix: float = 10.0
    ema_decay: float = 0.995
    train_limit: int | None = None  # use only the first N training images (tests)
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        OASISConfig(**self.generator)  # fail early on a bad generator config
        self.disc_channels = tuple(int(c) for c in self.disc_channels)
        if self.task != FashionTask.name:
            raise ValueError(
                f"only the {FashionTask.name!r} backbone is trained here (other tasks bring theirs); "
                f"got task {self.task!r}"
            )
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "seed", "train_limit"):
            value = getattr(self, name)
            if name == "train_limit" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):  # 1.5 must not become 1 silently
                raise ValueError(f"training config field {name!r} must be an integer; got {value!r}")
            if value <= 0 and name != "seed":
                raise ValueError(f"{name} must be positive; got {value}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["generator"] = OASISConfig(**self.generator).to_dict()
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from JSON

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneTrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**d)


def load_train_config(path: str | os.PathLike, **overrides: Any) -> BackboneTrainConfig:
    """A training config from a JSON file, or by the name of one shipped in ``fiancee/configs``
    (``"fashion_backbone"``: the recipe of the committed fashion backbone)."""
    shipped = Path(__file__).resolve().parents[1] / "configs" / f"{path}.json"
    if not Path(path).exists() and Path(str(path)).name == str(path) and shipped.is_file():
        path = shipped
    d = read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object of training settings; got a {type(d).__name__}")
    d.update({k: v for k, v in overrides.items() if v is not None})
    return BackboneTrainConfig.from_dict(d)


def class_balance_weights(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-pixel weights ``[B, H, W]``: inverse frequency of the pixel's class in the batch.

    Normalised so that every class present in the batch carries the same total weight and the
    weights average to 1 (a batch with one class gives weight 1 everywhere).
    """
    counts = torch.bincount(target.reshape(-1), minlength=num_classes).float()  # [K]
    present = (counts > 0).sum()
    per_class = torch.where(counts > 0, target.numel() / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return per_class[target]


def balanced_cross_entropy(logits: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    """OASIS's real-pixel loss: class ``c`` of the map is channel ``c + 1`` (channel 0 is fake)."""
    target = label_map + 1  # [B, H, W]
    weights = class_balance_weights(label_map, logits.shape[1] - 1)
    return (F.cross_entropy(logits, target, reduction="none") * weights).mean()


def labelmix_mask(label_map: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[B, 1, H, W]`` in {0, 1}: each class of each map is kept (1) with probability 1/2."""
    num = int(label_map.max()) + 1
    chosen = torch.rand(label_map.shape[0], num, generator=generator) < 0.5  # [B, K]
    mask = torch.gather(chosen, 1, label_map.reshape(label_map.shape[0], -1)).reshape(label_map.shape)
    return mask[:, None].float()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Parameters: exponential moving average; buffers (BN statistics, spectral-norm vectors): copied."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def _optim_tensors(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optim(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def _module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _load_module(prefix: str, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(sub, strict=True)


def export_backbone(
    generator: OASISGenerator,
    folder: str | os.PathLike,
    extra: dict | None = None,
    discriminator: UNetDiscriminator | None = None,
) -> Path:
    """Write ``config.json`` (header kind ``fiancee-fashion-backbone``, format 1; the committed folder was written
    before the header and has ``format_version`` only: both load) + ``backbone.safetensors`` (the folder
    :func:`load_fashion_backbone` reads),
    and with ``discriminator`` also ``discriminator.safetensors`` + its constructor arguments under
    ``config.json``'s ``discriminator`` (what :func:`fiancee.tasks.fashion.load_fashion_discriminator`
    reads; the ``oasis`` critic copies it, paper eq. 3). safetensors and JSON only: nothing loaded runs code."""
    folder = Path(folder)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    fingerprint = tensor_fingerprint(state)
    config = {
        **make_header(FASHION_BACKBONE, 1),
        "task": FashionTask.name,
        "generator": generator.config.to_dict(),
        "fingerprint": fingerprint,
    }
    d_state = None
    if discriminator is not None:
        d_state = {k: v.detach().cpu() for k, v in discriminator.state_dict().items()}
        config["discriminator"] = {**discriminator.config(), "fingerprint": tensor_fingerprint(d_state)}
    with atomic_folder(folder, kind=FASHION_BACKBONE, what="backbone") as tmp:  # replaced whole
        save_tensors(tmp / "backbone.safetensors", state, metadata={"fingerprint": fingerprint})
        if d_state is not None:
            save_tensors(
                tmp / "discriminator.safetensors",
                d_state,
                metadata={"fingerprint": config["discriminator"]["fingerprint"]},
            )
        write_json(tmp / "config.json", {**config, **(extra or {})})
    return folder


def _bn_batches(
    config: BackboneTrainConfig, maps: torch.Tensor, label_channels: int, z_dim: int, device: str | torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed ``(label, z)`` batches the EMA generator's BatchNorm statistics are measured on (seeded:
    an export from a checkpoint is the export training wrote at that step)."""
    bn_rng = torch.Generator().manual_seed(config.seed + 12345)
    batches = []
    for _ in range(16):
        i = torch.randint(len(maps), (config.batch_size,), generator=bn_rng)
        lab = F.one_hot(maps[i], label_channels).permute(0, 3, 1, 2).float().to(device)
        batches.append((lab, torch.randn(config.batch_size, z_dim, generator=bn_rng).to(device)))
    return batches


def _export_run(
    config: BackboneTrainConfig,
    folder: Path,
    step: int,
    G_ema: OASISGenerator,
    D: UNetDiscriminator,
    maps: torch.Tensor,
    device: str | torch.device,
) -> Path:
    gcfg = G_ema.config
    batches = _bn_batches(config, maps, gcfg.label_channels, gcfg.z_dim, device)
    # the export after `step` steps is what `--steps step` would give: randomness is per step
    return export_backbone(
        recompute_bn_stats(G_ema, batches),
        folder,
        discriminator=D,
        extra={"trained_steps": step, "train_config": {**config.to_dict(), "steps": step}},
    )


def export_checkpoint(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Export a backbone run's ``checkpoint.safetensors`` without training: the EMA generator (its
    BatchNorm statistics re-measured as training does) and the discriminator, to ``out`` (default
    ``RUN/backbone``). The result is the export training itself writes at that checkpoint, now with the
    discriminator; for runs made before exports kept it."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    ckpt_path, cfg_path = run_dir / "checkpoint.safetensors", run_dir / "config.json"
    if not ckpt_path.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(f"expected a backbone training run (config.json + checkpoint.safetensors) in {run_dir}")
    config = BackboneTrainConfig.from_dict(read_json(cfg_path))
    gcfg = OASISConfig(**config.generator)
    with safe_open(str(ckpt_path), framework="pt") as f:
        meta = f.metadata() or {}
    if "step" not in meta:
        raise ValueError(f"{ckpt_path} has no step in its metadata: not a checkpoint of fiancee train-backbone")
    step = int(meta["step"])
    tensors = load_tensors(ckpt_path)
    torch.manual_seed(config.seed)
    G_ema = OASISGenerator(gcfg)
    D = UNetDiscriminator(num_classes=gcfg.label_channels, in_channels=3, channels=config.disc_channels)
    _load_module("G_ema", G_ema, tensors)
    _load_module("D", D, tensors)
    train = load_split("train", data, limit=config.train_limit)
    target = Path(out) if out is not None else run_dir / "backbone"
    # Writing into the run folder takes its writer lock: a run still training refuses the export.
    lock = RunLock(run_dir) if target.resolve().parent == run_dir.resolve() else contextlib.nullcontext()
    with lock:
        _export_run(
            config, target, step, G_ema.to(device).eval().requires_grad_(False), D.to(device), train.maps, device
        )
    return {"run": str(run_dir), "step": step, "backbone": str(target)}


@torch.no_grad()
def recompute_bn_stats(generator: OASISGenerator, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> OASISGenerator:
    """A copy of ``generator`` whose BatchNorm statistics are measured with its own weights.

    The EMA generator's buffers are copied from the trained generator, whose running statistics
    belong to other weights; OASIS re-measures them before using the EMA model, so do we
    (cumulative average over the given ``(label, z)`` batches).
    """
    model = copy.deepcopy(generator)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for label, z in batches:
        model(label, z)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def _read_stats(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto_step]


def train_backbone(
    config: BackboneTrainConfig,
    run_dir: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """Train (or resume) a run; returns a summary (steps done, seconds, final losses, export folder)."""
    run_dir = Path(run_dir)
    # Everything that can be refused is refused before --out is touched (then one writer at a time).
    check_replaceable(run_dir, BACKBONE_RUN, "backbone training run")
    gcfg = OASISConfig(**config.generator)
    if gcfg.label_channels != 11 or gcfg.out_size != (32, 32):
        raise ValueError(
            "the fashion generator needs label_channels=11 and out_size=(32, 32); "
            f"got {gcfg.label_channels}, {gcfg.out_size}"
        )
    train = load_split("train", data, limit=config.train_limit)
    created = not run_dir.exists()
    with RunLock(run_dir):
        try:
            return _train_backbone(config, run_dir, train, gcfg, resume, device, progress)
        finally:
            if created and folder_kind(run_dir) is None:
                shutil.rmtree(run_dir, ignore_errors=True)


def _train_backbone(
    config: BackboneTrainConfig,
    run_dir: Path,
    train,
    gcfg: OASISConfig,
    resume: bool,
    device: str | torch.device,
    progress: bool,
) -> dict:
    from tqdm import tqdm

    ckpt_path = run_dir / "checkpoint.safetensors"
    cfg_path = run_dir / "config.json"
    stats_path = run_dir / "stats.jsonl"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: expected a checkpoint at {ckpt_path}")
        saved = read_json(cfg_path)
        now = config.to_dict()
        diff = sorted(k for k in now if k not in _RESUMABLE and now[k] != saved.get(k))
        if diff:
            raise ValueError(f"--resume: the run in {run_dir} was made with different settings for {diff}")
    elif ckpt_path.exists():
        raise ValueError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, or another --out")
    write_json(cfg_path, config.to_dict())  # before the first step

    torch.manual_seed(config.seed)  # initial weights
    G = OASISGenerator(gcfg).to(device)
    D = UNetDiscriminator(num_classes=gcfg.label_channels, in_channels=3, channels=config.disc_channels).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2))

    start = 0
    if resume:
        tensors = load_tensors(ckpt_path)
        from safetensors import safe_open

        with safe_open(str(ckpt_path), framework="pt") as f:
            start = int(f.metadata()["step"])
        _load_module("G", G, tensors)
        _load_module("D", D, tensors)
        _load_module("G_ema", G_ema, tensors)
        _load_optim("opt_g", opt_g, tensors)
        _load_optim("opt_d", opt_d, tensors)
    stats = _read_stats(stats_path, start)

    images = train.images.repeat(1, 3, 1, 1)  # [N, 3, 32, 32]: gray as RGB, the generator draws 3 channels
    maps = train.maps  # [N, 32, 32]
    n_train = len(train)

    def save_checkpoint(step: int) -> None:
        tensors = {
            **_module_tensors("G", G),
            **_module_tensors("D", D),
            **_module_tensors("G_ema", G_ema),
            **_optim_tensors("opt_g", opt_g),
            **_optim_tensors("opt_d", opt_d),
        }
        save_tensors(ckpt_path, tensors, metadata={"step": str(step)})
        _export_run(config, run_dir / "backbone", step, G_ema, D, maps, device)

    def write_stats() -> None:
        from ..io import atomic_write_text

        atomic_write_text(stats_path, "".join(json.dumps(r) + "\n" for r in stats))

    t0 = time.time()
    last: dict[str, float] = {}
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc="fashion backbone",
        disable=not progress,
        dynamic_ncols=True,
    )
    G.train()
    D.train()
    for step in bar:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        idx = torch.randint(n_train, (config.batch_size,), generator=g)
        real = images[idx].to(device)  # [B, 3, 32, 32]
        lmap = maps[idx].to(device)  # [B, 32, 32]
        label = F.one_hot(lmap, gcfg.label_channels).permute(0, 3, 1, 2).float()  # [B, 11, 32, 32]
        z = torch.randn(config.batch_size, gcfg.z_dim, generator=g).to(device)
        mask = labelmix_mask(lmap.cpu(), g).to(device)  # [B, 1, 32, 32]

        # Discriminator: real pixels -> their class, generated pixels -> fake, LabelMix consistency.
        with torch.no_grad():
            fake = G(label, z)
        out_real = D(real)
        out_fake = D(fake)
        loss_d_real = balanced_cross_entropy(out_real, lmap)
        loss_d_fake = F.cross_entropy(out_fake, torch.full_like(lmap, FAKE))
        mixed = mask * real + (1 - mask) * fake
        out_mix = D(mixed)
        loss_lm = F.mse_loss(out_mix, mask * out_real + (1 - mask) * out_fake)
        loss_d = loss_d_real + loss_d_fake + config.lambda_labelmix * loss_lm
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # Generator: its pixels should be segmented as the classes of the label map.
        D.requires_grad_(False)
        fake = G(label, z)
        loss_g = balanced_cross_entropy(D(fake), lmap)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)

        # Warm-up of the EMA: early on the average would mostly remember the random initialisation.
        ema_update(G_ema, G, min(config.ema_decay, (1 + step) / (10 + step)))

        done = step + 1
        last = {
            "loss_d_real": loss_d_real.item(),
            "loss_d_fake": loss_d_fake.item(),
            "loss_labelmix": loss_lm.item(),
            "loss_g": loss_g.item(),
        }
        if done % config.log_every == 0 or done == config.steps:
            stats.append(
                {"step": done, "seconds": round(time.time() - t0, 2), **{k: round(v, 5) for k, v in last.items()}}
            )
            bar.set_postfix(d=f"{loss_d_real.item() + loss_d_fake.item():.3f}", g=f"{loss_g.item():.3f}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            write_stats()
            save_checkpoint(done)
    bar.close()
    write_stats()
    return {
        "steps": config.steps,
        "resumed_from": start,
        "seconds": round(time.time() - t0, 1),
        "last": last,
        "backbone": str(run_dir / "backbone"),
    }
