"""The reports: the JSON layout of :func:`run_bench` and :func:`run_onnx_bench` (the header ``kind``
``fiancee-bench`` / ``fiancee-bench-onnx`` and ``format``: reports written before say ``format_version``,
:mod:`fiancee.core.folders`; ``settings``, the phases' results, ``notes``), and their tables (aligned text, or
Markdown: BENCHMARKS.md is rendered from the committed reports with :func:`format_table` /
:func:`format_onnx_table`)."""

from __future__ import annotations

import time

import torch

from ..core.folders import BENCH, BENCH_ONNX, make_header
from ..timing import load_average
from .measure import device_info
from .options import FASTER, TOLERANCES

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "bench_report",
    "onnx_report",
    "format_table",
    "format_onnx_table",
    "end_to_end_lines",
]

FORMAT = 1
FORMAT_VERSION = FORMAT  # the name before every report's version was its header's "format"


def bench_report(
    name: str,
    setup,
    model,
    device: torch.device,
    batches: list[int],
    reps: int,
    warmup: int,
    seed: int,
    opts: list[str],
    ratio_batch: int,
    predictor,
    bank,
    bank_n: int | None,
    bank_choice: str,
    load_start,
    phases: dict,
) -> dict:
    """The :func:`run_bench` report (without ``seconds``, which the caller adds). ``phases``: ``end_to_end`` (None
    without a pipeline), ``routes``, ``mixed``, ``overhead``, ``overhead_fraction`` and ``options`` as the phases
    returned them. Threads and the end load average are read now, inside the run."""
    exits_scale = model.scale
    return {
        **make_header(BENCH, FORMAT),
        "settings": {
            "backbone": name,
            **setup.settings,
            "scale": f"{exits_scale.numerator}/{exits_scale.denominator}",
            "min_channels": model.min_channels,
            "exits_after_stages": list(model.attach_after),
            "device": str(device),
            "batches": batches,
            "reps": reps,
            "warmup": warmup,
            "threads": torch.get_num_threads(),
            "seed": seed,
            "dtype": "float32",
            "options": opts,
            "ratio_batch": ratio_batch,
            "mixes": {m["name"]: m["shares"] for m in phases["mixed"]["mixes"]},
            "bank_inputs": bank_n,
            "bank": bank_choice,
            "predictor_arch": predictor.arch,
            "tolerances": TOLERANCES,
            "faster_means_speedup_at_least": FASTER,
            "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        },
        "device": device_info(device),
        "source": _source(),
        "load_average": {"start": load_start, "end": load_average()},
        "end_to_end": phases.get("end_to_end"),
        "routes": phases["routes"],
        "mixed": phases["mixed"],
        "overhead": phases["overhead"],
        "overhead_fraction": phases["overhead_fraction"],
        "options": phases["options"],
        "notes": _notes(setup, predictor, bank, bank_n, bank_choice, opts),
    }


def _source() -> dict:
    """The code a report was measured with: the checkout's commit and the files under src/ that differed from it
    (:func:`fiancee.core.source.git_commit`; both None outside a git checkout)."""
    from ..core.source import git_commit

    return git_commit()


def _notes(setup, predictor, bank, bank_n: int | None, bank_choice: str, opts: list[str]) -> list[str]:
    notes = setup.notes + [
        "latency does not depend on the weights' values: untrained or random weights time the same as trained ones",
        f"predictor: untrained {predictor.arch} QualityPredictor, its forward timed alone as the pipeline runs it "
        "(eval, no autograd, standardization folded): what it reads (the key-stage features every route computes "
        "anyway, or the generator's inputs) is not counted",
        (
            f"bank: built from {bank_n} inputs with the library's configuration for this backbone; retrieval time "
            "grows with the entries searched"
        )
        if bank is not None
        else (
            f"bank: none ({'the shipped exits were trained without one' if bank_choice == 'auto' else 'bank=off'}): "
            "no input pays a retrieval; bank=on measures the default bank"
        ),
        "options apply to single routes; the mixed tree selects samples with data-dependent indexing, which "
        "CUDA graphs cannot capture",
    ]
    if "cudagraphs" in opts:
        notes.append(
            "cudagraphs runs call route(..., check=False): input checks are host syncs, which capture "
            "forbids; eager timings include them"
        )
    return notes


def onnx_report(
    backbone: str,
    setup,
    model,
    batches: list[int],
    threads: list[int],
    reps: int,
    warmup: int,
    seed: int,
    opset: int,
    predictor,
    mixes: list[tuple[str, tuple[float, ...]]],
    load_start,
    rows: list[dict],
    t_start: float,
    end_to_end: dict | None = None,
) -> dict:
    """The :func:`run_onnx_bench` report; the end load average and the seconds since ``t_start`` are read now.
    ``end_to_end``: the pipeline's section (:func:`fiancee.bench.end_to_end.time_end_to_end_onnx`), or None."""
    import onnxruntime

    return {
        **make_header(BENCH_ONNX, FORMAT),
        "settings": {
            "backbone": backbone,
            **setup.settings,
            "scale": f"{model.scale.numerator}/{model.scale.denominator}",
            "min_channels": model.min_channels,
            "exits_after_stages": list(model.attach_after),
            "batches": batches,
            "threads": threads,
            "reps": reps,
            "warmup": warmup,
            "seed": seed,
            "opset": opset,
            "predictor_arch": predictor.arch,
            "dtype": "float32",
            "timing": "time.perf_counter",
            "mixes": {name: [round(s, 4) for s in shares] for name, shares in mixes},
        },
        "device": {**device_info(torch.device("cpu")), "onnxruntime": onnxruntime.__version__},
        "source": _source(),
        "load_average": {"start": load_start, "end": load_average()},
        "end_to_end": end_to_end,
        "rows": rows,
        "notes": setup.notes
        + [
            "both runtimes time the whole pipeline call with the routes forced (trunk once, predictor, route or tree); "
            "the predictor is untrained: latency does not depend on the weights' values",
            "speedup = torch_ms / onnx_ms: above 1 ONNX Runtime is faster",
        ]
        + (
            [
                "end_to_end: the pipeline's own export under ONNX Runtime; its baseline is the same call with every "
                "input forced onto the backbone, so it also runs the predictor inside the trunk segment (a few MMACs)"
            ]
            if end_to_end
            else []
        ),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


# ----------------------------------------------------------------------------------------------
# Tables


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header)] + [line(r) for r in rows]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(report: dict, markdown: bool = False) -> str:
    """A short human summary of a :func:`run_bench` report (aligned text, or Markdown tables)."""
    s, d = report["settings"], report["device"]
    title = (
        f"{s['backbone']}{' (' + s['size'] + ')' if s.get('size') else ''}, SF {s['scale']}, min "
        f"{s['min_channels']} channels, exits: {s['exit_weights']}; {d['name']} ({s['device']}, {s['threads']} "
        f"thread{'s' if s['threads'] != 1 else ''}), torch {d['torch']}, median of {s['reps']} reps"
    )
    out = [title, ""] + end_to_end_lines(report, markdown) + _routes_table(report, markdown)
    if report["mixed"]["batch"] is not None:
        out += ["", "mixed-exit tree: other / tree (above 1 the tree is faster)", ""] + _mixed_table(report, markdown)
    out += [""] + _overhead_lines(report)
    if report["options"]:
        out += [
            "",
            "options: speedup vs eager fp32 per route (exit after stage k; backbone), largest |difference| of "
            "the image over the routes, verdicts (helped = >= "
            f"{s.get('faster_means_speedup_at_least', FASTER)}x and within tolerance)",
            "",
        ]
        out += _options_table(report, markdown)
    return "\n".join(out) + "\n"


def end_to_end_lines(report: dict, markdown: bool = False) -> list[str]:
    """The headline of a report measured with a pipeline: the routed call's milliseconds against the backbone's
    beside the MACs saving, one row per runtime, threshold, batch and threads, and a blank line after; nothing for
    a report without an ``end_to_end`` section (every report measured without a pipeline, or before it existed).
    A report measured with ``--opt compile`` also has ``end_to_end_compiled``, shown after it the same way."""
    e2e = report.get("end_to_end")
    if not e2e:
        return []
    compiled = report.get("end_to_end_compiled")
    return (
        _e2e_lines(e2e, markdown)
        + _rewrites_lines(report.get("rewrites"), markdown)
        + (_e2e_lines(compiled, markdown) if compiled else [])
    )


def _rewrites_lines(gains: dict | None, markdown: bool) -> list[str]:
    """What the inference rewrites buy (``rewrites`` section: the pipeline as loaded against its rewritten copy)."""
    if not gains:
        return []
    header = ["batch", "backbone ms: as loaded -> rewritten", "routed ms: as loaded -> rewritten"]
    rows = [
        [
            str(r["batch"]),
            f"{r['stock_backbone_ms']:.4g} -> {r['backbone_ms']:.4g} ({r['backbone_gain']:.2f}x)",
            f"{r['stock_routed_ms']:.4g} -> {r['routed_ms']:.4g} ({r['routed_gain']:.2f}x)",
        ]
        for r in gains["rows"]
    ]
    lead = f"inference rewrites (pipe.for_inference(), T = {gains['threshold']:g}): {gains['order']}"
    return [lead, ""] + _render(header, rows, markdown) + [""]


def _e2e_lines(e2e: dict, markdown: bool) -> list[str]:
    header = ["task", "T", "batch", "threads", "backbone ms", "routed ms", "speed-up", "MACs speed-up", "ratio"]
    rows = [
        [
            r["task"] + ("" if r["runtime"] == "torch" else f" ({r['runtime']})"),
            f"{r['threshold']:g}",
            str(r["batch"]),
            str(r["threads"]),
            f"{r['backbone_ms']:.4g} ± {r['backbone_iqr_ms']:.2g}",
            f"{r['routed_ms']:.4g} ± {r['routed_iqr_ms']:.2g}",
            f"{r['speedup']:.2f}x",
            f"{r['macs_speedup']:.2f}x ({100 * r['macs_saved']:.1f}% saved)",
            _fmt(r["ms_follow_macs"], 2),
        ]
        for r in e2e["rows"]
    ]
    lead = (
        f"end to end: the routed call ({e2e['runtime']}) vs {e2e['baseline']}; same inputs, interleaved; median ± IQR "
        f"ms; speed-up = backbone / routed; ratio = speed-up / MACs speed-up (target >= {e2e['target_ms_follow_macs']})"
    )
    return [lead, ""] + _render(header, rows, markdown) + [""] + _segments_lines(e2e, markdown)


def _segments_lines(e2e: dict, markdown: bool) -> list[str]:
    """Where the routed call's time goes (rows that carry ``segments_ms``: PyTorch, measured since they exist)."""
    rows = [r for r in e2e["rows"] if r.get("segments_ms")]
    if not rows:
        return []
    names = list(rows[0]["segments_ms"])
    header = ["T", "batch", "routed ms"] + [f"{n} ms" for n in names] + ["glue ms"]
    body = [
        [f"{r['threshold']:g}", str(r["batch"]), f"{r['routed_ms']:.4g}"]
        + [f"{r['segments_ms'].get(n, float('nan')):.4g}" for n in names]
        + [f"{r['glue_ms']:.3g}"]
        for r in rows
    ]
    lead = "where the routed call's time goes: each segment timed alone (interleaved); glue = routed - their sum"
    return [lead, ""] + _render(header, body, markdown) + [""]


def _routes_table(report: dict, markdown: bool) -> list[str]:
    batches = report["settings"]["batches"]
    header = ["route", "GMACs", "MACs ratio"] + [f"latency ratio @{b}" for b in batches] + [f"ms @{b}" for b in batches]
    rows = [
        [r["name"], f"{r['macs'] / 1e9:.4g}", _fmt(r["macs_ratio"])]
        + [_fmt(r["per_batch"][str(b)]["latency_ratio"]) for b in batches]
        + [f"{r['per_batch'][str(b)]['median_ms']:.4g}" for b in batches]
        for r in report["routes"]
    ]
    return _render(header, rows, markdown)


def _mixed_table(report: dict, markdown: bool) -> list[str]:
    header = ["mix", "batch", "samples per route", "tree ms", "ideal / tree", "deepest / tree", "grouped / tree"]
    rows = [
        [
            mix["name"],
            b,
            "/".join(map(str, row["counts"])),
            f"{row['tree_ms']:.4g}",
            _fmt(row["tree_vs_ideal"]),
            _fmt(row["tree_vs_deepest"]),
            _fmt(row["tree_vs_grouped"]),
        ]
        for mix in report["mixed"]["mixes"]
        for b, row in mix["per_batch"].items()
    ]
    return _render(header, rows, markdown)


def _overhead_lines(report: dict) -> list[str]:
    """One line per batch size (reports of older versions hold one batch, without ``per_batch``)."""
    o = report["overhead"]
    pm = o["predictor_macs"]
    pm_text = f"{pm / 1e9:.3g} GMACs" if pm >= 1e9 else f"{pm / 1e6:.3g} MMACs"
    bank_text = f"bank ({o['bank_mode']}, {o['bank_entries']} entries)" if o.get("bank", "on") == "on" else "no bank"
    per_batch = o.get("per_batch") or {
        str(o["batch"]): {k: o[k] for k in ("predictor_ms", "bank_ms", "smallest_route_ms")}
        | {"fraction": o.get("fraction", report["overhead_fraction"])}
    }
    return [
        f"overhead at batch {b}: predictor ({o['predictor_arch']}, {pm_text}) {row['predictor_ms']:.4g} ms + "
        f"{bank_text} {row['bank_ms']:.4g} ms = {100 * row['fraction']:.1f}% of the smallest route "
        f"({row['smallest_route_ms']:.4g} ms)"
        for b, row in per_batch.items()
    ]


def _options_table(report: dict, markdown: bool) -> list[str]:
    batches = report["settings"]["batches"]
    names = [
        ("after " + str(r["after_stage"])) if r["after_stage"] is not None else "backbone" for r in report["routes"]
    ]
    header = ["option", "batch"] + names + ["max abs", "mean abs", "helped"]
    rows = []
    for entry in report["options"]:
        if entry["error"]:
            rows.append([entry["name"], "-"] + ["-"] * len(names) + ["-", "-", f"error: {entry['error']}"])
        for b in batches:
            res = [r for r in entry["results"] if r["batch"] == b]
            if not res:
                continue
            rows.append(
                [entry["name"], str(b)]
                + [f"{r['speedup']:.2f}" for r in res]
                + [
                    f"{max(r['max_abs'] for r in res):.1e}",
                    f"{max(r['mean_abs'] for r in res):.1e}",
                    f"{sum(r['verdict'] == 'helped' for r in res)}/{len(res)}",
                ]
            )
    return _render(header, rows, markdown)


def format_onnx_table(report: dict, markdown: bool = False) -> str:
    """The :func:`run_onnx_bench` report as one table: ms under PyTorch and ONNX Runtime per case, batch, threads."""
    s, d = report["settings"], report["device"]
    title = (
        f"{s['backbone']}, SF {s['scale']}, exits: {s['exit_weights']}; {d['name']}, torch {d['torch']}, "
        f"onnxruntime {d['onnxruntime']}, median of {s['reps']} reps"
    )
    header = ["case", "batch", "threads", "torch ms", "onnx ms", "torch / onnx", "max |diff|"]
    rows = [
        [
            r["name"],
            str(r["batch"]),
            str(r["threads"]),
            f"{r['torch_ms']:.4g}",
            f"{r['onnx_ms']:.4g}",
            f"{r['speedup']:.2f}",
            f"{r['max_abs_diff']:.1e}",
        ]
        for r in report["rows"]
    ]
    return "\n".join([title, ""] + end_to_end_lines(report, markdown) + _render(header, rows, markdown)) + "\n"
