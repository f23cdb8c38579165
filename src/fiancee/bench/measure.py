"""The measuring loop's pieces: one clock for every timing of a run, the CPU threads it runs on, the progress it
shows, and the machine it ran on (recorded beside the numbers)."""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..timing import cpu_name, summarize_ms, time_ms

__all__ = ["Clock", "Steps", "cpu_threads", "device_info"]


@dataclass(frozen=True)
class Clock:
    """:func:`fiancee.timing.time_ms` with a run's device, timed repetitions and untimed warm-up calls."""

    device: torch.device
    reps: int
    warmup: int

    def __call__(self, fn: Callable[[], object]) -> dict:
        return time_ms(fn, self.device, self.reps, self.warmup)

    def interleaved(self, *fns: Callable[[], object]) -> list[dict]:
        """Each of ``fns`` timed as :meth:`__call__` does, but in turns: ``warmup`` untimed rounds, then ``reps``
        timed rounds, each round calling every fn once in order (A, B, A, B, ...), so that the machine's drift
        (load, clocks, caches) hits all of them alike. One :func:`time_ms` call of one rep per timed call."""
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(self.reps):
            for fn, got in zip(fns, times):
                got.append(time_ms(fn, self.device, 1, 0)["median_ms"])
        return [summarize_ms(t) for t in times]


class Steps:
    """A progress bar advanced one step per measurement, ``step(label)`` (nothing shown when not ``enabled``)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def __call__(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's and FAISS's CPU threads fixed to ``threads`` inside the block (None: left as they are), and
    restored after it."""
    try:
        import faiss
    except ImportError:  # the bank step says how to install it
        faiss = None
    old_threads = torch.get_num_threads()
    old_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    if threads is not None:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if faiss is not None:
            faiss.omp_set_num_threads(old_faiss)


def device_info(device: torch.device) -> dict:
    """The machine a report was measured on: CPU, threads, versions; on CUDA the GPU and its math settings."""
    info = {
        "type": device.type,
        "name": cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            name=torch.cuda.get_device_name(index),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info
