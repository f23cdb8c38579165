"""Whole photos through a routed tile pipeline: the tile grid, seamless blending, bounded-memory rows,
what the images are read as, every refusal before work, and the command end to end on a tiny RRDBNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fiancee.backbones.rrdb import RRDBNet
from fiancee.cli import main
from fiancee.exits import ExitGenerator
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import QualityPredictor
from fiancee.routing import ThresholdRouter
from fiancee.tasks import Task, register_task
from fiancee.tasks.base import InputSpec
from fiancee.tiles import RowStitcher, check_tiling, ramp, tile_starts
from fiancee.upscaling import read_image, upscale_array

TILE = 8


class TinyUpscaleTask(Task):
    """A 3-block RRDBNet x4 with seeded random weights on 8x8 tiles."""

    name = "tiny-upscale"
    description = "tiny RRDBNet for tests"
    exits = (1,)
    default_scale = "1"
    default_min_channels = 8
    image_size = (4 * TILE, 4 * TILE)
    inputs = (InputSpec("x", "condition"),)

    def load_backbone(self, device="cpu"):
        torch.manual_seed(0)
        net = RRDBNet(num_block=3, num_feat=8, num_grow=4, stage_blocks=(1, 1, 1), example_size=TILE)
        return net.to(device).eval().requires_grad_(False)

    def sample_inputs(self, n, seed, split="test"):
        g = torch.Generator().manual_seed(seed + (0 if split == "train" else 99))
        return (torch.rand(n, 3, TILE, TILE, generator=g) * 2 - 1,)


@pytest.fixture(scope="module")
def pipe():
    from fiancee.tasks.registry import TASKS

    register_task("tiny-upscale", TinyUpscaleTask)  # the saved folder resolves it by name
    task = TinyUpscaleTask()
    task.spec = "tiny-upscale"
    model = ExitGenerator(task.load_backbone(), task.exits, "1", 8).eval()
    predictor = QualityPredictor("tiny", 1, [[8, TILE, TILE]], width=4, hidden=(8,)).eval()
    yield FianceePipeline(task, model, predictor, ThresholdRouter(model.route_macs()))
    TASKS.unregister("tiny-upscale")  # other tests list the registered names


def test_the_grid_covers_every_pixel_with_the_last_tile_flush():
    assert tile_starts(20, 8, 2) == [0, 6, 12]
    assert tile_starts(21, 8, 2) == [0, 6, 12, 13]
    assert tile_starts(8, 8, 0) == [0]
    w = ramp(16, 4)
    assert w.min() > 0 and w.max() == 1 and np.allclose(w, w[::-1])
    for bad, match in (
        ((7, 20, 8, 2), "smaller than one 8x8 tile"),
        ((20, 20, 8, 5), "overlap must lie in 0..4"),
        ((20, 20, 3, 0), "tile must be at least 4"),
        ((20, 20, 8.0, 2), "tile must be an integer"),
    ):
        with pytest.raises(ValueError, match=match):
            check_tiling(*bad)


@pytest.mark.parametrize("h,w,overlap", [(20, 27, 2), (8, 8, 0), (33, 17, 4)])
def test_stitching_tiles_of_a_pointwise_upscaler_gives_the_whole_image_upscaled(h, w, overlap):
    # nearest x2 is the same whether run on tiles or on the whole image: any seam would show as a difference
    img = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    st = RowStitcher(h, w, TILE, overlap, 2)
    ys, xs = tile_starts(h, TILE, overlap), tile_starts(w, TILE, overlap)
    for r, y0 in enumerate(ys):
        for x0 in xs:
            st.add(x0, img[y0 : y0 + TILE, x0 : x0 + TILE].repeat(2, 0).repeat(2, 1))
        st.finish_row(y0, ys[r + 1] if r + 1 < len(ys) else None)
    want = np.rint(img.repeat(2, 0).repeat(2, 1) * 255).astype(np.uint8)
    assert np.abs(st.out.astype(int) - want).max() <= 1
    assert st.acc.shape[0] == TILE * 2  # the band holds one tile row, whatever the image's height


def test_images_are_read_as_users_expect(tmp_path):
    rgb = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 10), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "grey.png")
    Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16)).save(tmp_path / "grey16.png")
    a = read_image(tmp_path / "rgb.png")
    assert a.shape == (12, 10, 3) and a.dtype == np.float32 and np.allclose(a * 255, rgb)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), a)  # alpha dropped
    g = read_image(tmp_path / "grey.png")
    assert np.array_equal(g[:, :, 0], g[:, :, 2]) and np.allclose(g[:, :, 1] * 255, rgb[:, :, 0])
    g16 = read_image(tmp_path / "grey16.png")
    assert g16.shape == (12, 10, 3) and abs(float(g16[11, 9, 0]) - 119 * 500 / 65535) < 1e-6  # full 16-bit precision


def test_bad_images_are_refused_in_one_line(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image PIL can read"):
        read_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(ValueError, match="more than the 1,000 accepted"):
        read_image(tmp_path / "full.jpg", max_pixels=1000)
    with pytest.raises(FileNotFoundError, match="no image file"):
        read_image(tmp_path / "missing.png")


def test_a_photo_upscales_through_the_routed_tiles(pipe):
    img = np.random.default_rng(1).random((19, 30, 3)).astype(np.float32)
    easy = upscale_array(pipe, img, max_lpips=1.0, tile=TILE, overlap=2, batch_size=3)
    hard = upscale_array(pipe, img, max_lpips=1e-9, tile=TILE, overlap=2, batch_size=3)
    assert easy["image"].shape == (76, 120, 3) and easy["scale"] == 4
    ys, xs = tile_starts(19, TILE, 2), tile_starts(30, TILE, 2)
    assert easy["routes"].shape == (len(ys), len(xs))
    assert (hard["routes"] == 1).all()  # nothing predicted under 1e-9: every tile on the backbone
    macs = pipe.route_macs.tolist()
    n = easy["routes"].size
    assert hard["backbone_macs"] == pytest.approx(macs[-1] * n)
    assert hard["macs"] == pytest.approx((macs[-1] + pipe.predictor_macs()) * n)
    # the backbone's tiles stitched: each tile equals the backbone run on that tile alone
    with torch.no_grad():
        one = pipe.model.backbone(torch.from_numpy(img[:TILE, :TILE]).permute(2, 0, 1)[None] * 2 - 1)
    corner = np.rint((one[0].clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
    inner = (TILE - 2) * 4  # up to where the next tile starts to blend in
    assert np.abs(hard["image"][:inner, :inner].astype(int) - corner[:inner, :inner].astype(int)).max() <= 1


def test_the_command_writes_images_route_maps_and_a_summary(pipe, tmp_path, capsys):
    pipe.save(tmp_path / "pipeline")
    Image.fromarray((np.random.default_rng(2).random((20, 26, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((np.random.default_rng(3).random((12, 12)) * 255).astype(np.uint8)).save(tmp_path / "b.jpg")
    out = tmp_path / "up"
    args = [
        "upscale",
        str(tmp_path / "pipeline"),
        str(tmp_path / "a.png"),
        str(tmp_path / "b.jpg"),
        "--max-lpips",
        "0.1",
        "--route-map",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    assert Image.open(out / "a_x4.png").size == (104, 80) and Image.open(out / "b_x4.png").size == (48, 48)
    assert Image.open(out / "a_routes.png").size == (26, 20)
    summary = json.loads((out / "summary.json").read_text())
    assert [im["name"] for im in summary["images"]] == ["a.png", "b.jpg"]
    assert all(abs(sum(im["route_shares"]) - 1) < 1e-3 for im in summary["images"])
    capsys.readouterr()
    # refusals: one line, exit 2, nothing written
    before = sorted(p.name for p in out.iterdir())
    for extra, match in (
        (["--overwrite", "--tile", "16"], "--tile must be 8"),
        (["--overwrite", "--overlap", "9"], "overlap must lie in 0..4"),
        ([], "already exists and is not empty"),
    ):
        assert main(args + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err
    (tmp_path / "tiny.png").write_bytes((tmp_path / "a.png").read_bytes())
    Image.fromarray(np.zeros((5, 40, 3), np.uint8)).save(tmp_path / "tiny.png")
    assert main(args[:3] + [str(tmp_path / "tiny.png")] + args[4:] + ["--overwrite"]) == 2
    assert "smaller than one 8x8 tile" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(args[:2] + args[3:] + ["--overwrite"]) == 0  # a rerun replaces its own output folder
    assert sorted(p.name for p in out.iterdir()) == ["b_routes.png", "b_x4.png", "summary.json"]


def test_the_seam_ratio_sees_a_hard_seam_and_not_a_blended_one():
    from fiancee.upscaling import seam_ratio

    rng = np.random.default_rng(4)
    ys = xs = tile_starts(40, TILE, 2)
    smooth = (rng.random((80, 80, 3)) * 20 + 100).astype(np.uint8)  # steps alike everywhere: no seam
    assert 0.8 < seam_ratio(smooth, (ys, xs), TILE, 2, 2) < 1.2
    seamy = smooth.astype(np.int32)
    for k, x0 in enumerate(xs[1:], 1):  # every other tile column brighter from its hand-over line on
        cut = int(round((xs[k - 1] + TILE + x0) / 2 * 2))
        seamy[:, cut:] += 40 if k % 2 else -40
    assert seam_ratio(np.clip(seamy, 0, 255).astype(np.uint8), (ys, xs), TILE, 2, 2) > 2


def test_the_backbone_baseline_runs_every_tile_on_the_backbone_without_the_predictor(pipe):
    img = np.random.default_rng(5).random((16, 20, 3)).astype(np.float32)
    base = upscale_array(pipe, img, max_lpips=0.1, tile=TILE, overlap=2, backbone_only=True)
    routed = upscale_array(pipe, img, max_lpips=1e-9, tile=TILE, overlap=2)  # every tile on the backbone too
    assert (base["routes"] == 1).all() and base["macs"] == pytest.approx(base["backbone_macs"])
    assert np.array_equal(base["image"], routed["image"])


def test_with_backbone_runs_both_a_row_at_a_time_in_turn_with_the_same_images(pipe, monkeypatch):
    import fiancee.upscaling as up

    img = np.random.default_rng(8).random((16, 20, 3)).astype(np.float32)
    settings = dict(max_lpips=0.3, tile=TILE, overlap=2, batch_size=2)
    alone = upscale_array(pipe, img, **settings)
    base = upscale_array(pipe, img, **settings, backbone_only=True)
    both = upscale_array(pipe, img, **settings, with_backbone=True)
    for got, want in ((both, alone), (both["backbone"], base)):
        assert np.array_equal(got["image"], want["image"]) and np.array_equal(got["routes"], want["routes"])
        assert got["macs"] == want["macs"] and got["seconds"] > 0
    order = []
    real = up.tile_runner

    def spy(p, **kw):
        run = real(p, **kw)
        tag = "backbone" if kw.get("backbone_only") else "routed"

        class Spy:
            tile, route_macs = run.tile, run.route_macs

            def __call__(self, tiles):
                order.append(tag)
                return run(tiles)

        return Spy()

    monkeypatch.setattr(up, "tile_runner", spy)
    upscale_array(pipe, img, **settings, with_backbone=True)
    rows, cols = len(tile_starts(16, TILE, 2)), len(tile_starts(20, TILE, 2))
    batches = -(-cols // 2)
    assert rows > 1 and order == (["routed"] * batches + ["backbone"] * batches) * rows


def test_psnr_per_image_against_the_reference():
    from fiancee.evaluate import per_image_psnr

    ref = torch.zeros(3, 3, 4, 4)
    img = ref.clone()
    img[1] += 0.2  # MSE 0.04 on a peak-to-peak range of 2: 10 log10(4 / 0.04) = 20 dB
    img[2] = 5.0  # clamped to 1 first: MSE 1, 10 log10(4) dB
    got = per_image_psnr(img, ref)
    assert got[0] == 100.0 and abs(got[1] - 20.0) < 1e-4 and abs(got[2] - 10 * np.log10(4)) < 1e-4


def test_the_onnx_export_upscales_like_the_pytorch_pipeline_without_torch_in_the_loop(pipe, tmp_path):
    pytest.importorskip("onnxruntime")
    from fiancee.export_targets import export
    from fiancee.upscaling import load_tile_pipeline, tile_runner

    pipe.save_pretrained(tmp_path / "pipeline")
    export(tmp_path / "pipeline", tmp_path / "onnx")
    onnx = load_tile_pipeline(tmp_path / "onnx", threads=1)
    assert type(onnx).__name__ == "OnnxPipeline" and tile_runner(onnx).tile == TILE and onnx.threads == 1
    assert type(load_tile_pipeline(tmp_path / "pipeline")).__name__ == "FianceePipeline"
    img = np.random.default_rng(6).random((19, 23, 3)).astype(np.float32)
    for kw in ({"max_lpips": 0.3}, {"max_lpips": 0.1, "backbone_only": True}):
        a = upscale_array(pipe, img, tile=TILE, overlap=2, batch_size=4, **kw)
        b = upscale_array(onnx, img, tile=TILE, overlap=2, batch_size=4, **kw)
        assert np.array_equal(a["routes"], b["routes"]) and a["macs"] == pytest.approx(b["macs"])
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).max() <= 1  # float rounding to 8 bits


def test_compare_backbone_states_lpips_psnr_seams_and_seconds_of_both(pipe, tmp_path):
    from fiancee.upscaling import upscale_images

    Image.fromarray((np.random.default_rng(7).random((18, 22, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    for t, same in ((1e-9, True), (1.0, False)):
        out = tmp_path / f"up{t}"
        s = upscale_images(
            pipe, [tmp_path / "a.png"], out, max_lpips=t, overlap=2, compare_backbone=True, progress=False
        )
        b = s["images"][0]["backbone"]
        assert set(b) == {"seconds", "speedup", "psnr_db", "lpips", "seam_ratio", "backbone_seam_ratio"}
        assert s["runtime"] == "pytorch" and s["threads"] == torch.get_num_threads() and s["peak_rss_mib"] > 0
        if same:  # every tile on the backbone: the same photo
            assert b["psnr_db"] == 100.0 and b["lpips"] == pytest.approx(0, abs=1e-6)
            assert b["seam_ratio"] == b["backbone_seam_ratio"]
        else:
            assert b["psnr_db"] < 100 and b["lpips"] > 0
        assert json.loads((out / "summary.json").read_text())["images"][0]["backbone"] == b
        assert Image.open(out / "a_x4_backbone.png").size == (88, 72)


def test_fp16_exact_weights_are_saved_at_half_size_and_load_back_bit_for_bit(pipe, tmp_path):
    from fiancee.io import compact_floats, load_tensors

    exact = {"a": torch.tensor([0.5, -2.0, 1024.0]), "n": torch.tensor([3])}
    assert compact_floats(exact)["a"].dtype == torch.float16 and compact_floats(exact)["n"].dtype == torch.int64
    mixed = {**exact, "b": torch.tensor([0.1])}  # 0.1 is not a float16: nothing is narrowed
    assert all(v.dtype == mixed[k].dtype for k, v in compact_floats(mixed).items())
    import copy

    pipe = copy.deepcopy(pipe)  # the module's pipeline keeps its own weights
    x = pipe.model.backbone.example_inputs(3)[0]
    with torch.no_grad():
        for p in pipe.model.branches.parameters():
            p.copy_(p.half().float())  # as an exported float16 run loads
    pipe.save_pretrained(tmp_path / "p16")
    assert all(t.dtype == torch.float16 for t in load_tensors(tmp_path / "p16" / "branches.safetensors").values())
    again = FianceePipeline.from_pretrained(tmp_path / "p16")
    assert torch.equal(again(x, max_lpips=0.2).images, pipe(x, max_lpips=0.2).images)


def test_shipped_photos_are_found_by_name_and_a_wrong_name_is_refused_in_one_line():
    pytest.importorskip("skimage")
    from fiancee.tasks.upscale import photo_path

    assert photo_path("astronaut").name == "astronaut.png" and photo_path("astronaut").is_file()
    with pytest.raises(ValueError, match="no photo named 'moon'; the upscale task ships astronaut, coffee"):
        photo_path("moon")


def test_the_demo_measures_a_shipped_pipeline_calibrated_as_asked_and_builds_one_otherwise(pipe, tmp_path, capsys):
    import copy

    from fiancee import demo
    from fiancee.tasks.registry import TASKS

    shipped = copy.deepcopy(pipe)
    shipped.provenance = {"seed": 0, "method": "ltt", "epsilon": 0.05, "delta": 0.1, "target_compliance": None}
    shipped.save_pretrained(tmp_path / "shipped")

    class Shipping(TinyUpscaleTask):
        def pretrained_pipeline(self):
            return tmp_path / "shipped"

    register_task("tiny-shipping", Shipping)
    try:
        asked = {"method": "ltt", "epsilon": 0.05, "delta": 0.1, "target_compliance": None}
        assert demo._shipped_pipeline("tiny-shipping", 0, asked) == tmp_path / "shipped"
        assert demo._shipped_pipeline("tiny-shipping", 1, asked) is None  # another seed: built here
        assert demo._shipped_pipeline("tiny-shipping", 0, {**asked, "epsilon": 0.1}) is None
        assert "the shipped pipeline was calibrated with" in capsys.readouterr().out
        report = demo.run_demo("tiny-shipping", tmp_path / "demo", n_eval=8, progress=False)
        assert (tmp_path / "demo" / "report" / "report.json").is_file() and report["n"] == 8
        again = FianceePipeline.from_pretrained(tmp_path / "demo" / "pipeline")  # copied for the commands after
        assert again.router.to_config() == pipe.router.to_config()
        assert "1-3/4 the pipeline shipped with fiancee" in capsys.readouterr().out
    finally:
        TASKS.unregister("tiny-shipping")


def test_a_pipeline_keeps_its_calibration_table_and_refuses_a_bad_one(pipe, tmp_path):
    import copy

    kept = copy.deepcopy(pipe)
    predicted, true = torch.rand(20, 1), torch.rand(20, 1)
    kept.calibration = (predicted, true)
    kept.save_pretrained(tmp_path / "p")
    again = FianceePipeline.from_pretrained(tmp_path / "p")
    assert torch.equal(again.calibration[0], predicted) and torch.equal(again.calibration[1], true)
    assert FianceePipeline.from_pretrained(_saved(pipe, tmp_path / "none")).calibration is None
    for bad, match in (
        ((torch.rand(3, 1), torch.rand(4, 1)), "tables \\[N, E\\] of one shape"),
        ((torch.full((2, 1), float("nan")), torch.rand(2, 1)), "NaN or Inf"),
        (torch.rand(3, 1), "the pair"),
    ):
        with pytest.raises(ValueError, match=match):
            FianceePipeline(pipe.task, pipe.model, pipe.predictor, pipe.router, calibration=bad)


def _saved(pipe, path):
    pipe.save_pretrained(path)
    return path
