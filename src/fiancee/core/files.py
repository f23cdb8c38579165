"""Files a folder names: confined to the folder, and identified by their bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["resolve_inside", "file_sha256"]


def resolve_inside(folder: str | os.PathLike, entry: Any, what: str = "entry") -> Path:
    """``folder / entry`` with every symlink followed, refused unless it stays inside ``folder``.

    ``entry`` comes from a file the user may not have written (a config's ``bank``, latest.json's
    ``dir``, an export manifest's file names) or is a fixed component name (``branches.safetensors``,
    which may be a symlink): an absolute path, a ``..`` or a symlink leading out of the folder is one
    ValueError naming it.
    """
    folder = Path(folder)
    if not isinstance(entry, (str, os.PathLike)) or not str(entry):
        raise ValueError(f"{folder}: {what} must be a relative path inside the folder; got {entry!r}")
    rel = Path(entry)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(
            f"{folder}: {what} {str(entry)!r} leaves the folder (absolute paths and '..' are refused); "
            "everything a folder loads must lie inside it"
        )
    root = folder.resolve()
    target = (folder / rel).resolve()
    if target != root and root not in target.parents:
        raise ValueError(
            f"{folder}: {what} {str(entry)!r} is a symlink leading out of the folder (to {target}); "
            "everything a folder loads must lie inside it"
        )
    return target


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
