"""Tasks: a named generator with its inputs, exits and image comparison (see :mod:`fiancee.tasks.base`).

Built-in tasks (any other is named ``package.module:attr`` or by an entry point, :mod:`.registry`):

- ``faces``: the pretrained DCGAN of ``gan-face-generate==1.1.1``, unconditional, 64x64.
- ``fashion``: OASIS semantic synthesis on Fashion-MNIST label maps, 32x32, trained here.
- ``upscale``: Real-ESRGAN x4plus (RRDBNet) on 32x32 tiles of real photos, x4, official weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import InputSpec, Task, declared_inputs
from .registry import (
    TASKS,
    allow_folder_code,
    check_task_spec,
    register_task,
    resolve_folder_task,
    resolve_task,
    task_spec,
)

__all__ = [
    "Task",
    "InputSpec",
    "TASKS",
    "get_task",
    "resolve_task",
    "resolve_folder_task",
    "allow_folder_code",
    "register_task",
    "check_task_spec",
    "task_spec",
    "declared_inputs",
    "write_samples",
]


def get_task(
    spec: "str | Task", *, data: str | os.PathLike | None = None, weights: str | os.PathLike | None = None
) -> Task:
    """The task ``spec`` names (:func:`~fiancee.tasks.registry.resolve_task`); ``data`` / ``weights``
    override where its data and weights are read."""
    return resolve_task(spec, data=data, weights=weights)


@torch.no_grad()
def write_samples(
    task: Task, out: str | os.PathLike, *, n: int = 16, seed: int = 0, split: str = "test", batch_size: int = 64
) -> dict:
    """Write ``n`` backbone images as ``sample_00000.png`` ... plus ``grid.png`` into ``out``.

    For ``fashion`` the inputs are label maps of the real test set (``split``) with seeded noise.
    """
    from PIL import Image

    from ..checks import check_counts
    from ..io import atomic_path
    from ..plots import save_grid, to_uint8

    check_counts(n=n, batch_size=batch_size)
    backbone = task.load_backbone("cpu")
    inputs = task.sample_inputs(n, seed, split)
    images = torch.cat([backbone(*(x[i : i + batch_size] for x in inputs)) for i in range(0, n, batch_size)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(to_uint8(images)):
        with atomic_path(out / f"sample_{i:05d}.png") as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
    save_grid(images, out / "grid.png", ncol=min(8, n))
    return {"task": task.name, "n": n, "seed": seed, "split": split, "out": str(out)}
