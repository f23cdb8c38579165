"""Branch-distillation loss recipes (paper eq. 3 and 4, S1.1.2, S1.2.2).

A branch learns to reproduce the backbone's image for the same input. A recipe is a named,
configurable set of loss weights, the critic it trains against and its optimizer:

- ``oasis`` (eq. 3): adversarial + alpha * VGG + beta * LPIPS, alpha = 10, beta = 5;
  Adam (beta1 0, beta2 0.999), lr 4e-4, constant.
- ``megaportraits`` (eq. 4): hinge adversarial against a multi-scale patch discriminator
  + c1 * VGG + c2 * MS-SSIM + c3 * L1 + c4 * feature matching, c1 = 18, c2 = 0.84, c3 = 0.16,
  c4 = 40 (the gaze loss has no counterpart outside faces-with-gaze data); AdamW (beta1 0.05,
  beta2 0.999, eps 1e-8, weight decay 1e-2), lr 2e-4 with cosine decay to 1e-6.

Any field can be overridden (``recipe.replace(vgg=0)``); the presets do so where the CPU cannot
afford a term, and say so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Recipe",
    "RECIPES",
    "SCHEDULES",
    "get_recipe",
    "BranchLoss",
    "FeatureAdapters",
    "make_optimizer",
    "lr_at",
]

# Learning-rate schedules over a run's steps (lr_at).
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Recipe:
    name: str
    adversarial: float = 1.0
    vgg: float = 0.0
    lpips: float = 0.0
    ms_ssim: float = 0.0
    l1: float = 0.0
    feature_matching: float = 0.0
    # Intermediate-feature distillation (GAN Compression, Li et al. 2020): every branch block's output,
    # mapped by a learned 1x1 adapter to the backbone's width, against the backbone stage it mirrors.
    features: float = 0.0
    critic: str = "task"  # "task": the task's own kind of discriminator; "patch": multi-scale PatchGAN
    optimizer: str = "adam"
    lr: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "cosine"
    lr_min: float = 0.0
    lpips_net: str = "alex"

    def replace(self, **overrides) -> "Recipe":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(
                f"unknown recipe fields {sorted(unknown)}; "
                f"expected some of {[f.name for f in dataclasses.fields(self)]}"
            )
        lr = overrides.get("lr", self.lr)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
            raise ValueError(f"the learning rate must be a number in (0, 1); got {lr!r}")
        if overrides.get("schedule", self.schedule) not in SCHEDULES:
            raise ValueError(f"unknown schedule {overrides['schedule']!r}; expected one of {list(SCHEDULES)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = {"features": 0.0, **d}  # runs written before the term existed
        d["betas"] = tuple(d.get("betas", (0.0, 0.999)))
        return cls(**d)


RECIPES: dict[str, Recipe] = {
    "oasis": Recipe(
        name="oasis", adversarial=1.0, vgg=10.0, lpips=5.0, critic="task", optimizer="adam", lr=4e-4, betas=(0.0, 0.999)
    ),
    "megaportraits": Recipe(
        name="megaportraits",
        adversarial=1.0,
        vgg=18.0,
        ms_ssim=0.84,
        l1=0.16,
        feature_matching=40.0,
        critic="patch",
        optimizer="adamw",
        lr=2e-4,
        betas=(0.05, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        schedule="cosine",
        lr_min=1e-6,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay
        )
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; expected 'adam' or 'adamw'")


def lr_at(recipe: Recipe, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` (constant, or cosine from ``lr`` to ``lr_min``)."""
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "cosine":
        t = min(step, total_steps) / max(total_steps, 1)
        return recipe.lr_min + 0.5 * (recipe.lr - recipe.lr_min) * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {recipe.schedule!r}; expected one of {list(SCHEDULES)}")


class BranchLoss(nn.Module):
    """The reconstruction part of a recipe (everything but the adversarial term).

    ``forward(fake, real, to_metric)`` returns a dict of the weighted terms that are on; images are in
    [-1, 1]; ``to_metric`` maps images to what the perceptual networks see (e.g. small images are
    resized up to 64 px for LPIPS, gray ones repeated to 3 channels).
    """

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.recipe = recipe
        if recipe.lpips > 0:
            from ..metrics.lpips import LPIPS

            self.lpips = LPIPS(recipe.lpips_net)
        if recipe.vgg > 0:
            from ..metrics.perceptual import VGGPerceptualLoss

            self.vgg = VGGPerceptualLoss()

    def forward(self, fake: torch.Tensor, real: torch.Tensor, to_metric=None) -> dict[str, torch.Tensor]:
        r = self.recipe
        terms: dict[str, torch.Tensor] = {}
        fm, rm = (to_metric(fake), to_metric(real)) if to_metric is not None else (fake, real)
        if r.lpips > 0:
            terms["lpips"] = r.lpips * self.lpips(fm, rm).mean()
        if r.vgg > 0:
            terms["vgg"] = r.vgg * self.vgg(fm, rm)
        if r.ms_ssim > 0:
            from ..metrics.ssim import ms_ssim

            # MS-SSIM is a similarity in [0, 1]: the loss is 1 - MS-SSIM.
            terms["ms_ssim"] = r.ms_ssim * (1 - ms_ssim(fake, real, value_range=(-1.0, 1.0)).mean())
        if r.l1 > 0:
            terms["l1"] = r.l1 * F.l1_loss(fake, real)
        return terms


class FeatureAdapters(nn.Module):
    """1x1 convs from every branch block's width to the width of the backbone stage it mirrors.

    ``loss(block_feats, stage_feats)`` is the mean over blocks of ``MSE(adapter(f), t) / mean(t^2)``:
    relative, so stages of different scale weigh alike. Used only in training; never exported.
    """

    def __init__(self, model):
        super().__init__()
        bb = model.backbone
        self.adapters = nn.ModuleList(
            nn.ModuleList(
                nn.Conv2d(c_out, bb.stage_channels[b.after + j][1], 1) for j, (_, c_out) in enumerate(b.block_channels)
            )
            for b in model.branches
        )
        self.starts = [b.after for b in model.branches]

    def loss(self, branch: int, block_feats: list[torch.Tensor], stage_feats: list[torch.Tensor]) -> torch.Tensor:
        """``stage_feats[s]``: the backbone's output of stage ``s + 1`` (all stages, 0-based list)."""
        start = self.starts[branch]
        terms = []
        for j, (adapter, f) in enumerate(zip(self.adapters[branch], block_feats)):
            t = stage_feats[start + j].float()
            terms.append(F.mse_loss(adapter(f.float()), t) / t.pow(2).mean().clamp_min(1e-8))
        return torch.stack(terms).mean()
