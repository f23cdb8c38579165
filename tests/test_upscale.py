"""The upscale task: Real-ESRGAN x4plus read from its ncnn export, checked against the ncnn runtime; real
photo tiles split by photo; exit branches that are the backbone's last blocks and its tail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fiancee.backbones.ncnn import FP16_TAG, MAGIC, read_convolutions, read_param
from fiancee.backbones.rrdb import RRDBNet
from fiancee.exits import ExitGenerator, channel_importance
from fiancee.tasks.upscale import PARAMETERS, PHOTOS, find_realesrgan_files, load_photo


@pytest.fixture(scope="module")
def task(upscale_task):
    return upscale_task


@pytest.fixture(scope="module")
def backbone(upscale_backbone):
    return upscale_backbone


def test_the_official_weights_load_strictly_with_the_published_parameter_count(backbone):
    assert sum(p.numel() for p in backbone.parameters()) == PARAMETERS
    assert backbone.stage_blocks == [4, 4, 4, 4, 5, 2] and backbone.num_stages == 6
    # every weight under exactly one (the official) name: stages and head are views
    assert all(
        k.split(".")[0] in {"conv_first", "body", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"}
        for k in backbone.state_dict()
    )


_NCNN_SCRIPT = """
import json, sys
import numpy as np, ncnn
param, binf = sys.argv[1], sys.argv[2]
x = np.load(sys.argv[3])
net = ncnn.Net()
net.opt.use_vulkan_compute = False
for k in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
    setattr(net.opt, k, False)
net.opt.num_threads = 1
net.load_param(param); net.load_model(binf)
ex = net.create_extractor()
ex.input("data", ncnn.Mat(np.ascontiguousarray(x)))
rc, out = ex.extract("output")
np.save(sys.argv[4], np.array(out))
"""


def test_outputs_match_the_ncnn_runtime_on_a_real_crop(backbone, tmp_path):
    # ncnn runs in its own process: its OpenMP pool and torch's in one process gave garbage here.
    crop = load_photo(PHOTOS[0])[180:204, 220:244].astype(np.float32) / 255  # astronaut, [24, 24, 3]
    x = np.ascontiguousarray(crop.transpose(2, 0, 1))
    np.save(tmp_path / "x.npy", x)
    param, binf = find_realesrgan_files()
    proc = subprocess.run(
        [sys.executable, "-c", _NCNN_SCRIPT, str(param), str(binf), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = np.load(tmp_path / "y.npy")  # [3, 96, 96] in about [0, 1]
    with torch.no_grad():
        ours = (backbone(torch.from_numpy(x)[None] * 2 - 1)[0] + 1) / 2
    assert ref.shape == tuple(ours.shape) == (3, 96, 96)
    assert float(np.abs(ref).max()) > 0.3  # a real image, not zeros
    assert np.abs(ours.numpy() - ref).max() < 1e-5


def _write_ncnn(tmp_path, convs, extra: bytes = b"", fp16=True):
    """A tiny ncnn model: Input then one Convolution per (out, in, k, bias) in ``convs``."""
    lines = [str(MAGIC), f"{len(convs) + 1} {len(convs) + 1}", "Input in 0 1 b0"]
    data = b""
    rng = np.random.default_rng(0)
    weights = []
    for i, (out, cin, k, bias) in enumerate(convs):
        lines.append(
            f"Convolution c{i} 1 1 b{i} b{i + 1} 0={out} 1={k} 4={k // 2} 5={int(bias)} 6={out * cin * k * k}"
            + (" 9=2 -23310=1,2.000000e-01" if i == 0 else "")
        )
        w = rng.standard_normal((out, cin, k, k)).astype(np.float32)
        if fp16:
            w = w.astype(np.float16)
            raw = w.tobytes()
            data += FP16_TAG.to_bytes(4, "little") + raw + b"\0" * ((-len(raw)) % 4)
        else:
            data += (0).to_bytes(4, "little") + w.tobytes()
        b = rng.standard_normal(out).astype(np.float32) if bias else None
        if bias:
            data += b.tobytes()
        weights.append((w.astype(np.float32), b))
    (tmp_path / "m.param").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.bin").write_bytes(data + extra)
    return weights


@pytest.mark.parametrize("fp16", [True, False])
def test_the_reader_takes_both_storage_tags_and_the_fused_activation(tmp_path, fp16):
    # an odd float16 count (3 * 1 * 1 * 1) checks the padding to 4 bytes
    want = _write_ncnn(tmp_path, [(3, 1, 1, True), (2, 3, 3, False)], fp16=fp16)
    got = read_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    assert [c.weight.shape for c in got] == [(3, 1, 1, 1), (2, 3, 3, 3)]
    for c, (w, b) in zip(got, want):
        np.testing.assert_array_equal(c.weight, w)
        assert (c.bias is None) == (b is None) and (b is None or np.array_equal(c.bias, b))
    assert got[0].leaky_slope == pytest.approx(0.2) and got[1].leaky_slope is None
    assert [layer.type for layer in read_param(tmp_path / "m.param")] == ["Input", "Convolution", "Convolution"]


def test_the_reader_refuses_a_bin_not_consumed_exactly_or_a_layer_it_does_not_know(tmp_path):
    _write_ncnn(tmp_path, [(3, 1, 1, True)], extra=b"\0\0\0\0")
    with pytest.raises(ValueError, match="4 bytes left after the last layer"):
        read_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:10])
    with pytest.raises(ValueError, match="ends inside layer c0"):
        read_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.param").write_text(f"{MAGIC}\n2 2\nInput in 0 1 b0\nInnerProduct fc 1 1 b0 b1 0=4 1=1 2=16\n")
    with pytest.raises(ValueError, match="fc is a InnerProduct; this reader knows Convolution weights only"):
        read_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.param").write_text("7767518\n0 0\n")
    with pytest.raises(ValueError, match="not an ncnn .param file"):
        read_param(tmp_path / "m.param")


def test_tiles_are_real_photos_split_by_photo_and_reproducible(task):
    train, calibrate, test = ({p.name for p in PHOTOS if p.split == s} for s in ("train", "calibrate", "test"))
    assert train and calibrate and test and not (train & calibrate or train & test or calibrate & test)
    assert all(p.licence for p in PHOTOS) and {p.split for p in PHOTOS} == {"train", "calibrate", "test"}
    # a router is calibrated on photos of their own: the exits were trained on a fixed set of training tiles
    assert task.calibration_split == "calibrate"
    (a,) = task.sample_inputs(16, seed=3, split="test")
    (b,) = task.sample_inputs(16, seed=3, split="test")
    (c,) = task.sample_inputs(16, seed=3, split="train")
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert -1 <= float(a.min()) and float(a.max()) <= 1 and float(a.std()) > 0.05
    # every test tile is cut from a test photo (as it is or its bicubic x1/4), none from a training one
    versions = task.photos("test")
    for tile in ((a.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy():
        assert any(_contains(v, tile) for v in versions)
    (d,) = task.sample_inputs(4, seed=3, split="calibrate")
    for tile in ((d.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy():
        assert any(_contains(v, tile) for v in task.photos("calibrate"))
    with pytest.raises(ValueError, match="n must be a positive int"):
        task.sample_inputs(0, seed=0)
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'calibrate', 'test'\); got 'val'"):
        task.sample_inputs(4, seed=0, split="val")


def _contains(photo: np.ndarray, tile: np.ndarray) -> bool:
    t = tile.shape[0]
    ys, xs = np.nonzero((photo[: photo.shape[0] - t + 1, : photo.shape[1] - t + 1] == tile[0, 0]).all(-1))
    return any(np.array_equal(photo[y : y + t, x : x + t], tile) for y, x in zip(ys, xs))


def test_a_branch_is_the_backbones_last_blocks_and_tail_after_inheritance():
    torch.manual_seed(0)
    net = RRDBNet(num_block=5, num_feat=8, num_grow=4, stage_blocks=(1, 1, 1, 2), example_size=8).eval()
    model = ExitGenerator(net, [1, 2], scale="1", min_channels=8).eval()
    (x,) = net.example_inputs(3)
    model.inherit_(channel_importance(net, (x,)))
    with torch.no_grad():
        feat = net.conv_first((x + 1) / 2)
        want = net.head(net.body[3:5](net.body[0:2](feat)), feat)  # blocks 1-2, then the last two, then the tail
        got = model(x, exit=1)
    torch.testing.assert_close(got, want)
    macs = model.route_macs()
    assert macs[0] < macs[1] < macs[2]
    with pytest.raises(ValueError, match="keeps 8 channels"):
        ExitGenerator(net, [1], scale="1/2", min_channels=4)
    with pytest.raises(ValueError, match="stage_blocks must be positive block counts adding up to 5"):
        RRDBNet(num_block=5, num_feat=8, num_grow=4, stage_blocks=(1, 1, 1))


def test_the_head_runs_a_batch_in_chunks_with_the_same_images_and_traces_whole(monkeypatch):
    torch.manual_seed(0)
    net = RRDBNet(num_block=2, num_feat=8, num_grow=4, stage_blocks=(1, 1), example_size=8).eval()
    h, cond = torch.randn(5, 8, 8, 8), torch.randn(5, 8, 8, 8)
    calls = []
    rows = net.head._rows
    monkeypatch.setattr(net.head, "_rows", lambda a, c: calls.append(int(a.shape[0])) or rows(a, c))
    monkeypatch.setattr("fiancee.backbones.rrdb.TAIL_PIXELS", 2 * 8 * 8)  # two 8x8 rows at a time
    with torch.no_grad():
        got = net.head(h, cond)
        assert calls == [2, 2, 1]
        torch.testing.assert_close(got, rows(h, cond), atol=1e-6, rtol=0)
        calls.clear()
        traced = torch.jit.trace(net.head, (h, cond), check_trace=False)  # one graph: no loop over rows
        assert calls == [5]
        torch.testing.assert_close(traced(h[:3], cond[:3]), rows(h[:3], cond[:3]), atol=1e-6, rtol=0)


def test_the_upscale_routes_cost_what_the_geometry_says(task, backbone):
    model = ExitGenerator(backbone, task.exits, task.default_scale, task.default_min_channels)
    macs = model.route_macs()
    assert 18.0e9 < macs[-1] < 18.8e9  # one 32x32 tile through RealESRGAN_x4plus: about 18.4 GMACs
    ratios = [m / macs[-1] for m in macs[:-1]]
    assert ratios == sorted(ratios) and 0.25 < ratios[0] < 0.4 and ratios[-1] < 0.7
    json.dumps(task.describe())  # the task describes itself in folders it makes
