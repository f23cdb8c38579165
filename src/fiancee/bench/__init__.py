"""Milliseconds next to MACs: routes, the mixed-exit tree, the predictor and the bank (``fiancee bench``).

MACs are a proxy; users pay in milliseconds. :func:`run_bench` measures, on one device (definitions in
BENCHMARKS.md), one phase per module:

- **routes** (:mod:`.routes`): median wall time of every route at every batch size next to its MACs;
  ``latency_ratio`` beside ``macs_ratio``.
- **mixed** (:mod:`.mixed`): batches whose samples take different routes (seeded mixes: uniform, and with a
  pipeline the route shares its router chooses at LPIPS <= 0.05 and 0.1, else every single route) run as the
  mixed-exit tree, against the ideal, the deepest-needed route and the samples grouped by route. Ratios are
  ``other / tree``: above 1 the tree is faster.
- **overhead** (:mod:`.overhead`): the quality predictor's forward plus the bank's retrieval as a fraction of the
  smallest route, at the smallest and the largest batch size.
- **options** (:mod:`.options`): channels_last, bf16 / fp16 autocast, torch.compile, CUDA graphs, each alone and
  all together: speedup vs eager fp32 and the image's difference, per route and batch.

What is benchmarked (:mod:`.setup`): a task's backbone with its committed or untrained exits, or a reference
architecture with random weights. :func:`run_onnx_bench` (:mod:`.onnx`) times the same pipeline under PyTorch
and ONNX Runtime. Arguments are checked in :mod:`.args`; the clock, threads and progress are :mod:`.measure`;
the JSON layout and the tables are :mod:`.report`; :mod:`.run` drives the phases.
"""

from __future__ import annotations

from ..timing import time_ms
from .args import BANK_MODES, REFERENCE_BACKBONES, RUNTIMES
from .mixed import DEMO_SHARES, ROUTED_THRESHOLDS, bench_mixes, mix_exits, mix_routes, routed_mixes, skewed_shares
from .onnx import run_onnx_bench
from .options import FASTER, OPTIONS, TOLERANCES
from .report import FORMAT_VERSION, format_onnx_table, format_table
from .run import run_bench
from .setup import GEOMETRY

__all__ = [
    "REFERENCE_BACKBONES",
    "OPTIONS",
    "GEOMETRY",
    "DEMO_SHARES",
    "ROUTED_THRESHOLDS",
    "bench_mixes",
    "routed_mixes",
    "TOLERANCES",
    "FASTER",
    "FORMAT_VERSION",
    "RUNTIMES",
    "BANK_MODES",
    "time_ms",
    "mix_routes",
    "mix_exits",
    "skewed_shares",
    "run_bench",
    "format_table",
    "run_onnx_bench",
    "format_onnx_table",
]
