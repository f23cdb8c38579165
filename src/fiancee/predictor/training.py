"""The quality predictor's training loop on tensors (paper S1.1.2, S1.2.2).

Training set (S1.1.2): the inputs x the true LPIPS of every exit against the backbone, built and cached by
:func:`fiancee.tables.build_lpips_table`; :func:`fiancee.train.predictor.train_predictor_for_run` trains a
predictor for an exit run. This module takes tensors.

Recipes (:func:`train_predictor`):

- ``"mse-sgd"`` (OASIS, Eq. S2): MSE, SGD lr 0.01 with momentum 0.9, cosine schedule to 0.
- ``"mae-adamw"`` (MegaPortraits, S1.2.2): MAE, AdamW betas (0.05, 0.999), lr 2e-4, weight decay 1e-2,
  cosine schedule to 1e-6.

Both losses are taken on per-exit standardized LPIPS (the paper's loss divided by each exit's target
variance, resp. std): one exit with larger LPIPS does not drown the others, and SGD at lr 0.01 sees
gradients of order one.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_counts, check_finite, check_float, check_int, check_tensor
from .model import QualityPredictor

__all__ = ["RECIPES", "train_predictor"]

RECIPES = ("mse-sgd", "mae-adamw")


def train_predictor(
    predictor: QualityPredictor,
    xs: Sequence[torch.Tensor],
    lpips: torch.Tensor,
    *,
    recipe: str = "mse-sgd",
    epochs: int = 100,
    batch_size: int = 64,
    lr: float | None = None,
    seed: int = 0,
    fit_statistics: bool = True,
    progress: bool = False,
) -> list[float]:
    """Fit ``predictor`` to ``lpips [N, E]`` from ``xs`` (what it reads, see
    :func:`fiancee.predictor.features.predictor_features`).

    Returns the mean training loss per epoch. Recipes: see the module notes (paper S1.1.2, S1.2.2).
    """
    # Everything checked before any work: a NaN target would only show as "training diverged" after the epochs.
    check_choice(recipe, "recipe", RECIPES)
    check_counts(epochs=epochs, batch_size=batch_size)
    if lr is not None:
        check_float(lr, "lr", low=0.0, open_low=True)
    check_int(seed, "seed")
    check_tensor(lpips, "lpips")
    if lpips.dim() != 2 or lpips.shape[1] != predictor.num_exits:
        raise ValueError(f"lpips must be [N, {predictor.num_exits}]; got {list(lpips.shape)}")
    n = lpips.shape[0]
    if n == 0:
        raise ValueError("the training table is empty (0 inputs): the predictor needs the LPIPS of at least one input")
    if any(check_tensor(x, "predictor input").shape[0] != n for x in xs):
        raise ValueError(f"inputs and lpips disagree on N: {[x.shape[0] for x in xs]} vs {n}")
    check_finite(lpips, "lpips (the training targets)")
    for i, x in enumerate(xs):
        check_finite(x, f"predictor input {i}")
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
    target = (predictor.to_target(lpips) - predictor.y_mean) / predictor.y_std  # [N, E] standardized
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
