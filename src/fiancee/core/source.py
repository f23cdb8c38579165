"""Which code a measurement ran: the git commit of the checkout and the files under src/ that differed from it.
Result files (:mod:`fiancee.results`) and bench reports (:mod:`fiancee.bench`) stamp themselves with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_commit"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.rstrip("\n") if out.returncode == 0 else None


def git_commit() -> dict:
    """The checkout's commit and the files under src/ that differ from it (``dirty``); None outside git."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    top = _git("rev-parse", "--show-toplevel")
    status = _git("status", "--porcelain", "--", str(Path(top) / "src")) if top else ""
    dirty = sorted(line[3:] for line in (status or "").splitlines() if line.strip())
    return {"commit": commit, "dirty": dirty}
