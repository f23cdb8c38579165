"""A training run is a folder (stylegan2-ada's habit):

```
RUN/
  config.json                  written before the first step
  stats.jsonl                  one JSON line per step (rank 0)
  latest.json                  {"step": N, "dir": "checkpoints/step_0000N"}: the last complete checkpoint
  checkpoints/step_0000N/      one safetensors file per component + optimizer and step state
```

A checkpoint folder is filled under a temporary name and renamed when complete; ``latest.json`` is
then replaced atomically. One process writes a run at a time (:class:`fiancee.io.RunLock` on
``RUN/.lock``), and ``latest.json``'s ``dir`` must lie inside the run folder. A run killed at any moment (even
SIGKILL) therefore resumes from its last complete checkpoint, and ``stats.jsonl`` is cut back to that step so
the loss curve continues.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..io import (
    atomic_folder,
    atomic_write_text,
    config_int,
    config_str,
    load_tensors,
    read_json,
    resolve_inside,
    save_tensors,
    write_json,
)

__all__ = ["RunDir", "optimizer_tensors", "load_optimizer_tensors"]


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and the JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def stats_path(self) -> Path:
        return self.path / "stats.jsonl"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, config)

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder: no config.json")
        config = read_json(self.config_path, required=("task", "scale", "min_channels"))
        config_str(config, "task", self.config_path)
        config_int(config, "min_channels", self.config_path, minimum=1)
        config_str(config, "bank", self.config_path, optional=True)
        if isinstance(config["scale"], bool) or not isinstance(config["scale"], (str, int, float)):
            raise ValueError(
                f"{self.config_path}: field 'scale' must be a fraction like '1/4' or a number; got {config['scale']!r}"
            )
        return config

    def append_stats(self, record: dict) -> None:
        # One short line per write: a crash can at worst leave a partial last line, which
        # read_stats skips and truncate_stats removes on resume.
        with open(self.stats_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_stats(self) -> list[dict]:
        if not self.stats_path.is_file():
            return []
        out = []
        for line in self.stats_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_stats(self, step: int) -> None:
        """Keep the records of steps <= ``step`` (those the last checkpoint already contains)."""
        kept = [r for r in self.read_stats() if r.get("step", 0) <= step]
        atomic_write_text(self.stats_path, "".join(json.dumps(r) + "\n" for r in kept))

    def latest(self) -> dict | None:
        p = self.path / "latest.json"
        if not p.is_file():
            return None
        latest = read_json(p, required=("step", "dir"))
        config_int(latest, "step", p, minimum=0)
        resolve_inside(self.path, latest["dir"], "latest.json's 'dir'")
        return latest

    def save_checkpoint(
        self, step: int, components: dict[str, dict[str, torch.Tensor]], state: dict, keep: int = 2
    ) -> Path:
        """Write ``components`` (name -> tensors) and ``state`` (JSON) as checkpoint ``step``."""
        root = self.path / "checkpoints"
        final = root / f"step_{step:08d}"
        tmp = root / f".step_{step:08d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, tensors in components.items():
            save_tensors(tmp / f"{name}.safetensors", tensors)
        write_json(tmp / "state.json", {**state, "step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_json(self.path / "latest.json", {"step": step, "dir": str(final.relative_to(self.path))})
        for old in sorted(p for p in root.glob("step_*") if p != final)[: -keep + 1 or None]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(
        self, names: list[str], device: str | torch.device = "cpu"
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
        latest = self.latest()
        if latest is None:
            return None
        folder = resolve_inside(self.path, latest["dir"], "latest.json's 'dir'")
        components = {n: load_tensors(resolve_inside(folder, f"{n}.safetensors"), device=device) for n in names}
        return components, read_json(resolve_inside(folder, "state.json"))

    def export(
        self, out: str | os.PathLike, components: tuple[str, ...] = ("branches",), *, dtype: str = "float32"
    ) -> Path:
        """Copy config, stats, the last checkpoint's ``components`` and the run's copy of its bank (the
        config's ``bank`` folder, if any) into a slim run folder at ``out`` (what inference needs, without
        critics or optimizer state): small enough to commit. ``dtype="float16"`` rounds the floating
        weights to half precision (half the size; the exits are then measured as exported, from ``out``):
        how the 4.8 M parameters of Real-ESRGAN's exit branches ship in 10 MB."""
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16'; got {dtype!r}")
        latest = self.latest()
        if latest is None:
            raise ValueError(f"{self.path} has no checkpoint to export")
        src = resolve_inside(self.path, latest["dir"], "latest.json's 'dir'")
        config = self.read_config()
        # The slim folder is built beside ``out`` and swapped in whole; an exported run is a run of the
        # same kind, so it replaces only such a folder (never, say, a pipeline).
        with atomic_folder(out, kind=config.get("kind") or "run", what="run") as tmp:
            dst = tmp / latest["dir"]
            dst.mkdir(parents=True, exist_ok=True)
            for name in components:
                tensors = load_tensors(resolve_inside(src, f"{name}.safetensors"))
                if dtype == "float16":
                    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
                save_tensors(dst / f"{name}.safetensors", tensors)
            write_json(dst / "state.json", {"step": latest["step"], **({"dtype": dtype} if dtype != "float32" else {})})
            if config.get("bank") is not None:
                bank = resolve_inside(self.path, config["bank"], "config.json's 'bank' entry")
                shutil.copytree(bank, resolve_inside(tmp, config["bank"], "config.json's 'bank' entry"), symlinks=False)
            slim = RunDir(tmp)
            slim.write_config(config)
            atomic_write_text(slim.stats_path, "".join(json.dumps(r) + "\n" for r in self.read_stats()))
            write_json(tmp / "latest.json", latest)
        return Path(out)
