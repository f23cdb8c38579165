"""One timing helper for every measurement of milliseconds (bench, the bank's retrieval latency), and the
machine facts every measurement records beside its numbers (CPU model, load average).

A concept-level helper: it times a callable and returns numbers; what to time and how to report it
is the workflows' business (:mod:`fiancee.bench`).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np
import torch

__all__ = ["time_ms", "summarize_ms", "cpu_name", "load_average"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (a timing on a loaded machine says so), None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def time_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> dict:
    """Median and interquartile range (ms) of ``fn()`` over ``reps`` calls after ``warmup`` calls.

    CUDA: a pair of ``torch.cuda.Event`` recorded around every call and read once the end event
    has completed (the host returns before the kernels finish; the events time the GPU's timeline,
    gaps waiting for the host included). CPU: ``time.perf_counter``.
    :func:`fiancee.bank.retrieval_latency` and :mod:`fiancee.bench` time with it.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return summarize_ms(times)


def summarize_ms(times: list[float]) -> dict:
    """Median and interquartile range (ms) of timed calls: what :func:`time_ms` returns, for callers that collect
    the calls' times themselves (the bench's interleaved timings, one :func:`time_ms` call of one rep each)."""
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(median), "iqr_ms": float(q3 - q1)}
