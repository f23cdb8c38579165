"""What a quality predictor reads, and its predictions for generator inputs (paper section 3.2).

A head reads the generator's inputs (``mlp``: z; ``conv``: label map and noise) or the backbone's features
after the key stage (``features``, ``tiny``): those every route computes first, so they cost the predictor
nothing extra at inference.
"""

from __future__ import annotations

import torch

from .heads import get_head
from .model import QualityPredictor

__all__ = ["key_features", "predictor_features", "predict"]


@torch.no_grad()
def key_features(model, *inputs: torch.Tensor) -> torch.Tensor:
    """Backbone features after the key stage (``model.attach_after[0]``) ``[B, C, h, w]``: what the bank
    searches with and what every route computes first."""
    return model.backbone.features(*inputs, taps=(model.key_stage,)).taps[model.key_stage]


def predictor_features(
    arch: str, model, inputs: tuple[torch.Tensor, ...], batch_size: int = 256
) -> tuple[torch.Tensor, ...]:
    """The tensors a predictor of ``arch`` reads for ``inputs``: z for ``mlp``, (label, z) for ``conv``,
    key-stage features for ``features`` and ``tiny`` (computed in batches)."""
    if not get_head(arch).reads_features:
        return tuple(x.flatten(1) if x.dim() == 4 and x.shape[-2:] == (1, 1) else x for x in inputs)
    n = inputs[0].shape[0]
    return (
        torch.cat(
            [key_features(model, *(x[s : s + batch_size] for x in inputs)).cpu() for s in range(0, n, batch_size)]
        ),
    )


@torch.no_grad()
def predict(
    predictor: QualityPredictor, model, inputs: tuple[torch.Tensor, ...], batch_size: int = 256
) -> torch.Tensor:
    """Predicted LPIPS ``[N, E]`` for generator ``inputs`` (features computed when the predictor reads them)."""
    predictor.eval()
    xs = predictor_features(predictor.arch, model, inputs, batch_size)
    n = xs[0].shape[0]
    return torch.cat([predictor(*(x[s : s + batch_size] for x in xs)) for s in range(0, n, batch_size)])
