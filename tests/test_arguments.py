"""Bad arguments a new user hits, refused in one line naming the argument (or the config field) and what was
expected, before any work; and nothing written where a command is involved.

The scalar checks live in one place (:mod:`fiancee.core.args`, re-exported by :mod:`fiancee.checks`); each
case below goes through a public function or command and names the fragment its one-line message holds.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fiancee.checks as checks
import fiancee.core as core
from fiancee.backbones import OASISConfig, OASISGenerator
from fiancee.cli import main
from fiancee.core.args import (
    check_bool,
    check_choice,
    check_counts,
    check_float,
    check_int,
    check_int_list,
    check_optional_int,
    check_unit,
)
from fiancee.exits import ExitGenerator, GuideSpec, scale_channels
from fiancee.io import config_int, config_int_list, config_number, config_object, read_json, save_tensors
from fiancee.routing import CalibratedRouter, router_from_config
from fiancee.staged import StagedSequential

NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------------------------
# The checks themselves: one line, the argument named, what was expected, what came


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: check_int(1.5, "n", minimum=2), "n must be an integer >= 2; got 1.5"),
        (lambda: check_int("12", "n", minimum=2), "n must be an integer >= 2; got '12'"),
        (lambda: check_int(None, "n", minimum=2), "n must be an integer >= 2; got None"),
        (lambda: check_int(True, "n"), "n must be an integer; got True"),
        (lambda: check_int(5, "opset", minimum=13, maximum=21), "opset must be an integer in 13..21; got 5"),
        (lambda: check_optional_int("3", "predictor_inputs"), "predictor_inputs must be an integer or None; got '3'"),
        (lambda: check_counts(batch_size=-1), "batch size must be an integer >= 1; got -1"),
        (lambda: check_float(NAN, "lr", low=0, open_low=True), "lr must be a finite number > 0; got nan"),
        (lambda: check_float(INF, "lr", low=0, open_low=True), "lr must be a finite number > 0; got inf"),
        (lambda: check_float("0.1", "lr"), "lr must be a finite number; got '0.1'"),
        (lambda: check_unit(1.0, "epsilon"), "epsilon must be a number in (0, 1); got 1.0"),
        (
            lambda: check_unit(NAN, "target_compliance", open_high=False),
            "target_compliance must be a number in (0, 1]; got nan",
        ),
        (
            lambda: check_int_list([1, 1.5], "attach_after", increasing=True),
            "attach_after must be a non-empty, strictly increasing list of integers; got [1, 1.5]",
        ),
        (
            lambda: check_int_list([2, 1], "attach_after", increasing=True),
            "attach_after must be a non-empty, strictly increasing list of integers; got [2, 1]",
        ),
        (lambda: check_int_list("12", "attach_after"), "attach_after must be a non-empty list of integers; got '12'"),
        (lambda: check_int_list(None, "attach_after"), "attach_after must be a non-empty list of integers; got None"),
        (lambda: check_choice("x", "guide mode", ("first", "every")), "guide mode must be 'first' or 'every'; got 'x'"),
        (lambda: check_choice(["a"], "recipe", ("a", "b", "c")), "recipe must be one of 'a', 'b', 'c'; got ['a']"),
        (lambda: check_bool(1, "overwrite"), "overwrite must be True or False; got 1"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_check_refuses_in_one_line(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_valid_values_come_back_in_their_plain_type():
    assert check_int(np.int64(3), "n") == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_int_list((1, 2, np.int32(3)), "attach_after", increasing=True) == [1, 2, 3]
    assert check_float(np.float32(0.5), "x") == 0.5 and check_unit(1, "share", open_high=False) == 1.0
    assert check_float(INF, "x", finite=False) == INF
    assert check_choice("every", "mode", ("first", "every")) == "every" and check_optional_int(None, "n") is None
    check_counts(n=3, epochs=None)


def test_one_place_re_exported_and_torch_free():
    for name in (
        "check_int",
        "check_float",
        "check_unit",
        "check_int_list",
        "check_choice",
        "check_bool",
        "check_counts",
        "check_optional_int",
    ):
        assert getattr(checks, name) is getattr(core, name) is getattr(core.args, name)
    import fiancee.bench.args as bench_args
    import fiancee.routing as routing

    assert not hasattr(routing, "_check_unit")
    with pytest.raises(ValueError, match="reps must be an integer >= 1; got 0"):
        bench_args.positive(0, "reps")


# ----------------------------------------------------------------------------------------------
# 1-2. Integers given as 1.5 / "12" / None; infinite or NaN scale and channel floors


def _backbone() -> OASISGenerator:
    torch.manual_seed(0)
    return OASISGenerator(OASISConfig.tiny())  # 4 stages: branches may attach after 1..3


def _sequential(boundaries):
    seq = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 1, 0), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())
    return StagedSequential(seq, boundaries, example_input=torch.randn(1, 16, 1, 1))


@pytest.mark.parametrize(
    "build,message",
    [
        (
            lambda b: ExitGenerator(b, [1.5, 2], "1/2", 4),
            "attach_after must be a non-empty, strictly increasing list of integers; got [1.5, 2]",
        ),
        (lambda b: ExitGenerator(b, ["1", "2"], "1/2", 4), "attach_after must be a non-empty, strictly increasing"),
        (
            lambda b: ExitGenerator(b, "12", "1/2", 4),
            "attach_after must be a non-empty, strictly increasing list of integers; got '12'",
        ),
        (lambda b: ExitGenerator(b, None, "1/2", 4), "got None"),
        (lambda b: ExitGenerator(b, [1, 2], "1/2", 1.5), "min_channels must be an integer >= 1; got 1.5"),
        (lambda b: ExitGenerator(b, [1, 2], "1/2", "12"), "min_channels must be an integer >= 1; got '12'"),
        (lambda b: ExitGenerator(b, [1, 2], "1/2", None), "min_channels must be an integer >= 1; got None"),
        (lambda b: ExitGenerator(b, [1, 2], "1/2", INF), "min_channels must be an integer >= 1; got inf"),
        (lambda b: ExitGenerator(b, [1, 2], "1/2", NAN), "min_channels must be an integer >= 1; got nan"),
        (lambda b: ExitGenerator(b, [1, 2], INF, 4), "scale factor must be a finite number in (0, 1] or a fraction"),
        (lambda b: ExitGenerator(b, [1, 2], NAN, 4), "scale factor must be a number or a fraction like '1/4'; got nan"),
        (
            lambda b: ExitGenerator(b, [1, 2], True, 4),
            "scale factor must be a number or a fraction like '1/4'; got True",
        ),
        (lambda b: scale_channels(64, "1/2", NAN), "channel counts must be positive integers; got min_channels=nan"),
        (lambda b: scale_channels(64, "1/2", INF), "channel counts must be positive integers; got min_channels=inf"),
        (lambda b: scale_channels(64.5, "1/2", 4), "channel counts must be positive integers; got channels=64.5"),
        (lambda b: GuideSpec("first", 2.5), "guide channels must be an integer >= 1; got 2.5"),
        (
            lambda b: _sequential([1.5, 3]),
            "boundaries must be a non-empty, strictly increasing list of integers in 0..3; got [1.5, 3]",
        ),
        (
            lambda b: _sequential("12"),
            "boundaries must be a non-empty, strictly increasing list of integers in 0..3; got '12'",
        ),
        (
            lambda b: _sequential(None),
            "boundaries must be a non-empty, strictly increasing list of integers in 0..3; got None",
        ),
        (lambda b: _sequential([0, 5]), "boundaries must be a non-empty, strictly increasing list of integers in 0..3"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_model_arguments_are_refused_before_any_module_is_built(build, message, monkeypatch):
    backbone = _backbone()
    built = []
    monkeypatch.setattr(backbone, "make_branch_stage", lambda *a: built.append(a))  # no branch may be built first
    with pytest.raises(ValueError) as info:
        build(backbone)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not built


def test_valid_model_arguments_build_as_before():
    a, b = _backbone(), _backbone()
    torch.manual_seed(1)
    x = ExitGenerator(a, [1, 2], "1/2", 4)
    torch.manual_seed(1)
    y = ExitGenerator(b, (np.int64(1), np.int64(2)), 0.5, np.int64(4))
    assert x.attach_after == y.attach_after == [1, 2] and x.min_channels == y.min_channels == 4
    assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values()))
    assert _sequential([0, 2, 3]).num_stages == 2


# ----------------------------------------------------------------------------------------------
# 3. Empty calibration and training tables


@pytest.mark.parametrize("fit", ["fit", "fit_guarantee", "fit_crc", "fit_ucb"])
def test_an_empty_calibration_table_is_refused(fit):
    empty = torch.zeros(0, 3)
    with pytest.raises(ValueError, match=r"the calibration table is empty \(0 inputs\)"):
        getattr(CalibratedRouter(costs=[1.0, 2.0, 3.0, 4.0]), fit)(empty, empty, [0.1])


def test_calibration_arguments_are_checked_before_the_fit():
    p = torch.rand(50, 3)
    router = CalibratedRouter(costs=[1.0, 2.0, 3.0, 4.0])
    for kwargs, message in [
        ({"target_compliance": NAN}, "target_compliance must be a number in (0, 1]; got nan"),
        ({"target_compliance": "0.9"}, "target_compliance must be a number in (0, 1]; got '0.9'"),
        ({"finite_sample": "no"}, "finite_sample must be True or False; got 'no'"),
    ]:
        with pytest.raises(ValueError) as info:
            router.fit(p, p, [0.1], **kwargs)
        assert message in str(info.value)
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        router.fit(p, p, [0.1, 2.0], 0.9)
    assert not router.fitted
    with pytest.raises(ValueError, match="familywise must be True or False; got 1"):
        router.fit_guarantee(p, p, [0.1], familywise=1)


def _predictor():
    from fiancee.predictor import QualityPredictor

    torch.manual_seed(0)
    return QualityPredictor("mlp", 2, [[6]], hidden=(8,))


@pytest.mark.parametrize(
    "table,kwargs,message",
    [
        ((torch.zeros(0, 6), torch.zeros(0, 2)), {}, r"the training table is empty \(0 inputs\)"),
        (
            (torch.randn(16, 6), torch.full((16, 2), NAN)),
            {},
            r"lpips \(the training targets\) holds NaN or Inf \(32 of 32 values\)",
        ),
        (
            (
                torch.randn(16, 6),
                torch.rand(16, 2).index_put_((torch.tensor([3]), torch.tensor([1])), torch.tensor(INF)),
            ),
            {},
            r"lpips \(the training targets\) holds NaN or Inf \(1 of 32 values\)",
        ),
        ((torch.full((16, 6), NAN), torch.rand(16, 2)), {}, r"predictor input 0 holds NaN or Inf"),
        ((torch.randn(16, 6), torch.rand(16, 2)), {"epochs": 1.5}, "epochs must be an integer >= 1; got 1.5"),
        ((torch.randn(16, 6), torch.rand(16, 2)), {"batch_size": 0}, "batch size must be an integer >= 1; got 0"),
        ((torch.randn(16, 6), torch.rand(16, 2)), {"lr": NAN}, "lr must be a finite number > 0; got nan"),
        ((torch.randn(16, 6), torch.rand(16, 2)), {"seed": "0"}, "seed must be an integer; got '0'"),
        (
            (torch.randn(16, 6), torch.rand(16, 2)),
            {"recipe": "adam"},
            "recipe must be 'mse-sgd' or 'mae-adamw'; got 'adam'",
        ),
    ],
    ids=[
        "empty",
        "nan targets",
        "inf target",
        "nan inputs",
        "fractional epochs",
        "batch 0",
        "nan lr",
        "seed string",
        "recipe",
    ],
)
def test_predictor_training_refuses_before_training(table, kwargs, message):
    from fiancee.predictor import train_predictor

    p = _predictor()
    before = {k: v.clone() for k, v in p.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        train_predictor(p, (table[0],), table[1], **{"epochs": 2, **kwargs})
    assert all(torch.equal(before[k], v) for k, v in p.state_dict().items())  # nothing trained, nothing fitted


# ----------------------------------------------------------------------------------------------
# 5. Non-finite key-stage features reaching the bank search


@pytest.fixture(scope="module")
def faces_bank(faces_task, faces_backbone):
    pytest.importorskip("faiss")
    from fiancee.bank import BankSpec, build_feature_bank
    from fiancee.train.bank import bank_inputs

    inputs, pop = bank_inputs(faces_task, 16, 1, seed=0)
    spec = BankSpec(mode="global", key_stage=1, value_stage=2, grid=(4, 4), max_per_class=8)
    return build_feature_bank(faces_backbone, inputs, spec, task="faces", population=pop)


@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("door", ["search", "guide", "search_with_distances"])
def test_non_finite_key_features_are_refused_by_the_bank(faces_bank, value, door):
    h = torch.randn(2, *faces_bank.manifest["key_shape"])
    h[1, 0, 0, 0] = value
    with pytest.raises(
        ValueError,
        match=r"the key-stage features \(stage 1\) given to the bank search hold NaN or "
        r"Inf \(\d+ of \d+ query-key values\); expected finite numbers",
    ):
        getattr(faces_bank, door)(h, None)
    assert faces_bank.search(h[:1]).shape == (1, 1)  # the finite row alone still searches


# ----------------------------------------------------------------------------------------------
# 6. Config fields of the wrong type; 7. non-finite config values, the field named


@pytest.mark.parametrize(
    "config,message",
    [
        ({"kind": ["calibrated"]}, "router config must be a dict with kind in"),
        ({"kind": {"a": 1}}, "router config must be a dict with kind in"),
        (
            {"kind": "oracle", "compliance": "1"},
            "field 'compliance' must hold finite numbers of the right type; got '1'",
        ),
        (
            {"kind": "calibrated", "thresholds": [0.1], "margins": [0.0], "familywise": "yes"},
            "field 'familywise' must be true or false; got 'yes'",
        ),
    ],
    ids=["kind list", "kind dict", "compliance string", "familywise string"],
)
def test_router_configs_of_the_wrong_type_name_the_field(config, message):
    for check in (router_from_config, core.check_router_config):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            check(config)
    with pytest.raises(ValueError, match="router config must be a dict with kind in"):
        core.rule_for(["threshold"])


@pytest.mark.parametrize(
    "read,message",
    [
        (
            lambda: config_int({"n": "3"}, "n", "cfg.json", minimum=1),
            "cfg.json: field 'n' must be an integer >= 1; got '3'",
        ),
        (
            lambda: config_int({"n": 9}, "n", "cfg.json", minimum=1, maximum=4),
            "field 'n' must be an integer in 1..4; got 9",
        ),
        (
            lambda: config_int_list({"s": [1, None]}, "s", "cfg.json"),
            "field 's' must be a non-empty list of integers; got [1, None]",
        ),
        (lambda: config_number({"x": [1]}, "x", "cfg.json"), "field 'x' must be a finite number; got [1]"),
        (lambda: config_object({"p": 5}, "p", "cfg.json"), "field 'p' must be a JSON object; got 5"),
    ],
    ids=["int string", "int range", "list of None", "number list", "object int"],
)
def test_config_helpers_name_the_field_and_type(read, message):
    with pytest.raises(ValueError) as info:
        read()
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"a": NaN}', "NaN is not JSON (only finite numbers are), in field 'a'"),
        (
            '{"router": {"costs": [1, -Infinity]}}',
            "-Infinity is not JSON (only finite numbers are), in field 'router.costs[1]'",
        ),
        ('{"scale": 1e999}', "1e999 overflows to infinity, in field 'scale'"),
        ("[1, [2, NaN]]", "NaN is not JSON (only finite numbers are), in field '[1][1]'"),
        (
            '{"a": NaN, "a": 1}',
            "NaN is not JSON (only finite numbers are), in field 'a'",
        ),  # a repeated key hides nothing
        ('{"a": {"b": Infinity}, "a": {}}', "Infinity is not JSON (only finite numbers are), in field 'a.b'"),
        ("NaN", "NaN is not JSON (only finite numbers are)"),
    ],
)
def test_a_non_finite_json_value_names_its_field(text, message, tmp_path):
    with pytest.raises(ValueError) as info:
        core.loads_strict(text)
    assert str(info.value) == message
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_json(path)
    assert str(info.value) == f"{path} is not strict JSON: {message}"
    assert core.loads_strict('{"a": [1, 2.5e3], "b": {"c": -1e308}}') == {"a": [1, 2500.0], "b": {"c": -1e308}}


def test_a_pipeline_config_field_of_the_wrong_type_is_named(faces_task, faces_backbone, tmp_path):
    from fiancee.pipeline import FianceePipeline
    from fiancee.routing import ThresholdRouter

    torch.manual_seed(0)
    model = ExitGenerator(faces_backbone, faces_task.attach_after, "1/2", 16).eval()
    folder = FianceePipeline(
        faces_task, model, _faces_predictor(len(faces_task.attach_after)), ThresholdRouter([1.0, 2.0, 3.0, 4.0])
    ).save(tmp_path / "pipeline")
    config = json.loads((folder / "config.json").read_text())
    for key, value, message in [
        ("provenance", 5, "field 'provenance' must be a JSON object; got 5"),
        ("router", {**config["router"], "kind": ["threshold"]}, "router config must be a dict with kind in"),
    ]:
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=message):
            FianceePipeline.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    predictor_config = json.loads((folder / "predictor" / "config.json").read_text())
    predictor_config["predictor"]["hidden"] = []  # of its type, but another model than its weights
    (folder / "predictor" / "config.json").write_text(json.dumps(predictor_config))
    with pytest.raises(ValueError) as info:
        FianceePipeline.from_pretrained(folder)
    assert "field 'predictor' describes a model its weights (weights.safetensors) do not fit" in str(info.value)
    assert "\n" not in str(info.value)


def _faces_predictor(num_exits: int):
    from fiancee.predictor import QualityPredictor

    return QualityPredictor("mlp", num_exits, [[100]], hidden=(4,))


# ----------------------------------------------------------------------------------------------
# Commands: one line, exit 2, nothing written


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate-exits", "{run}", "--n", "1", "--no-fid", "--out", "{out}"], "n must be an integer >= 2; got 1"),
        (
            ["build-bank", "--task", "faces", "--batch-size", "0", "--out", "{out}"],
            "batch size must be an integer >= 1; got 0",
        ),
    ],
    ids=["evaluate-exits n", "build-bank batch"],
)
def test_commands_refuse_in_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    from fiancee.tasks.registry import resolve_task

    run = resolve_task("faces").pretrained_exits()
    out = tmp_path / "out"
    argv = [a.format(run=run, out=out) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert _leftovers(tmp_path, "out") == []


# ----------------------------------------------------------------------------------------------
# 8. A full disk while writing tensors (build-bank): one line, exit 2, nothing half-written


def _disk_full(*args, **kwargs):
    from safetensors import SafetensorError

    # What safetensors raises on ENOSPC: its own error type, the OS error in the text.
    raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x"')


def test_save_tensors_turns_a_full_disk_into_an_os_error(tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with pytest.raises(OSError) as info:
        save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(3)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def _faiss_disk_full(*args, **kwargs):
    # What FAISS raises when fwrite fails: a RuntimeError whose text ends with strerror(errno).
    raise RuntimeError("Error in void faiss::write_index: write error in x: 0 != 8 (No space left on device)")


@pytest.mark.parametrize("writer", ["safetensors", "faiss"])
def test_build_bank_on_a_full_disk_is_one_line_exit_2_and_writes_nothing(writer, tmp_path, monkeypatch, capsys):
    faiss = pytest.importorskip("faiss")
    import safetensors.torch

    if writer == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    else:
        monkeypatch.setattr(faiss, "write_index", _faiss_disk_full)
    out = tmp_path / "bank"
    argv = ["build-bank", "--task", "faces", "--n", "8", "--max-per-class", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("fiancee build-bank: error: no space left on the device writing "), err
    assert "nothing was half-written" in err, err
    assert _leftovers(tmp_path, "bank") == []
