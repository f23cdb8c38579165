"""How long the bank's retrieval takes next to the smallest route (paper S1.1.1: up to 5 ms, 16% of the
smallest branch): the measurement ``fiancee bank-latency`` (:func:`fiancee.train.bank.bank_latency`) and the
benchmark report. It takes a bank and exits already built; the workflow loads them and fixes the threads."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..checks import check_counts
from ..timing import time_ms
from .feature_bank import FeatureBank

__all__ = ["retrieval_latency"]


@torch.no_grad()
def retrieval_latency(
    bank: FeatureBank,
    model,
    inputs_fn: Callable[[int], tuple[torch.Tensor, ...]] | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    reps: int = 50,
    warmup: int = 5,
) -> list[dict]:
    """Median wall time of retrieval (keys -> FAISS -> guide tensor) next to the median time of the
    smallest route (exit 1, route index 0; guide given as a tensor) in the same process, per batch size.

    The paper reports up to 5 ms, 16% of its smallest branch, on a P40 (S1.1.1). Timed by
    :func:`fiancee.timing.time_ms` (CUDA events on a GPU).
    """
    check_counts(reps=reps)
    model = model.eval()
    device = next(model.parameters()).device
    out = []
    for bs in batch_sizes:
        inputs = tuple(x.to(device) for x in (inputs_fn(bs) if inputs_fn else model.backbone.example_inputs(bs)))
        f = model.backbone.features(*inputs, taps=(model.key_stage,))
        h, cond = f.taps[model.key_stage], f.cond
        g = bank.guide(h, cond)

        warmup = min(warmup, reps)
        r_ms = time_ms(lambda: bank.guide(h, cond), device, reps, warmup)["median_ms"]
        s_ms = time_ms(lambda: model(*inputs, route=0, guide=g), device, reps, warmup)["median_ms"]
        out.append(
            {
                "batch_size": bs,
                "retrieval_ms": round(r_ms, 4),
                "smallest_route_ms": round(s_ms, 4),
                "fraction": round(r_ms / s_ms, 4),
                "device": str(device),
                "entries": len(bank),
            }
        )
    return out
