"""Files and folders: atomic writes, whole-folder replacement, confinement, one writer, strict JSON.

Every artifact is written to a temporary file in the same folder and renamed over the target
(``os.replace`` is atomic on POSIX), so a run killed at any moment leaves either the old file or the
new one, never half of one. Nothing loaded here can run code: JSON and safetensors only.

Folders (pipeline, predictor, bank, exported run) are replaced whole (:func:`atomic_folder`): the new
folder is built in a hidden sibling and swapped in with one rename (an atomic exchange where the OS
has one), so a reader finds the old folder or the new one. A reader that reads a folder file by file
could still straddle a swap; :func:`read_whole_folder` re-reads the folder's stamp file (unique per
save) after loading and loads again when it changed. Everything a folder names resolves inside it
(:func:`resolve_inside`), and a run folder has one writer at a time (:class:`RunLock`).

Strict JSON reading, path confinement and file digests are torch-free (:mod:`fiancee.core`, which the
exported runtime uses too) and re-exported here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from .checks import check_state_finite
from .core.args import int_expected
from .core.files import file_sha256, resolve_inside
from .core.folders import canonical_kind, check_header, header
from .core.jsonio import loads_strict, read_json, require_keys
from .core.numbers import finite, is_int

__all__ = [
    "compact_floats",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "read_json",
    "loads_strict",
    "read_manifest",
    "require_keys",
    "save_tensors",
    "load_tensors",
    "load_torch_file",
    "cache_dir",
    "tensor_fingerprint",
    "file_sha256",
    "resolve_inside",
    "folder_kind",
    "check_replaceable",
    "atomic_folder",
    "read_whole_folder",
    "RunLock",
    "config_int",
    "config_int_list",
    "config_str",
    "config_number",
    "config_object",
    "build_bounded",
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
    """Write strict JSON atomically: NaN and Infinity are not JSON, so a value holding them is refused."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"refusing to write {path}: it would hold NaN or Infinity, which is not JSON (a diverged value?)"
        ) from None
    atomic_write_text(path, text + "\n")


def read_manifest(
    path: str | os.PathLike, *, kind: str, version: int, what: str, required: tuple[str, ...] = (), hint: str = ""
) -> dict:
    """The JSON object that identifies a folder (pipeline config, predictor config, bank manifest, ...): its
    header (``kind``, ``format``: :mod:`fiancee.core.folders`) must name ``kind`` and ``version``, and it must
    hold ``required``. Old headers (old kind spellings, ``format_version``) and old field names are read
    through the compatibility table; the object comes back as this release writes it
    (:func:`fiancee.core.folders.upgrade`).
    Anything else (another file, another format version, a hand-edited file) is one ValueError."""
    path = Path(path)
    obj = check_header(read_json(path), kind=kind, version=version, what=what, source=path, hint=hint)
    return require_keys(obj, required, path)


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (tensors made contiguous and moved to CPU).

    safetensors reports a failed write (a full disk, a lost mount) as its own ``SafetensorError``, not as an
    ``OSError``: it is raised again as the ``OSError`` it wraps (its errno, the target named), which the CLI
    prints as one line ("no space left on the device writing ...")."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)
        except SafetensorError as e:
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


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
        raise ValueError(
            f"{path} is not a loadable tensors-only PyTorch file (truncated, corrupt, or it holds "
            f"objects that would run code): {first}"
        ) from None


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$FIANCEE_CACHE`` or ``~/.cache/fiancee``), created on demand."""
    root = Path(os.environ.get("FIANCEE_CACHE", Path.home() / ".cache" / "fiancee"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def compact_floats(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` stored as float16 when float16 holds every float32 value of them exactly, else unchanged.

    Lossless: loading casts back to the module's float32 and gives the same values bit for bit. Weights that
    were rounded to float16 once (an exported run, ``RunDir.export(dtype="float16")``) stay half the size in
    every folder saved from them, e.g. a pipeline's copy of Real-ESRGAN's exit branches (10 MB, not 19). All
    or nothing: a set of weights is never stored in a mix of the two types."""
    floats = {k: t.detach() for k, t in tensors.items() if t.dtype == torch.float32}
    if not floats:
        return dict(tensors)
    half = {k: t.to(torch.float16) for k, t in floats.items()}
    if not all(torch.equal(half[k].float(), t) for k, t in floats.items()):
        return dict(tensors)
    return {k: half.get(k, t) for k, t in tensors.items()}


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


# ----------------------------------------------------------------------------------------------
# Whole folders: kinds, atomic replacement, consistent reads.

# summary.json: an output folder's (fiancee upscale writes no config), so a rerun with --overwrite can replace it.
_MANIFESTS = ("config.json", "manifest.json", "summary.json")


def folder_kind(path: str | os.PathLike) -> str | None:
    """What a folder holds: None (missing or empty), the ``kind`` of its config.json / manifest.json spelled
    the one way (old spellings and the two kindless layouts read by :func:`fiancee.core.folders.header`:
    ``"fiancee-exits-run"`` for a run written as ``"exits"``), else ``"unrecognised"``."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return "file"
    names = {p.name for p in path.iterdir()} - {".lock"}
    if not names:
        return None
    for name in _MANIFESTS:
        if name in names:
            try:
                obj = read_json(path / name)
            except (ValueError, OSError):
                return "unrecognised"
            kind, _ = header(obj)
            return kind if kind is not None else "unrecognised"
    return "unrecognised"


def check_replaceable(target: str | os.PathLike, kind: str, what: str | None = None) -> Path:
    """Refuse to write a ``kind`` folder over a folder of another kind (or a file, or unrelated files):
    replacing it would lose what it holds. Call it before any work; :func:`atomic_folder` calls it again.
    ``kind`` may be spelled the old way (:data:`fiancee.core.folders.OLD_KINDS`)."""
    target = Path(target)
    have = folder_kind(target)
    if have is not None and have != canonical_kind(kind):
        held = {"file": "a file", "unrecognised": "files that are not a fiancee folder"}.get(
            have, f"a folder of kind {have!r}"
        )
        raise ValueError(
            f"{target} holds {held}; refusing to replace it with a {what or repr(kind)} folder (choose another --out)"
        )
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(target: Path) -> None:
    """Remove the temporary siblings of ``target`` that a killed writer left (its pid is gone); if a
    writer died between moving the old folder aside and moving the new one in, put the old one back."""
    prefix = f".{target.name}."
    for p in sorted(target.parent.glob(prefix + "*")):
        parts = p.name[len(prefix) :].split(".")
        if len(parts) != 3 or parts[2] not in ("tmp", "old") or not parts[0].isdigit():  # not ours (another name)
            continue
        if _pid_alive(int(parts[0])):
            continue
        if parts[2] == "old" and not target.exists() and p.is_dir():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_folder(
    target: str | os.PathLike, *, kind: str, what: str | None = None, overwrite: bool = True
) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``target`` to build a ``kind`` folder in; on success it replaces
    ``target`` whole.

    The swap is one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (``target`` never missing),
    else two renames (old aside, new in: for an instant ``target`` is missing, and a reader retries);
    the old folder is then removed. A failure before the swap leaves ``target`` untouched and removes
    the temporary folder; leftovers of killed writers (their pid is gone) are removed by the next
    writer and never read (hidden names). A folder of another kind is never replaced
    (:func:`check_replaceable`); with ``overwrite=False`` an existing folder is not replaced at all.
    ``target`` given as a symlink is followed: the folder it names is replaced.
    """
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    if target.parent.is_dir():
        _clean_leftovers(target)  # first: it may put back the folder a killed writer had moved aside
    if target.exists() and not overwrite and folder_kind(target) is not None:
        raise ValueError(f"{target} already exists; choose another --out or remove it")
    check_replaceable(target, kind, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f".{target.name}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=tag, suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it a plain mkdir's mode
        check_replaceable(target, kind, what)  # again: another process may have written meanwhile
        if not target.exists():
            try:
                os.replace(tmp, target)
                return
            except OSError as e:  # another writer's folder arrived meanwhile: swap with it instead
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:
            old = Path(tempfile.mkdtemp(prefix=tag, suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _stamp(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def read_whole_folder(stamp: str = "config.json", attempts: int = 20, path_index: int = 0) -> Callable:
    """Decorate a loader so that it returns one save's folder, never a mix of two.

    The folder is the loader's positional argument ``path_index`` (1 under a ``classmethod``). Its stamp
    file (it differs between saves) is read before and after loading; if it changed, or the load
    failed while it changed, a writer swapped the folder meanwhile and the load starts again.
    """
    import time

    def decorate(load: Callable) -> Callable:
        @functools.wraps(load)
        def wrapper(*args, **kwargs):
            path = args[path_index]
            file = Path(path) / stamp
            for attempt in range(attempts):
                before = _stamp(file)
                try:
                    result = load(*args, **kwargs)
                except (OSError, ValueError):
                    if attempt + 1 < attempts and _stamp(file) != before:
                        time.sleep(0.01 * (attempt + 1))
                        continue
                    raise
                if _stamp(file) == before:
                    return result
                time.sleep(0.01 * (attempt + 1))
            raise ValueError(
                f"{path} kept changing while it was read ({attempts} attempts): "
                "another process is re-saving it; try again when it is done"
            )

        return wrapper

    return decorate


# ----------------------------------------------------------------------------------------------
# One writer per run folder.


class RunLock:
    """An exclusive advisory lock (``fcntl.flock``) on ``FOLDER/.lock``, held while a process writes a run.

    The OS releases it when the process exits, however it dies (SIGKILL included), so a stale lock
    never blocks a resume. A second writer gets one ValueError naming the holder's pid.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(
                    f"{self.folder} is being written by another process (pid {holder}); "
                    "one writer per run folder: wait for it to finish or stop it"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# Config fields, type-checked where they are read (the file and the field named), in the words of the argument
# checks (fiancee.core.args).


def _field(config: Mapping, key: str, source: Any, expected: str, ok: Callable[[Any], bool], optional: bool) -> Any:
    value = config.get(key) if isinstance(config, Mapping) else None
    if value is None and optional:
        return None
    if not ok(value):
        raise ValueError(f"{source}: field {key!r} must be {expected}; got {value!r}")
    return value


def config_int(
    config: Mapping,
    key: str,
    source: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> int | None:
    """An integer field (bools and fractional numbers refused), within ``[minimum, maximum]``."""
    return _field(
        config,
        key,
        source,
        int_expected(minimum, maximum),
        lambda v: is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum),
        optional,
    )


def config_int_list(
    config: Mapping, key: str, source: Any, *, minimum: int | None = None, nonempty: bool = True, optional: bool = False
) -> list[int] | None:
    """A list of integers (no bools, no fractions, no strings)."""
    lo = "" if minimum is None else f" >= {minimum}"
    return _field(
        config,
        key,
        source,
        f"a {'non-empty ' if nonempty else ''}list of integers{lo}",
        lambda v: (
            isinstance(v, list)
            and (bool(v) or not nonempty)
            and all(is_int(x) and (minimum is None or x >= minimum) for x in v)
        ),
        optional,
    )


def config_str(config: Mapping, key: str, source: Any, *, optional: bool = False) -> str | None:
    return _field(config, key, source, "a non-empty string", lambda v: isinstance(v, str) and bool(v), optional)


def config_number(config: Mapping, key: str, source: Any, *, optional: bool = False) -> float | None:
    """A finite number (bools refused)."""
    return _field(config, key, source, "a finite number", finite, optional)


def config_object(config: Mapping, key: str, source: Any, *, optional: bool = False) -> dict | None:
    """A JSON object (a dict)."""
    return _field(config, key, source, "a JSON object", lambda v: isinstance(v, dict), optional)


def build_bounded(
    build: Callable[[], "torch.nn.Module"],
    weights: str | os.PathLike,
    source: Any,
    probe: Callable[[], "torch.nn.Module"] | None = None,
) -> "torch.nn.Module":
    """``build()`` a module whose size a config decides, once its weights are known to fit in ``weights``.

    The module (or ``probe``, a cheaper stand-in with no more weights) is first built on PyTorch's meta
    device (shapes only, no memory); if its state needs more bytes than the weights file holds, the
    config is wrong (hand-edited or corrupt: a 10^8-wide layer) and is refused before anything is allocated.
    """
    with torch.device("meta"):
        probe = (probe or build)()
    need = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    weights = Path(weights)
    size = weights.stat().st_size if weights.is_file() else 0
    if need > size:
        raise ValueError(
            f"{source}: the model it describes needs {need} bytes of weights, but {weights.name} holds "
            f"{size}: refusing to allocate it (a corrupt or hand-edited config?)"
        )
    return build()
