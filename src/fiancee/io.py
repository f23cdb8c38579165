"""Files: atomic writes, JSON configs, safetensors weights, cache folders.

Every artifact is written to a temporary file in the same folder and renamed over the target
(``os.replace`` is atomic on POSIX), so a run killed at any moment leaves either the old file or the
new one, never half of one. Nothing loaded here can run code: JSON and safetensors only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .checks import check_state_finite

__all__ = [
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "write_json", "read_json",
    "read_manifest", "require_keys", "save_tensors", "load_tensors", "load_torch_file", "cache_dir", "tensor_fingerprint", "file_sha256",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Any:
    """Parse a JSON file; with ``required`` it must be an object holding those keys (a clear error
    instead of a KeyError deep in the reader when a file was hand-edited or written by another tool)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a JSON file at {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from None
    return require_keys(obj, required, path) if required else obj


def read_manifest(path: str | os.PathLike, *, kind: str, version_key: str, version: int, what: str,
                  required: tuple[str, ...] = (), hint: str = "") -> dict:
    """The JSON object that identifies a folder (pipeline config, predictor config, bank manifest):
    its ``kind`` must match, its ``version_key`` must equal ``version``, and it must hold ``required``.
    Anything else (another file, another format version, a hand-edited file) is one ValueError."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        got = obj.get("kind") if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
        raise ValueError(f"{path} is not a {what} (kind={got!r}; expected {kind!r})")
    if obj.get(version_key) != version:
        raise ValueError(f"{path}: {what} format {obj.get(version_key)!r}; this fiancee reads format {version}{hint}")
    return require_keys(obj, required, path)


def require_keys(obj: Any, keys: tuple[str, ...], source: str | os.PathLike) -> dict:
    """``obj`` is a dict holding ``keys``, else a ValueError naming ``source`` and what it lacks."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source} must hold a JSON object with {list(keys)}; got a {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{source} lacks {missing} (expected keys {list(keys)})")
    return obj


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors made contiguous and moved to CPU)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or corrupt file gives a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a safetensors file at {path}")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    return dict(check_state_finite(tensors, str(path)))


def load_torch_file(path: str | os.PathLike) -> Any:
    """Read a PyTorch file of tensors (third-party weights only: ours are safetensors).

    ``weights_only=True`` lets the unpickler build tensors and plain containers and nothing else, so
    a file that asks to run code is refused rather than executed. Any failure becomes one ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a PyTorch weights file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated, corrupt or unsafe file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a loadable tensors-only PyTorch file (truncated, corrupt, or it holds "
                         f"objects that would run code): {first}") from None


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$FIANCEE_CACHE`` or ``~/.cache/fiancee``), created on demand."""
    root = Path(os.environ.get("FIANCEE_CACHE", Path.home() / ".cache" / "fiancee"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A short SHA-256 over names, shapes, dtypes and values (identifies a set of weights)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
