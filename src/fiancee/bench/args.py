"""What ``fiancee bench`` accepts, checked in one place before any work: batch sizes, options, the device, counts,
the bank mode, the backbone and its size. Every check raises ``ValueError`` naming what was expected and what came
(the CLI prints it as one line)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..backbones import SIZES
from ..core.args import check_int
from ..rewrites import cpp_compiler
from .options import CUDA_ONLY, OPTIONS

__all__ = [
    "REFERENCE_BACKBONES",
    "RUNTIMES",
    "BANK_MODES",
    "positive",
    "parse_batches",
    "parse_options",
    "parse_device",
    "check_bank",
    "check_backbone",
    "check_size",
]

# The reference architectures (fiancee.backbones) benchmarked with random weights; any other name is
# a task spec (a built-in task, package.module:attr naming a Task, an entry point of fiancee.tasks).
REFERENCE_BACKBONES = ("oasis", "g2d")
# What runs the pipeline: PyTorch alone (run_bench), or PyTorch beside ONNX Runtime (run_onnx_bench).
RUNTIMES = ("torch", "onnx")
# Whether a bank retrieval is timed: auto = when the pipeline the backbone ships with searches one; on / off force it.
BANK_MODES = ("auto", "on", "off")


def positive(value, what: str, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer (not a bool) of at least ``minimum``
    (:func:`fiancee.core.args.check_int`)."""
    return check_int(value, what, minimum=minimum)


def parse_batches(batches: str | Sequence[int]) -> list[int]:
    items = batches.split(",") if isinstance(batches, str) else list(batches)
    out = []
    for item in items:
        text = str(item).strip()
        if not text.lstrip("-").isdigit() or int(text) < 1:
            raise ValueError(f"batch sizes must be positive integers separated by commas, like 1,8,32; got {batches!r}")
        out.append(int(text))
    if not out:
        raise ValueError(f"give at least one batch size, like 1,8,32; got {batches!r}")
    return sorted(set(out))


def parse_options(options: str | Sequence[str] | None, device: torch.device) -> list[str]:
    if options is None:
        return []
    items = options.split(",") if isinstance(options, str) else list(options)
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item not in OPTIONS:
            raise ValueError(f"unknown option {item!r}; expected some of {', '.join(OPTIONS)} (comma-separated)")
        if item in CUDA_ONLY and device.type != "cuda":
            raise ValueError(f"option {item!r} needs a CUDA device ({CUDA_ONLY[item]}); --device is {device}")
        if item not in out:
            out.append(item)
    if "bf16" in out and "fp16" in out:
        raise ValueError("options bf16 and fp16 exclude each other (one autocast dtype); choose one")
    if "compile" in out and device.type == "cpu" and not cpp_compiler():
        raise ValueError(
            "option 'compile' on cpu needs a C++ compiler for TorchInductor (g++, clang++ or $CXX); none found"
        )
    return out


def parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu or cuda (or cuda:N); got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (or cuda:N); got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked, but CUDA is not available to this torch ({torch.__version__})")
    return dev


def check_bank(bank: str, bank_inputs: int | None) -> None:
    """``bank`` is one of :data:`BANK_MODES`; a bank population needs a bank."""
    if bank not in BANK_MODES:
        raise ValueError(f"bank must be {', '.join(BANK_MODES[:-1])} or {BANK_MODES[-1]}; got {bank!r}")
    if bank == "off" and bank_inputs is not None:
        raise ValueError("bank inputs apply to a bank; got bank='off'")


def check_backbone(backbone: str) -> None:
    """A reference architecture, or a task spec that names a Task (checked without calling anything)."""
    if backbone not in REFERENCE_BACKBONES:
        from ..tasks.registry import check_task_spec

        check_task_spec(backbone)


def check_size(size: str | None, name: str, reference: bool) -> None:
    """A reference backbone takes a size of :data:`fiancee.backbones.SIZES`; a task has its own backbone (no size)."""
    if reference and size not in SIZES:
        raise ValueError(f"size must be {' or '.join(map(repr, SIZES))} for {name}; got {size!r}")
    if not reference and size is not None:
        raise ValueError(
            f"size ({' | '.join(SIZES)}) applies to the reference backbones "
            f"{' and '.join(REFERENCE_BACKBONES)}; {name} has its own pretrained backbone "
            f"(got size={size!r})"
        )
