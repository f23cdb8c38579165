"""Every line of every `fiancee COMMAND --help` example, read as a user reads it, against the current CLI.

An epilog is a header (``example:`` or ``example (note):``), command lines and note lines in
parentheses; a command line may end in a note after two or more spaces (``   (after ...)``). Every
command line must parse with today's parser (a missing required option or an unknown flag fails), and
must run as written from a fresh clone or say what it needs first:

- a folder or file it reads is committed (not under runs/ or out/, which a fresh clone lacks), or an
  earlier line of the same example writes it, or the line or the example's header says what comes
  first (``after ...``);
- ``--device cuda`` says it needs a CUDA GPU, and a task of a module of the user's names that module;
- the runs that ``exit-quality`` compares share the budget it checks (with ``--bank-ablation``: every
  budget key, the first run without a bank and the second with one), read from the configs the example's
  own train-exits lines would write, or a committed run's config.json, so the example is not refused for
  mismatched runs.

test_examples.py runs the cheap examples and checks where they write.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

from fiancee.cli import build_parser
from fiancee.cli.exits import exit_config
from fiancee.exit_quality import BUDGET_KEYS, SHARED_KEYS

ROOT = Path(__file__).resolve().parents[1]

HEADER = re.compile(r"^example(?:\s*\((?P<note>.*)\))?:\s*(?P<rest>.*)$")
TRAILING_NOTE = re.compile(r"\s{2,}\((?P<note>.*)\)\s*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Arguments naming a folder or file the command reads (dest names across the subcommands).
READS = ("a", "b", "run", "runs", "predictor", "pipeline", "bank", "exits", "weights", "classifier", "images")
NOT_IN_A_FRESH_CLONE = ("runs", "out")


def _subcommands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def _lines(epilog: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(header note, [(line as written, command, trailing note)]) of one epilog; other lines are notes."""
    header, commands = "", []
    for raw in epilog.splitlines():
        text = raw.strip()
        m = HEADER.match(text)
        if m:
            header, text = m.group("note") or "", m.group("rest").strip()
        if not text or text.startswith("("):
            continue
        note = ""
        m = TRAILING_NOTE.search(text)
        if m:
            note, text = m.group("note"), text[: m.start()].rstrip()
        commands.append((raw.strip(), text, note))
    return header, commands


def _argv(command: str) -> list[str] | None:
    """The fiancee argv of a command line (leading VAR=value assignments dropped); None for a python line."""
    tokens = shlex.split(command)
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if tokens[:2] == ["python", "-c"] and len(tokens) == 3:
        compile(tokens[2], "<example>", "exec")
        return None
    assert tokens and tokens[0] == "fiancee", (
        f"an example line that is neither a fiancee nor a python -c command: {command!r}"
    )
    return tokens[1:]


def _parse(argv: list[str], line: str):
    try:
        return build_parser().parse_args(argv)
    except SystemExit:  # argparse has printed why
        pytest.fail(f"the example does not parse with the current CLI: {line}", pytrace=False)


def _writes(args) -> list[str]:
    out = [getattr(args, k, None) for k in ("out", "json")]
    if args.command == "export-backbone" and args.out is None:
        out.append(str(Path(args.run) / "backbone"))
    if args.command == "evaluate" and args.out is None:
        out.append(str(Path(args.pipeline) / "report"))
    return [p for p in out if isinstance(p, str)]


def _reads(args) -> list[str]:
    found = []
    for k in READS:
        v = getattr(args, k, None)
        found += [v] if isinstance(v, str) else list(v) if isinstance(v, list) else []
    if args.command == "train-backbone" and (args.config.endswith(".json") or "/" in args.config):
        found.append(args.config)
    return found


def _committed(path: str) -> bool:
    return Path(path).parts[0] not in NOT_IN_A_FRESH_CLONE and (ROOT / path).exists()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _says_after(*notes: str) -> bool:
    return any(re.search(r"\bafter\b", n, re.I) for n in notes)


EXAMPLES = [(name, sub.epilog or "") for name, sub in _subcommands().items()]


def test_every_subcommand_has_an_example_of_itself():
    for name, epilog in EXAMPLES:
        _, commands = _lines(epilog)
        own = [c for _, c, _ in commands if (_argv(c) or [None])[0] == name]
        assert own, f"`fiancee {name} --help` shows no example of {name}"


@pytest.mark.parametrize("name,epilog", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_every_example_line_parses_and_runs_as_written_or_says_what_it_needs(name, epilog):
    _check(name, epilog)


def _users_module(argv: list[str], notes: str, mp: pytest.MonkeyPatch) -> None:
    """A stand-in for a module of the user's (``--task mymodule:MyTask``) that the example's note names:
    --task is checked while parsing, and a fresh clone has no mymodule.py."""
    from fiancee.tasks.base import Task

    for flag, value in zip(argv, argv[1:]):
        if flag in ("--task", "--backbone") and ":" in value:
            module, attr = value.split(":", 1)
            assert module in notes, f"`{' '.join(argv)}` needs the user's module {module} and does not say so"
            mp.setitem(sys.modules, module, types.SimpleNamespace(**{attr: type(attr, (Task,), {})}))


def _check(name: str, epilog: str) -> None:
    header, commands = _lines(epilog)
    written: list[str] = []  # what the example's earlier lines write
    trained: dict[str, dict] = {}  # run folder -> the config its train-exits line would write
    for line, command, note in commands:
        argv = _argv(command)
        if argv is None:
            continue
        with pytest.MonkeyPatch.context() as mp:
            _users_module(argv, note + header, mp)
            args = _parse(argv, line)
        for path in _reads(args):
            ok = _committed(path) or any(_inside(path, w) for w in written) or _says_after(note, header)
            assert ok, (
                f"{name} --help: `{line}` reads {path}, which a fresh clone lacks, no earlier line writes "
                "and no note says what comes first ('after ...')"
            )
        if str(getattr(args, "device", None) or "").startswith("cuda"):
            assert re.search(r"CUDA|GPU", note + header), f"{name} --help: `{line}` needs a GPU and does not say so"
        if args.command == "train-exits" and ":" not in args.task:
            trained[args.out] = exit_config(args).to_dict()
        if args.command == "exit-quality":
            _check_comparable(name, line, args.runs, trained, ablation=args.bank_ablation)
        written += _writes(args)


def _check_comparable(name: str, line: str, runs: list[str], trained: dict[str, dict], ablation: bool) -> None:
    configs = []
    for run in runs:
        if run in trained:
            configs.append(trained[run])
        elif _committed(str(Path(run) / "config.json")):
            configs.append(json.loads((ROOT / run / "config.json").read_text()))
        else:
            return  # a run the example does not make: the line says what comes first (checked above)
    keys = BUDGET_KEYS if ablation else SHARED_KEYS
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    assert not differ, f"{name} --help: `{line}` compares runs that differ in {differ}; exit-quality refuses them"
    if ablation:
        assert len(configs) == 2, f"{name} --help: `{line}`: --bank-ablation compares exactly two runs"
        assert configs[0].get("bank") is None and configs[1].get("bank") is not None, (
            f"{name} --help: `{line}`: the first run must be trained without a bank, the second with one"
        )


def test_the_checks_catch_a_broken_example():
    """The checks above fail on what the issue found: a missing required option, an unknown flag, a run
    no line makes, and a pair of runs of different budgets."""
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _parse(_argv("fiancee exit-quality runs/a runs/b --n 500"), "exit-quality without --out")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _parse(_argv("fiancee macs --backbone oasis --no-such-flag"), "unknown flag")
    bad = (
        "example (the shipped exits against a bank run):\n"
        "  fiancee build-bank --task faces --out runs/bank_faces\n"
        "  fiancee train-exits --task faces --preset quick --bank runs/bank_faces --out runs/faces_bank\n"
        "  fiancee exit-quality src/fiancee/weights/faces/exits runs/faces_bank --bank-ablation --out out/ablation "
        "--n 500"
    )
    with pytest.raises(AssertionError, match="differ in .*steps"):
        _check("exit-quality", bad)
    missing = "example: fiancee exit-quality runs/fashion_s0 runs/fashion_s1 --n 500 --out out/t"
    with pytest.raises(AssertionError, match="reads runs/fashion_s0, which a fresh clone lacks"):
        _check("exit-quality", missing)
    cuda = "example: fiancee bench --backbone oasis --device cuda --json out/b.json"
    with pytest.raises(AssertionError, match="needs a GPU"):
        _check("bench", cuda)
    mine = "example: PYTHONPATH=. fiancee train-exits --task mymodule:MyTask --out runs/mine"
    with pytest.raises(AssertionError, match="needs the user's module mymodule"):
        _check("train-exits", mine)
