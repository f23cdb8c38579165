"""Every worked example in `fiancee COMMAND --help` is runnable as written from a fresh clone: it
parses, reads only what the checkout holds or an earlier example writes, writes only under runs/
or out/ (git-ignored), and the cheap ones run."""

import re
import shlex
import time
from pathlib import Path

import pytest

from fiancee.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# Examples that take seconds on a CPU: run as written. The others (training, the demo, FID, benchmarks)
# are only parsed and their inputs checked.
CHEAP = ("macs", "lpips", "sample", "evaluate-backbone")

# Options whose value is a path the command writes.
WRITES = ("--out", "--json")


def _examples() -> list[tuple[str, list[str]]]:
    """(subcommand, argv after `fiancee`) of every example line in every --help, in help order."""
    found = []
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        text = sub.epilog or ""
        assert "example" in text, f"{name} --help has no worked example"
        for line in text.splitlines():
            m = re.search(r"(?:^|example[^:]*:|^\s+)\s*(fiancee\s.*)", line)
            if not m:
                continue
            command = re.split(r"\s{3,}\(", m.group(1))[0]  # a trailing note "   (after ...)"
            argv = shlex.split(command)[1:]
            found.append((name, argv))
    return found


EXAMPLES = _examples()


def _written(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in WRITES]


def test_every_command_has_an_example_that_parses():
    parser = build_parser()
    names = {name for name, _ in EXAMPLES}
    assert names == set(parser._subparsers._group_actions[0].choices)
    for _, argv in EXAMPLES:
        parser.parse_args(argv)  # argparse exits 2 on a bad example


def test_examples_write_only_under_runs_or_out_and_read_what_exists():
    made: list[str] = []  # what the examples write (the demo's --out has a default)
    for name, argv in EXAMPLES:
        made += _written(argv) + ([build_parser().parse_args(argv).out] if name == "demo" else [])
    for name, argv in EXAMPLES:
        args = build_parser().parse_args(argv)
        for path in _written(argv):
            assert path.split("/")[0] in ("runs", "out"), f"{name}: writes {path} outside runs/ and out/"
        # Positional folders/files an example reads: in the checkout, or written by an earlier example.
        reads = [
            getattr(args, k)
            for k in ("a", "b", "run", "predictor", "pipeline", "bank", "nobank_run", "bank_run")
            if isinstance(getattr(args, k, None), str)
        ]
        for path in reads:
            # (The checkout's runs/ and out/ do not count: a fresh clone has neither.)
            committed = path.split("/")[0] not in ("runs", "out") and (ROOT / path).exists()
            ok = committed or any(path == m or path.startswith(m + "/") for m in made)
            assert ok, f"{name}: example reads {path}, which neither the checkout nor another example provides"


@pytest.mark.parametrize(
    "name,argv", [e for e in EXAMPLES if e[0] in CHEAP], ids=lambda v: v if isinstance(v, str) else ""
)
def test_cheap_examples_run_as_written(name, argv, tmp_path, monkeypatch, one_thread):
    # A fresh clone: the checkout's tracked folders, and an empty working area for what examples write.
    for folder in ("src", "tests"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    assert main(argv) == 0
    for path in _written(argv):
        assert (tmp_path / path).exists()
    assert time.perf_counter() - t0 < 120
