import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    # Modules of many small convolutions: on a 2-core machine shared with other jobs, two OpenMP
    # threads wait on each other at every op (measured: 7 s vs 0.3 s per Inception image), so such
    # modules run single-threaded and restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Shared, session-scoped: the built-in tasks and their pretrained backbones are loaded once per session
# (the upscale backbone alone is 16.7 M parameters). A test gets its own deep copy of a backbone, so one
# that trains or moves it cannot change what the next test sees.
@pytest.fixture(scope="session")
def _loaded_backbones():
    return {}


def _backbone(name: str, cache: dict):
    from fiancee.tasks import get_task

    if name not in cache:
        cache[name] = get_task(name).load_backbone()
    return copy.deepcopy(cache[name])


@pytest.fixture(scope="session")
def faces_task():
    from fiancee.tasks import get_task

    return get_task("faces")


@pytest.fixture(scope="session")
def upscale_task():
    from fiancee.tasks import get_task

    return get_task("upscale")


@pytest.fixture(scope="module")
def faces_backbone(_loaded_backbones):
    return _backbone("faces", _loaded_backbones)


@pytest.fixture(scope="module")
def fashion_backbone(_loaded_backbones):
    return _backbone("fashion", _loaded_backbones)


@pytest.fixture(scope="module")
def upscale_backbone(_loaded_backbones):
    return _backbone("upscale", _loaded_backbones)


# No test reads or writes the checkout's own state (out/, runs/, ...: what the README's examples leave
# there). Four parts:
# - the session and every test run in an empty folder of their own, so a relative path (a command's
#   default --out, a subprocess's cwd) never lands in the checkout or finds what a user left there;
# - Hypothesis keeps its database in a temporary folder, not in ./.hypothesis;
# - an audit hook records every file operation of this process that would create, change or delete
#   something under the checkout (bytecode caches and pytest's cache aside), and the session fails
#   naming the test and the path. It sees this process only, so other people's work in a shared
#   checkout (a training run writing runs/) does not trip it;
# - with CI set (.ci/run, where nothing else writes), also the checkout's ignored files before and after
#   the session: this catches subprocesses and native libraries too.


def _share_the_cores_between_workers() -> None:
    # `make test` runs the suite on two pytest-xdist workers (the suite's budget is set for 2 cores). Each
    # worker, and every process a test starts (OMP_NUM_THREADS is inherited), gets its share of the cores:
    # two workers of two OpenMP threads each on 2 cores spin against each other at every op. A test that
    # sets its own thread count (a bench, a --threads option) still does.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", share)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_configure(config):
    _share_the_cores_between_workers()
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:  # pragma: no cover - hypothesis is a test dependency
        return
    config._fiancee_hypothesis_home = tempfile.mkdtemp(prefix="fiancee-hypothesis-")
    set_hypothesis_home_dir(config._fiancee_hypothesis_home)


def pytest_unconfigure(config):
    home = getattr(config, "_fiancee_hypothesis_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events that change the file system: the positions of their path arguments, and of the dir_fd
# argument (a path relative to a folder descriptor cannot be placed: shutil.rmtree's inner calls; its
# own event names the top folder).
_CHANGING = {
    "os.mkdir": ((0,), 2),
    "os.rename": ((0, 1), 2),
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.symlink": ((1,), 2),
    "os.link": ((1,), 2),
    "os.truncate": ((0,), None),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.utime": ((0,), 3),
    "shutil.rmtree": ((0,), None),
    "shutil.copyfile": ((1,), None),
    "shutil.copytree": ((1,), None),
    "shutil.move": ((0, 1), None),
}
_ROOT_PREFIX = str(ROOT) + os.sep
_guard = {"on": False, "test": "(session set-up)", "writes": []}


def _under_checkout(path) -> str | None:
    if isinstance(path, int) or path is None:
        return None
    try:
        full = os.path.realpath(os.path.join(os.getcwd(), os.fsdecode(os.fspath(path))))
    except (TypeError, ValueError, OSError):
        return None
    if not (full + os.sep).startswith(_ROOT_PREFIX):
        return None
    rel = os.path.relpath(full, ROOT)
    parts = rel.split(os.sep)
    if "__pycache__" in parts or parts[0] == ".pytest_cache":
        return None
    return rel


def _audit(event: str, args: tuple) -> None:
    if not _guard["on"]:
        return
    if event == "open":
        if len(args) < 3 or not isinstance(args[2], int) or not args[2] & _WRITE_FLAGS:
            return
        paths = (args[0],)
    elif event in _CHANGING:
        where, dir_fd = _CHANGING[event]
        if dir_fd is not None and len(args) > dir_fd and args[dir_fd] not in (None, -1):
            return
        paths = tuple(args[i] for i in where if i < len(args))
    else:
        return
    for path in paths:
        rel = _under_checkout(path)
        if rel is not None:
            _guard["writes"].append(f"{_guard['test']}: {event} {rel}")


sys.addaudithook(_audit)  # audit hooks cannot be removed; _guard["on"] limits it to the session


def _checkout_outputs() -> dict[str, tuple[int, int]] | None:
    """Every file the checkout's .gitignore ignores (out/, runs/, build/, *.egg-info, .hypothesis/, ...)
    with its size and mtime; None outside a git checkout. Left out: virtual environments, bytecode caches
    and pytest's own cache, which the interpreter and pytest write."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    skip = [f":(exclude){p.name}" for p in ROOT.iterdir() if (p / "pyvenv.cfg").is_file()]
    skip += [":(exclude,glob)**/__pycache__/**", ":(exclude).pytest_cache"]
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--", ".", *skip],
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0:
        return None
    files = {}
    for name in proc.stdout.decode(errors="surrogateescape").split("\0"):
        if name:
            try:
                st = os.lstat(ROOT / name)
            except FileNotFoundError:
                continue
            files[name] = (st.st_size, st.st_mtime_ns)
    return files


def _changes(before: dict, after: dict) -> list[str]:
    return (
        [f"new: {p}" for p in sorted(after.keys() - before.keys())]
        + [f"removed: {p}" for p in sorted(before.keys() - after.keys())]
        + [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    )


def _listed(items: list[str], limit: int = 20) -> str:
    return "; ".join(items[:limit]) + (f"; ... {len(items) - limit} more" if len(items) > limit else "")


@pytest.fixture(scope="session", autouse=True)
def _checkout_untouched(tmp_path_factory):
    before = _checkout_outputs() if os.environ.get("CI") else None
    _guard.update(on=True, writes=[])
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path_factory.mktemp("session_cwd"))
            yield
    finally:
        _guard.update(on=False, test="(session set-up)")
    if _guard["writes"]:
        pytest.fail(f"tests wrote under the checkout {ROOT} (use tmp_path): {_listed(_guard['writes'])}", pytrace=False)
    after = _checkout_outputs() if before is not None else None
    if after is not None:
        changed = _changes(before, after)
        if changed:
            pytest.fail(
                f"the checkout's ignored files changed during the tests (CI): {_listed(changed)}", pytrace=False
            )


@pytest.fixture(autouse=True)
def _own_cwd(request, monkeypatch, tmp_path_factory):
    _guard["test"] = request.node.nodeid
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    _guard["test"] = "(between tests)"
