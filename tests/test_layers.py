"""The package's layers (docs/architecture.md): imports only run downwards, no import circles, and
no built-in task name outside the tasks package and the CLI's help text.

The import graph is read from the source (every ``import`` statement, those inside functions
included: a function-level import hides a circle from Python, not from this test).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fiancee"

# Lowest first. A module may import from its own layer or a lower one; the graph must be acyclic.
LAYERS = [
    # concept modules: take objects, return objects; never read run folders or resolve task names
    (
        "concept",
        [
            "core",
            "checks",
            "extras",
            "io",
            "specs",
            "timing",
            "staged",
            "tiles",
            "metrics",
            "backbones",
            "exits",
            "rewrites",
            "bank",
            "predictor",
            "routing",
            "risk",
            "guarantee",
            "plots",
            "runtime",
        ],
    ),
    # the task registry and the built-in tasks (each reads its own data and weights); classifier: the old
    # path of tasks.fashion.classifier, re-exported
    ("tasks", ["tasks", "classifier"]),
    # the pipeline folder: its from_pretrained resolves the recorded task spec through the registry
    ("pipeline", ["pipeline"]),
    # workflows: read and write run folders, resolve names, train, measure, print
    (
        "workflow",
        [
            "train",
            "tables",
            "evaluate",
            "exit_quality",
            "report",
            "bank_ablation",
            "paper",
            "assemble",
            "demo",
            "bench",
            "export",
            "export_targets",
            "upscaling",
            "results",
            "guarantee_study",
            "serving",
            "cli",
            "__main__",
            "__init__",
        ],
    ),
]
TASK_NAMES = {"faces", "fashion", "upscale"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of this package that ``name`` imports anywhere in its file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "fiancee":
                base = node.module.split(".")[1:]
            else:
                continue
            targets.append(".".join(base))
            targets += [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            targets += [".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "fiancee"]
        for t in targets:
            if t == "":
                t = "__init__"
            if t in known and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(name: str) -> int:
    top = name.split(".")[0]
    for rank, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return rank
    raise AssertionError(
        f"module fiancee.{name} is in no layer of this test: add it to LAYERS (and docs/architecture.md)"
    )


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert "tasks.registry" in graph["pipeline"]  # imported inside from_pretrained
    assert "tasks.faces" in graph["tasks.registry"]  # imported inside the built-in factory


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_imports_only_run_downwards():
    upward = [
        f"fiancee.{a} ({LAYERS[_layer(a)][0]}) imports fiancee.{b} ({LAYERS[_layer(b)][0]})"
        for a, deps in _graph().items()
        for b in deps
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import circle: " + " -> ".join(f"fiancee.{m}" for m in cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_no_built_in_task_name_outside_tasks_and_cli():
    hits = []
    for name, path in _modules().items():
        if name.split(".")[0] in ("tasks", "cli"):
            continue
        for const in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            if const.value in TASK_NAMES:
                hits.append(f"{path.relative_to(SRC.parent)}:{const.lineno}: {const.value!r}")
    assert not hits, "\n".join(hits)


def test_the_cli_names_tasks_only_in_help_text():
    """The cli package may mention the built-in tasks in help text and defaults; it never offers them as choices."""
    for path in sorted((SRC / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "choices"
                and isinstance(node.value, (ast.List, ast.Tuple))
            ):
                values = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
                # train-backbone / train-classifier / evaluate-backbone are the fashion task's own commands
                assert values & TASK_NAMES <= {"fashion"} and values != {"faces", "fashion"}, values
            if isinstance(node, ast.keyword) and node.arg == "only" and isinstance(node.value, ast.Constant):
                assert node.value.value == "fashion", node.value.value  # task_option(only=...): its choices
