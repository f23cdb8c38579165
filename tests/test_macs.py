"""MACs per route against the paper's Tables 1 and 2, and the `fiancee macs` CLI."""

import json
import subprocess
import sys

import pytest

from fiancee.paper import PAPER_GMACS, macs_table


@pytest.mark.parametrize("scale", ["1/2", "1/3", "1/4"])
def test_oasis_matches_table_1(scale):
    table = macs_table("oasis", scale, 64)
    paper = PAPER_GMACS["oasis"][scale]
    assert abs(table["backbone_gmacs"] / 319 - 1) <= 0.01
    assert len(table["routes"]) == 4
    for ours, theirs in zip(table["routes"], paper[:-1]):
        assert abs(ours / theirs - 1) <= 0.02, (scale, table["routes"])


@pytest.mark.parametrize("scale", ["1/3", "1/6", "1/15"])
def test_g2d_matches_table_2(scale):
    table = macs_table("g2d", scale, 24)
    paper = PAPER_GMACS["g2d"][scale]
    assert abs(table["backbone_gmacs"] / 213 - 1) <= 0.01
    assert len(table["routes"]) == 3
    for ours, theirs in zip(table["routes"], paper[:-1]):
        assert abs(ours / theirs - 1) <= 0.07, (scale, table["routes"])


def test_cli_json_keys_and_text_output(capsys):
    from fiancee.cli import main

    assert main(["macs", "--backbone", "oasis", "--scale", "1/4", "--min-channels", "64", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert isinstance(table["backbone_gmacs"], float)
    assert [round(r) for r in table["routes"]] == [120, 137, 168, 226]
    assert "FLOPs / 2" in table["unit"]

    assert main(["macs", "--backbone", "g2d", "--scale", "1/15", "--min-channels", "24"]) == 0
    text = capsys.readouterr().out
    assert "multiply-accumulates" in text and "backbone" in text and "213" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["macs", "--backbone", "oasis", "--scale", "2"], "scale factor must lie in (0, 1]"),
        (["macs", "--backbone", "resnet"], "invalid choice"),
        (["macs", "--backbone", "oasis", "--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_bad_input_one_line_exit_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "fiancee", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # argparse prints its usage line first
