"""Routing reports: what a quality threshold buys (paper section 3.4, Figs. 3, 7 and 9).

Everything here is a pure function of three arrays measured once on held-out inputs:

- ``true_lpips [N, E]``: LPIPS of every exit vs the backbone's image (the backbone's own is 0);
- ``routes [N]``: the route a router chose for each input (``E`` = the backbone);
- ``macs [R]``: MACs of every route, shallowest first, the backbone last.

so routers can be compared on exactly the same images, and no number is computed twice.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .io import atomic_write_text, write_json
from .routing import OracleRouter, check_threshold, true_lpips_of

__all__ = ["threshold_row", "static_baseline", "write_report", "route_name"]


def route_name(route: int, num_exits: int) -> str:
    """What a user reads for a 0-based route index: ``exit 1`` .. ``exit E``, then ``backbone``."""
    return "backbone" if route >= num_exits else f"exit {route + 1}"


def _stats(true_lpips: torch.Tensor, routes: torch.Tensor, macs: np.ndarray, threshold: float) -> dict:
    chosen = true_lpips_of(routes, true_lpips).double()
    mean_macs = float(macs[routes.numpy()].mean())
    return {
        "compliance": float((chosen <= threshold).double().mean()),
        "macs_saved": float(1 - mean_macs / macs[-1]),
        "mean_gmacs": mean_macs / 1e9,
        "mean_lpips": float(chosen.mean()),
        "exit_shares": [float((routes == r).double().mean()) for r in range(len(macs))],
    }


def static_baseline(true_lpips: torch.Tensor, macs: Sequence[float], threshold: float, met: int) -> dict:
    """The best *single* route for every input at ``threshold``: what a static compression tool would ship.

    The cheapest route (exits, then the backbone; ties to the shallower) whose true LPIPS meets ``threshold`` on at
    least ``met`` of these inputs (the router's own count, so both are compared at equal compliance). The
    backbone's LPIPS is 0, so it always qualifies. A static exit runs no predictor: its saving is routes only.
    """
    true = true_lpips.double().cpu()
    n = int(true.shape[0])
    counts = [int((true[:, r] <= threshold).sum()) for r in range(true.shape[1])] + [n]
    route = min((r for r in range(len(macs)) if counts[r] >= met), key=lambda r: (macs[r], r))
    return {
        "static_route": route,
        "static_macs_saved": float(1 - macs[route] / macs[-1]),
        "static_compliance": counts[route] / n,
    }


def threshold_row(
    true_lpips: torch.Tensor, routes: torch.Tensor, macs: Sequence[float], threshold: float, overhead_macs: float = 0.0
) -> dict:
    """One row of the report: a router's numbers at ``threshold`` next to the oracle's.

    ``true_lpips [N, E]`` (one column per exit, backbone excluded), ``routes [N]`` as the router chose
    them, ``macs [E + 1]`` per route, ``overhead_macs`` what every input pays beyond its route (the
    predictor and the bank's search: ``FianceePipeline.overhead_macs()``). ``macs_saved`` is the net
    saving (routes + overhead), ``route_macs_saved`` the routes-only one. The strict oracle meets T
    everywhere; the oracle "at equal compliance" is the best any router can do while missing T on as
    many inputs as this router did; the oracle rows are routes only (an oracle needs no predictor), and
    ``saving_vs_oracle_at_compliance`` compares routes-only savings. ``static_*`` is the best single route at
    the router's compliance (:func:`static_baseline`), ``conditional_gain`` what routing per input adds to it
    (net ``macs_saved`` minus ``static_macs_saved``): the predictor has to pay for itself against a static exit.
    """
    t = check_threshold(threshold)
    macs = np.asarray([float(m) for m in macs])
    routes = routes.cpu().long()
    ours = _stats(true_lpips, routes, macs, t)
    strict = _stats(true_lpips, OracleRouter(list(macs)).route(true_lpips, t), macs, t)
    matched = _stats(true_lpips, OracleRouter(list(macs), compliance=ours["compliance"]).route(true_lpips, t), macs, t)
    overhead = float(overhead_macs)
    saved_gmacs = (macs[-1] - macs[routes.numpy()].mean() - overhead) / 1e9
    route_saved = ours["macs_saved"]
    met = int((true_lpips_of(routes, true_lpips).double() <= t).sum())
    static = static_baseline(true_lpips, macs, t, met)
    ours = {
        **ours,
        "macs_saved": route_saved - overhead / macs[-1],
        "route_macs_saved": route_saved,
        "overhead_macs": overhead,
        "mean_gmacs": ours["mean_gmacs"] + overhead / 1e9,
    }
    return {
        "threshold": t,
        **ours,
        "oracle_accounting": "routes only (an oracle needs no predictor)",
        "oracle_macs_saved": strict["macs_saved"],
        "oracle_exit_shares": strict["exit_shares"],
        "oracle_macs_saved_at_compliance": matched["macs_saved"],
        "saving_vs_oracle_at_compliance": (route_saved / matched["macs_saved"]) if matched["macs_saved"] > 0 else None,
        # Section 3.4: GMACs saved per unit of LPIPS given up (mean LPIPS of the outputs; the backbone's is 0).
        "gain_gmacs_per_lpips": (saved_gmacs / ours["mean_lpips"]) if ours["mean_lpips"] > 0 else None,
        **static,
        "conditional_gain": ours["macs_saved"] - static["static_macs_saved"],
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _headline_row(rows: list[dict], threshold: float = 0.1) -> dict:
    return min(rows, key=lambda r: abs(r["threshold"] - threshold))


def _net(rows: list[dict]) -> bool:
    # Net accounting (route + predictor + bank) when the rows carry it; route MACs only otherwise.
    return any("route_macs_saved" in r for r in rows)


def _headline_html(rows: list[dict], paper: list[dict], meta: dict, macs: np.ndarray) -> str:
    net = _net(rows)
    saved_name = "net MACs saved" if net else "MACs saved"
    cfg = meta.get("router_config") or {}
    target = cfg.get("target")
    top = _headline_row(rows)
    guarantee = (
        (
            f"calibrated so that at least {_pct(target, 0)} of outputs meet T (margins fitted on "
            f"{cfg.get('fit_size')} held-out inputs the predictor never saw)"
        )
        if target is not None
        else f"{html.escape(str(meta.get('router')))} router: no calibrated guarantee"
    )
    stated = meta.get("guarantee") or {}
    if stated.get("statement"):  # the router's own words (fiancee.guarantee.statement), whichever method fitted it
        guarantee = html.escape(stated["statement"]).replace("&gt;=", "&ge;")
    elif cfg.get("epsilon") is not None and cfg.get("delta") is not None:  # a report written before methods
        guarantee = (
            f"with probability &ge; {_pct(1 - cfg['delta'], 0)} over the {cfg.get('fit_size')} calibration "
            f"inputs, at most {_pct(cfg['epsilon'], 0)} of outputs miss T (Learn-then-Test)"
        )
    if cfg.get("kind") == "calibrated":
        from .guarantee import method_name

        method = cfg.get("method") or ("ltt" if cfg.get("epsilon") is not None else "average")
        guarantee += f". Calibration method: <b>{html.escape(method_name(method, cfg.get('bound')))}</b>"
    what = (
        "net: the predictor's and bank's MACs subtracted"
        if net
        else "routes only: the predictor's and bank's MACs are not subtracted"
    )
    lead = (
        f"<p class=lead>At LPIPS &le; {top['threshold']:g}: <b>{_pct(top['macs_saved'])}</b> of the backbone's MACs "
        f"saved ({what}), <b>{_pct(top['compliance'])}</b> of outputs within the threshold.<br>"
        f"Guarantee: {guarantee}.</p>"
    )
    paper_by_t = {round(p["threshold"], 9): p for p in paper}
    extra_head = "<th>route MACs saved</th><th>overhead per input</th>" if net else ""
    head = (
        f"<tr><th>LPIPS &le; T</th><th>{saved_name}</th><th>compliance</th>{extra_head}"
        "<th>oracle saved at equal compliance</th><th>best single route at equal compliance: saved</th>"
        "<th>gain of routing per input</th><th>paper's rule: saved</th><th>paper's rule: compliance</th></tr>"
    )
    body = []
    for r in rows:
        p = paper_by_t.get(round(r["threshold"], 9))
        extra = ""
        if net:
            over = r.get("overhead_macs")
            over_text = "-" if over is None else f"{over / 1e6:.2f} MMACs ({_pct(over / macs[-1], 2)})"
            extra = f"<td>{_pct(r.get('route_macs_saved'))}</td><td>{over_text}</td>"
        cls = " class=hl" if r is top else ""
        body.append(
            f"<tr{cls}><td>{r['threshold']:.3f}</td><td><b>{_pct(r['macs_saved'])}</b></td>"
            f"<td>{_pct(r['compliance'])}</td>{extra}<td>{_pct(r['oracle_macs_saved_at_compliance'])}</td>"
            f"{_static_cells(r, len(macs) - 1)}<td>{_pct(p['macs_saved']) if p else '-'}</td>"
            f"<td>{_pct(p['compliance']) if p else '-'}</td></tr>"
        )
    return lead + f"<table class=headline>{head}{''.join(body)}</table>"


def _static_cells(row: dict, num_exits: int) -> str:
    """The static baseline's two cells (``-`` for a row written before it was measured)."""
    if row.get("static_route") is None:
        return "<td>-</td><td>-</td>"
    gain = row["conditional_gain"]
    return (
        f"<td>{route_name(row['static_route'], num_exits)}: {_pct(row['static_macs_saved'])}</td>"
        f"<td>{'+' if gain >= 0 else ''}{_pct(gain)}</td>"
    )


def _details_html(rows: list[dict], num_exits: int) -> str:
    names = " / ".join(route_name(r, num_exits) for r in range(num_exits + 1))
    head = (
        "<tr><th>T</th><th>compliance</th><th>MACs saved</th><th>oracle saved (strict)</th>"
        "<th>oracle saved at equal compliance</th><th>mean GMACs</th><th>GMACs saved per unit LPIPS</th>"
        f"<th>share of inputs per route<br>({names})</th></tr>"
    )
    body = "".join(
        f"<tr><td>{r['threshold']:.3f}</td><td>{_pct(r['compliance'])}</td><td>{_pct(r['macs_saved'])}</td>"
        f"<td>{_pct(r['oracle_macs_saved'])}</td><td>{_pct(r['oracle_macs_saved_at_compliance'])}</td>"
        f"<td>{r['mean_gmacs']:.4f}</td>"
        f"<td>{'-' if r['gain_gmacs_per_lpips'] is None else format(r['gain_gmacs_per_lpips'], '.3f')}</td>"
        f"<td>{' / '.join(_pct(s, 0) for s in r['exit_shares'])}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _split_study_html(study: dict) -> str:
    """The report's section on the guarantee over many calibration splits (fiancee.guarantee.split_study)."""
    from .guarantee import method_name

    own, t = study.get("own_method"), study["thresholds"][0]
    body = []
    for r in sorted(study["rows"], key=lambda r: (r["epsilon"], r["method"])):
        cls = " class=hl" if r["method"] == own and abs(r["epsilon"] - study.get("own_epsilon", -1)) < 1e-9 else ""
        body.append(
            f"<tr{cls}><td>{r['epsilon']:g}</td><td>{html.escape(r['method'])}</td><td>{_pct(r['miss_mean'], 2)}</td>"
            f"<td>{_pct(r['miss_p90'], 2)}</td><td>{_pct(r['iid']['share_above'])}</td>"
            f"<td>{_pct(r['share_above'])}</td>"
            f"<td>{_pct(r['saved_mean'])} &plusmn; {_pct(r['saved_sd'])}</td><td>{r['min_calibration']}</td></tr>"
        )
    head = (
        "<tr><th>epsilon</th><th>method</th><th>miss rate, mean</th><th>miss rate, 90th pct</th>"
        "<th>true miss rate &gt; epsilon (i.i.d. draws)</th><th>test miss rate &gt; epsilon (splits)</th>"
        "<th>net MACs saved</th><th>calibration inputs needed</th></tr>"
    )
    return (
        f"<h2>The guarantee over {study['splits']} calibration splits</h2>"
        f"<p>One test set shows the guarantee held once. Here the router's method "
        f"(<b>{html.escape(method_name(own, study.get('bound')))}</b>, highlighted) and the others are fitted again on "
        f"{study['splits']} random sets of {study['n_cal']} inputs drawn from the calibration and test inputs together "
        f"({study['n_table']}), each measured on the {study['n_test']} others, at LPIPS &le; {t:g}. A high-probability "
        f"method promises that at most a share delta = {study['delta']:g} of calibration draws give a miss rate above "
        f"epsilon (the i.i.d. column is that share exactly, the splits column adds the test inputs' own noise); CRC "
        f"promises a mean miss rate &le; epsilon; average compliance promises nothing. See docs/guarantee.md.</p>"
        f'<img src="guarantee.png" alt="requested vs realized miss rate over many calibration splits">'
        f"<table>{head}{''.join(body)}</table>"
    )


def write_report(
    out: str | Path,
    *,
    rows: list[dict],
    true_lpips: np.ndarray,
    macs: np.ndarray,
    density_routes: list[tuple[float, np.ndarray]],
    meta: dict,
    examples: list[dict] | None = None,
) -> Path:
    """Write ``report.json``, PNG figures and ``report.html`` under ``out``; returns the HTML path.

    ``examples``: rows of the image strip, each ``{"label", "images" [K, C, H, W] in [-1, 1],
    "captions" [K]}`` (the same K inputs in every row); omitted when None.
    """
    from .extras import require
    from .plots import save_density_plot, save_saved_plot, save_shares_plot

    require("matplotlib", "the report's plots")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    macs = np.asarray([float(m) for m in macs])
    num_exits = len(macs) - 1
    paper = meta.get("paper_threshold_router") or []
    report = {
        **meta,
        "route_gmacs": [float(m) / 1e9 for m in macs],
        "thresholds": rows,
        "route_names": [route_name(r, num_exits) for r in range(num_exits + 1)],
    }
    if examples:
        report["examples"] = [{"label": e["label"], "captions": list(e["captions"])} for e in examples]
    write_json(out / "report.json", report)
    save_saved_plot(rows, paper, out / "saved.png", router=str(meta.get("router", "router")))
    save_shares_plot(rows, macs, out / "shares.png")
    save_density_plot(true_lpips, density_routes, out / "densities.png")
    strip = _examples_section(out, examples)
    notes, warning = _notes_and_warning(meta)
    study_html = _study_section(out, meta)
    page = _page(rows, paper, macs, meta, warning=warning, strip=strip, study_html=study_html, notes=notes)
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


def _examples_section(out: Path, examples: list[dict] | None) -> str:
    """The image strip (``examples.png``) and its section of the page; nothing without examples."""
    if not examples:
        return ""
    from .plots import save_image_strip

    save_image_strip([(e["label"], e["images"], e["captions"]) for e in examples], out / "examples.png")
    return (
        "<h2>What the numbers look like</h2><p>The same test inputs (columns) at every exit and the "
        "backbone, each with its LPIPS against the backbone's image, then as the router sends them at two "
        "thresholds (the caption names the route taken and its LPIPS, and marks an output above T).</p>"
        '<img src="examples.png" alt="the same inputs at every exit, the backbone and two thresholds">'
    )


def _notes_and_warning(meta: dict) -> tuple[str, str]:
    """The run details' list items, and the warning shown at the top when the test inputs look unlike the
    calibration inputs (:func:`fiancee.guarantee.range_check`)."""
    notes = "".join(
        f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
        for k, v in meta.items()
        if not isinstance(v, (list, dict))
    )
    targets = meta.get("targets")
    if targets:
        verdict = "met" if targets["met"] else "; ".join(targets["shortfalls"])
        notes += f"<li><b>targets at LPIPS &lt;= {targets['threshold']:g}</b>: {html.escape(verdict)}</li>"
    warning = ""
    check = meta.get("calibration_check")
    if check and check.get("warn"):
        warning = f"<p class=warn><b>Warning:</b> {html.escape(check['message'])}.</p>"
    elif check:
        notes += (
            f"<li>calibration range check: {_pct(check['outside_share'])} of the test inputs outside the "
            f"calibration inputs' range of predicted LPIPS (expected {_pct(check['expected_share'])}): no "
            "warning</li>"
        )
    return notes, warning


def _study_section(out: Path, meta: dict) -> str:
    """The guarantee over many calibration splits (``guarantee.png`` and its table), when the meta holds one."""
    study = meta.get("split_study")
    if not study:
        return ""
    from .plots import save_risk_plot

    save_risk_plot(study, out / "guarantee.png", highlight=study.get("own_method"))
    return _split_study_html(study)


_STYLE = """<style>
body{font-family:sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222}
td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right} th{background:#f4f4f4} td{white-space:nowrap}
table{border-collapse:collapse;margin:0.5em 0 1em} img{max-width:100%}
.lead{font-size:1.25em;line-height:1.5} tr.hl td{background:#fff6d5} .small{font-size:0.9em;color:#555}
.warn{background:#fde8e8;border-left:4px solid #c0392b;padding:0.5em 0.8em}
</style>"""


def _page(
    rows: list[dict],
    paper: list[dict],
    macs: np.ndarray,
    meta: dict,
    *,
    warning: str,
    strip: str,
    study_html: str,
    notes: str,
) -> str:
    """The whole ``report.html``: the headline, the figures, the sections given, the details."""
    num_exits = len(macs) - 1
    exit_means = meta.get("exit_lpips_mean") or []
    means = ", ".join(f"{route_name(r, num_exits)} {v:.3f}" for r, v in enumerate(exit_means))
    routes_text = ", ".join(f"{route_name(r, num_exits)} {m / 1e9:.4f}" for r, m in enumerate(macs))
    router = html.escape(str(meta.get("router")))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fiancee report: {html.escape(str(meta.get("task", "")))}</title>
{_STYLE}
</head><body>
<h1>fiancee: compute saved at a quality threshold</h1>
<p class=small>Task <b>{html.escape(str(meta.get("task")))}</b>, {meta.get("n")} test inputs, {router} router.
Quality is LPIPS ({html.escape(str(meta.get("lpips_net")))}) of each output against the backbone's image \
for the same input;
a threshold T asks for LPIPS &le; T. MACs per route (GMACs): {routes_text}.</p>
{warning}
{_headline_html(rows, paper, meta, macs)}
<img src="saved.png" alt="MACs saved and compliance per threshold">
{strip}
{study_html}
<h2>Two rules for routing</h2>
<p><b>The paper's rule</b> (section 3.2): send each input to the cheapest exit whose <i>predicted</i> LPIPS P \
is at most T,
else to the backbone. The predictor errs both ways, so at a given T many outputs land above T.<br>
<b>Ours</b> ({router}): the same rule on P plus a margin per threshold, fitted on held-out
inputs so that the requested share of outputs truly meets T; it trades some of the saving for that guarantee.
The headline table shows both, measured on the same test inputs.</p>
<h2>Where the inputs go, and the mean cost</h2>
<img src="shares.png" alt="share of inputs per route and mean GMACs per threshold">
{_details_html(rows, num_exits)}
<h2>Per-image LPIPS: single exits vs routing</h2>
<p>Solid: the LPIPS of every test image at one exit alone (mean: {means}). Dashed: the LPIPS of the routed
outputs when the threshold T is set to that exit's mean LPIPS; the routing uses the predictor's estimate P
("P &le; T"), and the dotted vertical line marks T (cf. paper Fig. 9).</p>
<img src="densities.png" alt="LPIPS densities">
<h2>Run details</h2>
<ul class=small>{notes}</ul>
</body></html>
"""
