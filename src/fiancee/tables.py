"""LPIPS tables: inputs x the true LPIPS of every exit against the backbone (paper section 3.2's labels S).

What the quality predictor is trained on (S1.1.2), what its error is measured on (Tables S3, S4), and
what the router is calibrated and evaluated on. A table is computed once and cached on disk under a
hash of what produced it (backbone and exit weights, the inputs, the LPIPS net, the guide).

Inputs come from the task and follow its declarations (:class:`fiancee.tasks.base.InputSpec`): for a
task with a label map or conditions, ``noises=K`` crosses ``n`` draws with a fixed set of ``K`` noise
draws (the paper's "100 3D noise tensors ... 500 semantic maps ... 50 000 examples"); a task whose only
input is noise draws ``n`` of it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .io import cache_dir, load_tensors, save_tensors, tensor_fingerprint
from .predictor import QualityPredictor, error_summary, exits_fingerprints, predict
from .tasks.base import cross_noises, declared_inputs, pair_noises

__all__ = [
    "route_images",
    "per_image_lpips",
    "sample_table_inputs",
    "build_lpips_table",
    "predictor_error",
    "format_predictor_error",
]

TABLE_FORMAT = 1  # part of every cache key: bump it when a table's meaning changes


@torch.no_grad()
def route_images(model, inputs: tuple[torch.Tensor, ...], batch_size: int = 64, guide=None) -> list[torch.Tensor]:
    """Images of every route (shallowest first, backbone last) for ``inputs``, on the CPU.

    The backbone runs once per batch and every branch starts from its features (:meth:`ExitGenerator.trunk`):
    the same values as running each route alone (eval mode; tested), without paying the shared trunk once per
    route (on Real-ESRGAN's three exits that is 27 GMACs a tile instead of 45)."""
    out: list[list[torch.Tensor]] = [[] for _ in range(model.num_routes)]
    n = inputs[0].shape[0]
    for s in range(0, n, batch_size):
        batch = tuple(x[s : s + batch_size] for x in inputs)
        features, cond, g, image = model.trunk(*batch, guide=guide)
        for r, h in enumerate(features):
            out[r].append(model.branches[r](h, cond, g).cpu())
        out[-1].append(image.cpu())
    return [torch.cat(o) for o in out]


@torch.no_grad()
def per_image_lpips(
    images: torch.Tensor, reference: torch.Tensor, to_metric, net: str = "alex", batch_size: int = 64
) -> torch.Tensor:
    from .metrics.lpips import LPIPS

    metric = LPIPS(net)
    vals = [
        metric(to_metric(images[s : s + batch_size]), to_metric(reference[s : s + batch_size]))
        for s in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(vals).flatten()


def sample_table_inputs(
    task,
    n: int,
    seed: int,
    split: str,
    noises: int | torch.Tensor | None = None,
    noise_seed: int = 0,
    pairing: str = "cross",
    shift: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Generator inputs of a table. Without ``noises``: ``task.sample_inputs(n, seed, split)``; with ``shift``
    (a name the task declares, :attr:`fiancee.tasks.base.Task.shifts`): ``task.shifted_inputs(n, seed, split, shift)``.

    With ``noises`` (tasks with a label map or conditions; paper S1.1.2): ``n`` draws of ``split``
    crossed with a fixed set of noise draws (``K`` drawn from ``noise_seed``, or the ``[K, ...]``
    tensor(s)): ``n * K`` inputs, draw-major (:func:`fiancee.tasks.base.cross_noises`). With
    ``pairing="pair"`` the ``n`` draws take the fixed noises in turn instead (``n`` inputs,
    :func:`fiancee.tasks.base.pair_noises`): held-out maps with the training noises, Table S3's set.
    """
    if pairing not in ("cross", "pair"):
        raise ValueError(f"pairing must be 'cross' or 'pair'; got {pairing!r}")
    inputs = task.sample_inputs(n, seed, split) if shift is None else task.shifted_inputs(n, seed, split, shift)
    declared_inputs(task, inputs)
    if noises is None:
        return inputs
    join = cross_noises if pairing == "cross" else pair_noises
    return join(task, inputs, noises, noise_seed + 7_777_777)


def _table_key(fps: dict, inputs: tuple[torch.Tensor, ...], guide_key: str | None, net: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"fps": fps, "guide": guide_key, "net": net, "v": TABLE_FORMAT}, sort_keys=True).encode())
    h.update(tensor_fingerprint({f"x{i}": x for i, x in enumerate(inputs)}).encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def build_lpips_table(
    model,
    task,
    n: int,
    seed: int,
    split: str,
    guide=None,
    cache: bool | str | Path = True,
    *,
    noises: int | torch.Tensor | None = None,
    noise_seed: int = 0,
    pairing: str = "cross",
    guide_key: str | None = None,
    shift: str | None = None,
    batch_size: int = 128,
    net: str = "alex",
    progress: bool = False,
) -> dict:
    """Inputs x the true LPIPS of every exit vs the backbone (section 3.2's labels S).

    Returns ``{"inputs": tuple, "lpips": [N, E] float32, "key": str, "cached": bool}``. ``cache=True``
    stores it under ``cache_dir("lpips_tables")``, a path puts it in that folder, ``False`` skips the
    cache. The key hashes the backbone and exit weights, the inputs, the LPIPS net and ``guide_key``;
    a callable ``guide`` (a bank) cannot be hashed, so pass ``guide_key`` (e.g. the bank's folder and
    fingerprint) or the table is not cached. ``shift``: inputs from a shifted distribution the task declares
    (:func:`sample_table_inputs`); the key hashes the inputs, so a shifted table is cached apart.
    """
    inputs = tuple(x.cpu() for x in sample_table_inputs(task, n, seed, split, noises, noise_seed, pairing, shift))
    key = _table_key(exits_fingerprints(model), inputs, guide_key, net)
    use_cache = cache is not False and (guide is None or guide_key is not None)
    folder = Path(cache) if isinstance(cache, (str, Path)) else cache_dir("lpips_tables")
    path = folder / f"{key}.safetensors"
    if use_cache and path.is_file():
        return {"inputs": inputs, "lpips": load_tensors(path)["lpips"], "key": key, "cached": True}
    device = next(model.parameters()).device
    e = model.num_routes - 1
    rows = []
    total = inputs[0].shape[0]
    starts = range(0, total, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="lpips table", unit="batch")
    for s in starts:
        batch = tuple(x[s : s + batch_size].to(device) for x in inputs)
        images = route_images(model, batch, batch_size=batch_size, guide=guide)  # E+1 x [b, C, H, W], backbone last
        rows.append(
            torch.stack(
                [per_image_lpips(images[r], images[-1], task.to_lpips_images, net=net) for r in range(e)], dim=1
            )
        )  # [b, E]
    lpips = torch.cat(rows).float()
    if use_cache:
        save_tensors(
            path,
            {"lpips": lpips},
            metadata={
                "task": task.name,
                "n": str(n),
                "seed": str(seed),
                "split": split,
                **({"shift": shift} if shift else {}),
            },
        )
    return {"inputs": inputs, "lpips": lpips, "key": key, "cached": False}


# ----------------------------------------------------------------------------------------------
# Error (Tables S3, S4)


def predictor_error(
    predictor: QualityPredictor,
    model,
    task,
    *,
    n: int = 500,
    seed: int = 0,
    guide=None,
    guide_key: str | None = None,
    train_noises: int | None = None,
    noise_seed: int = 0,
    cache: bool | str | Path = True,
) -> dict:
    """Tables S3 / S4: mean relative error per exit on held-out (``test`` split) inputs.

    Label-map tasks (``train_noises`` = K, the training noise count, drawn from ``noise_seed``): ``n``
    test maps, each with one of the K training noises in turn (``"train_noises"``, Table S3), and the
    same ``n`` maps each with a new random noise (``"new_noises"``, Table S4: "joining random noises to
    the 500 semantic maps"). Vector tasks: ``n`` held-out z (``"held_out"``, the only input there is).
    Each entry also gives the MAE and the Spearman rank correlation per exit.
    """
    sets = {}
    if train_noises is None:
        table = build_lpips_table(model, task, n, seed, "test", guide, cache, guide_key=guide_key)
        sets["held_out"] = table
    else:
        sets["train_noises"] = build_lpips_table(
            model,
            task,
            n,
            seed,
            "test",
            guide,
            cache,
            noises=train_noises,
            noise_seed=noise_seed,
            pairing="pair",
            guide_key=guide_key,
        )
        sets["new_noises"] = build_lpips_table(model, task, n, seed, "test", guide, cache, guide_key=guide_key)
    report = {"task": task.name, "arch": predictor.arch, "attach_after": list(model.attach_after), "sets": {}}
    for name, table in sets.items():
        pred = predict(predictor, model, table["inputs"])
        report["sets"][name] = error_summary(pred, table["lpips"])
    return report


def format_predictor_error(report: dict) -> str:
    """A :func:`predictor_error` report as a table (what train-predictor and predictor-error print): per set of
    inputs, the mean relative error of every exit, their mean and the mean Spearman rank correlation."""
    exits = report["attach_after"] if "attach_after" in report else report["exits"]  # "exits": reports before
    lines = [
        f"{report['task']} predictor ({report['arch']}): mean relative error |P - S| / S per exit (Tables S3 / S4)",
        f"{'set':<14}{'n':>6}"
        + "".join(f"{'B' + str(i + 1):>8}" for i in range(len(exits)))
        + f"{'mean':>8}{'rho':>7}",
    ]
    for name, e in report["sets"].items():
        rho = sum(e["spearman"]) / len(e["spearman"])
        lines.append(
            f"{name:<14}{e['n']:>6}"
            + "".join(f"{100 * v:>7.1f}%" for v in e["relative_error"])
            + f"{100 * e['mean_relative_error']:>7.1f}%{rho:>7.2f}"
        )
    return "\n".join(lines)
