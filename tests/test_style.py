"""The habits CONTRIBUTING.md asks for, checked: ruff's lint rules and formatter (pyproject.toml), the
"where do I change X" table naming files that exist, and every long function named there as earned."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fiancee"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
LONG = 80  # lines of body (ruff-formatted, docstring aside); a longer function is named in CONTRIBUTING.md with why


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "src", "tests", "tools"], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize("args", [("check", "--no-cache"), ("format", "--check", "--no-cache")], ids=["lint", "format"])
def test_ruff(args):
    proc = _ruff(*args)
    assert proc.returncode == 0, f"ruff {' '.join(args)} (make lint):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"


def long_functions(src: Path = SRC, limit: int = LONG) -> dict[str, int]:
    """``module.path:function`` (methods as ``Class.method``) -> lines, for every function longer than ``limit``."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        module = ".".join(path.relative_to(src.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            items = [(node.name + ".", n) for n in node.body] if isinstance(node, ast.ClassDef) else [("", node)]
            for prefix, fn in items:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = fn.end_lineno - _body_start(fn) + 1
                    if lines > limit:
                        found[f"{module}:{prefix}{fn.name}"] = lines
    return found


def _body_start(fn: ast.FunctionDef) -> int:
    """The first line of ``fn``'s body after its docstring (a docstring says why; it is not length)."""
    first = fn.body[0]
    doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    return fn.body[1].lineno if doc and len(fn.body) > 1 else first.lineno


def _listed(text: str) -> set[str]:
    section = text.split("## Long functions", 1)[1]
    return set(re.findall(r"`(fiancee[\w.]*:[\w.]+)`", section))


def test_every_long_function_is_named_as_earned():
    text = CONTRIBUTING.read_text(encoding="utf-8")
    found, listed = long_functions(), _listed(text)
    assert not set(found) - listed, (
        f"functions over {LONG} lines not named in CONTRIBUTING.md's 'Long functions' "
        f"(split them, or say there why the length is earned): "
        f"{ {k: found[k] for k in sorted(set(found) - listed)} }"
    )
    assert not listed - set(found), (
        f"CONTRIBUTING.md names functions that are no longer long: {sorted(listed - set(found))}"
    )


def test_the_long_function_check_catches_one(tmp_path):
    pkg = tmp_path / "fiancee"
    pkg.mkdir()
    body = "    x = 1\n" * 90
    (pkg / "m.py").write_text(
        f'def f():\n    """Why."""\n{body}\n\nclass C:\n    def g(self):\n    {body.replace(chr(10), chr(10) + "    ")}'
    )
    assert long_functions(pkg) == {"fiancee.m:f": 90, "fiancee.m:C.g": 90}
    assert _listed("## Long functions\n- `fiancee.m:f`: the loop\n") == {"fiancee.m:f"}


def test_the_where_table_names_files_that_exist():
    text = CONTRIBUTING.read_text(encoding="utf-8")
    table = text.split("## Where do I change X?", 1)[1].split("##", 1)[0]
    paths = re.findall(r"`(src/fiancee/[\w/.<>-]+)`", table)
    assert len(paths) >= 8
    for p in paths:
        if "<" in p:  # a pattern: its folder exists
            p = p.split("<", 1)[0]
        assert (ROOT / p).exists(), f"CONTRIBUTING.md names {p}, which does not exist"
