"""Overhead: what the pipeline adds to a route, the quality predictor's forward and the bank's retrieval.

Both are timed as a fraction of the smallest route, at the smallest and the largest batch size
(``overhead_fraction`` is the larger of the two); the retrieval (:func:`fiancee.bank.retrieval_latency`) only
when the backbone's pipeline has a bank (``bank=auto``). With the fused trunk (``FianceePipeline`` runs the stem
and stages up to the key stage once, and the route continues from there: :meth:`ExitGenerator.mixed_from`) both
read key-stage features every route computes anyway, so only the predictor's head and the retrieval are overhead
(a predictor reading raw inputs, ``mlp`` / ``conv``, is timed on them). The predictor is untrained and the bank
is built from a small population: latency depends on the shapes, not on the weights' values.
"""

from __future__ import annotations

import torch

from .measure import Clock
from .setup import Setup

__all__ = ["make_predictor", "predictor_inputs", "build_bank", "time_overhead"]


def make_predictor(model, arch: str | None, inputs: tuple[torch.Tensor, ...], seed: int, kinds: list[str], what: str):
    """An untrained predictor of the arch the library trains by default for these declared inputs
    (:func:`fiancee.train.predictor.default_arch`) and what it reads."""
    from ..predictor import QualityPredictor
    from ..train.predictor import check_arch, default_arch

    arch = arch or default_arch(kinds)
    check_arch(arch, kinds, what)
    xs = predictor_inputs(model, arch, inputs)  # a head that cannot read them refuses in one line below
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = QualityPredictor(arch, model.num_routes - 1, [list(x.shape[1:]) for x in xs])
    return predictor.to(xs[0].device).eval(), xs


def predictor_inputs(model, arch: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """What a predictor of ``arch`` reads for ``inputs``, on the model's device (computed, not timed: the
    trunk's key-stage features ``[B, C, h, w]``, or the inputs with 1x1 maps flattened)."""
    from ..predictor import key_features
    from ..predictor.heads import get_head

    if get_head(arch).reads_features:
        return (key_features(model, *inputs),)
    return tuple(x.flatten(1) if x.dim() == 4 and x.shape[-2:] == (1, 1) else x for x in inputs)


def build_bank(setup: Setup, n: int, device: torch.device, progress: bool = False):
    """The bank the library would build for this backbone (mode, grid, cap per class, key and value
    stages as :func:`fiancee.train.bank.build_bank` chooses them), from ``n`` inputs."""
    from ..bank import BankSpec, build_feature_bank

    d = setup.bank_defaults
    model = setup.model
    spec = BankSpec(
        mode=d["mode"],
        key_stage=model.key_stage,
        value_stage=max(model.key_stage, model.backbone.num_stages // 2),
        grid=d["grid"],
        max_per_class=d["max_per_class"],
    )
    inputs, population = setup.bank_inputs(n)
    # The bank searches per class of the declared label map, if there is one.
    label_channels = next((int(x.shape[1]) for k, x in zip(setup.input_kinds, inputs) if k == "label_map"), None)
    # Small build batches: a paper-scale backbone keeps every stage's features of the batch in memory.
    bank = build_feature_bank(
        model.backbone,
        inputs,
        spec,
        label_channels=label_channels,
        population=population,
        batch_size=8,
        progress=progress,
        device=device,
    )
    return bank.to(device), spec


def time_overhead(
    model,
    predictor,
    xs: tuple[torch.Tensor, ...],
    bank,
    spec,
    setup: Setup,
    batches: list[int],
    ratio_batch: int,
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    route_ms: dict[int, list[dict]],
    bank_choice: str,
    clock: Clock,
) -> tuple[dict, float]:
    """The overhead phase: predictor + bank retrieval against the smallest route, at the smallest and the largest
    batch; the report's ``overhead`` and ``overhead_fraction``. ``xs``: what the predictor read at ``ratio_batch``
    (its MACs are counted on them)."""
    from ..metrics.macs import count_macs

    overhead_batches = sorted({ratio_batch, batches[-1]})
    per_batch = {
        str(b): _overhead_row(model, predictor, bank, setup, inputs_on[b], b, route_ms[b], clock)
        for b in overhead_batches
    }
    first = per_batch[str(overhead_batches[0])]
    overhead = {
        "batch": overhead_batches[0],
        "batches": overhead_batches,
        "predictor_arch": predictor.arch,
        "predictor_ms": first["predictor_ms"],
        "predictor_macs": int(count_macs(predictor, *xs)) // ratio_batch,
        "bank": "on" if bank is not None else "off",
        "bank_choice": bank_choice,
        "bank_ms": first["bank_ms"],
        "bank_mode": None if bank is None else bank.mode,
        "bank_entries": 0 if bank is None else len(bank),
        "bank_population": None if bank is None else bank.manifest["population"],
        "bank_spec": None if spec is None else _spec_fields(spec),
        "smallest_route_ms": first["smallest_route_ms"],
        "smallest_route_ms_in_retrieval_run": first["smallest_route_ms_in_retrieval_run"],
        "per_batch": per_batch,
    }
    # The figure a user pays in the worst case over the batch sizes measured.
    overhead_fraction = max(v["fraction"] for v in per_batch.values())
    overhead["fraction"] = first["fraction"]
    return overhead, overhead_fraction


def _overhead_row(
    model, predictor, bank, setup: Setup, inputs: tuple[torch.Tensor, ...], b: int, route_ms: list[dict], clock: Clock
) -> dict:
    """One batch size. The predictor runs as the pipeline runs it (eval, no autograd, folded, no second finiteness
    check of trunk features); retrieval only when the pipeline has a bank."""
    from ..bank import retrieval_latency

    xs_b = predictor_inputs(model, predictor.arch, inputs)
    pred_t = clock(lambda: predictor(*xs_b, check=False))["median_ms"]
    retrieval = (
        retrieval_latency(bank, model, setup.inputs, batch_sizes=(b,), reps=clock.reps, warmup=clock.warmup)[0]
        if bank is not None
        else None
    )
    smallest = route_ms[0]["median_ms"]
    bank_ms = 0.0 if retrieval is None else retrieval["retrieval_ms"]
    return {
        "predictor_ms": round(pred_t, 4),
        "bank_ms": round(bank_ms, 4),
        "smallest_route_ms": round(smallest, 4),
        "smallest_route_ms_in_retrieval_run": None if retrieval is None else retrieval["smallest_route_ms"],
        "fraction": round((pred_t + bank_ms) / smallest, 4),
    }


def _spec_fields(spec) -> dict:
    """The bank's configuration as the report records it (fields that do not apply to its mode are None)."""
    return {
        "mode": spec.mode,
        "key_stage": spec.key_stage,
        "value_stage": spec.value_stage,
        "grid": list(spec.grid) if spec.mode == "patch" else None,
        "max_per_class": spec.max_per_class,
        "key_function": spec.key_function if spec.mode == "global" else None,
        "index": spec.index,
    }
