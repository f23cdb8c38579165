"""Error statistics of a quality predictor (Tables S3, S4).

:func:`fiancee.tables.predictor_error` gives the mean relative error ``|P - S| / S`` per exit on held-out
inputs: held-out maps with the training noises and with new noises (fashion), held-out z (faces).
"""

from __future__ import annotations

import torch

__all__ = ["relative_error", "error_summary"]


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
    return {
        "n": int(true.shape[0]),
        "relative_error": [float(v) for v in rel],
        "mean_relative_error": float(rel.mean()),
        "mae": [float(v) for v in mae],
        "spearman": [float(v) for v in rho],
        "true_mean": [float(v) for v in true.mean(0)],
    }
