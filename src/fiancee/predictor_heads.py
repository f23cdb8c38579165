"""The old path of :mod:`fiancee.predictor.heads`, the registry of quality-predictor heads (re-exported:
``from fiancee.predictor_heads import HEADS, Head`` keeps working, and registers into the same registry)."""

from .predictor.heads import (HEADS, TINY_GRID, TINY_HIDDEN, TINY_WIDTH, ConvHead, FeaturesHead, Head,  # noqa: F401
                              MLPHead, ResBlock, TinyHead, arch_names, get_head)

__all__ = ["HEADS", "Head", "ResBlock", "arch_names", "get_head", "TINY_WIDTH", "TINY_HIDDEN", "TINY_GRID"]
