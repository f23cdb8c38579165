"""The paper's numbers, and the table that sets our MACs beside them (``fiancee macs``).

Reference backbones only (:mod:`fiancee.backbones`): the counts come from
:func:`fiancee.metrics.macs.count_macs` on the exits' routes, the paper's from its Tables 1 and 2.
"""

from __future__ import annotations

import torch

from .backbones import build_backbone
from .exits import ExitGenerator, parse_scale

__all__ = ["PAPER_GMACS", "PAPER_MIN_CHANNELS", "macs_table", "format_macs_table"]

# The paper's GFLOPs (= GMACs) per route, shallowest exit first, the backbone last.
# OASIS: Table 1 (min channels 64). MegaPortraits G2D: Table 2 (min channels 24).
PAPER_GMACS: dict[str, dict[str, list[float]]] = {
    "oasis": {"1/2": [157, 171, 193, 227, 319], "1/3": [137, 154, 182, 227, 319], "1/4": [120, 138, 168, 227, 319]},
    "g2d": {"1/3": [65, 100, 136, 213], "1/6": [51, 89, 135, 213], "1/15": [47, 85, 127, 213]},
}

PAPER_MIN_CHANNELS = {"oasis": 64, "g2d": 24}


def macs_table(backbone: str, scale: str, min_channels: int, size: str = "paper") -> dict:
    """MACs of the backbone and of every exit route of a reference backbone, next to the paper's.

    Returns ``{"backbone", "scale", "min_channels", "unit", "backbone_gmacs", "routes": [GMACs, ...],
    "exits": [...], "paper_routes": [...] | None, "paper_backbone_gmacs": ... | None}``; ``routes``
    lists the exits shallowest first and excludes the backbone.
    """
    sf = parse_scale(scale)
    model = build_backbone(backbone, size=size, device="meta")
    with torch.device("meta"):
        exits = ExitGenerator(model, model.config.exits, sf, min_channels)
    gmacs = [m / 1e9 for m in exits.route_macs()]
    key = f"{sf.numerator}/{sf.denominator}"
    paper = (
        PAPER_GMACS.get(backbone, {}).get(key)
        if size == "paper" and min_channels == PAPER_MIN_CHANNELS.get(backbone)
        else None
    )
    return {
        "backbone": backbone,
        "size": size,
        "scale": key,
        "min_channels": min_channels,
        "unit": "GMACs (multiply-accumulates = FLOPs / 2; the paper's 'GFLOPs')",
        "exits_after_stages": list(exits.attach_after),
        "backbone_gmacs": gmacs[-1],
        "routes": gmacs[:-1],
        "branch_channels": [[list(c) for c in b.block_channels] for b in exits.branches],
        "paper_backbone_gmacs": paper[-1] if paper else None,
        "paper_routes": paper[:-1] if paper else None,
    }


def format_macs_table(table: dict) -> str:
    """What ``fiancee macs`` prints: a :func:`macs_table` as text, one row per route, the paper's GMACs beside ours."""
    paper_routes = table["paper_routes"] or [None] * len(table["routes"])
    lines = [
        f"{table['backbone']} ({table['size']}), scale {table['scale']}, min channels {table['min_channels']}",
        f"unit: {table['unit']}",
        f"{'route':<22}{'GMACs':>10}{'paper':>10}{'vs backbone':>14}",
    ]
    rows = [
        (f"exit after stage {k}", g, p) for k, g, p in zip(table["exits_after_stages"], table["routes"], paper_routes)
    ]
    rows.append(("backbone", table["backbone_gmacs"], table["paper_backbone_gmacs"]))
    for name, g, p in rows:
        paper = f"{p:>10.0f}" if p is not None else f"{'-':>10}"
        lines.append(f"{name:<22}{g:>10.1f}{paper}{g / table['backbone_gmacs']:>14.3f}")
    return "\n".join(lines)
