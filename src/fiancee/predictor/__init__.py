"""The quality predictor: inputs -> predicted LPIPS of every exit (paper section 3.2, S1.1.2, S1.2.2).

One module per concept; every name is importable from ``fiancee.predictor`` as before:

- :mod:`~fiancee.predictor.heads`: the registry of heads (:data:`HEADS`). A new head is one class there or in
  any module, with one decorator.
- :mod:`~fiancee.predictor.model`: :class:`QualityPredictor` (a head, then an MLP; inputs and targets
  standardized with statistics of the training table kept as buffers, so the saved predictor needs nothing
  else; ``forward`` returns LPIPS in LPIPS units ``[B, E]``) and its folded inference copy
  :class:`FoldedPredictor`; its folder: :meth:`QualityPredictor.save_pretrained` /
  :meth:`QualityPredictor.from_pretrained` (and :func:`load_predictor`, which also returns the folder's config).
- :mod:`~fiancee.predictor.features`: what a predictor reads (:func:`key_features`, :func:`predictor_features`)
  and :func:`predict`.
- :mod:`~fiancee.predictor.training`: the training loop :func:`train_predictor` and its :data:`RECIPES`.
- :mod:`~fiancee.predictor.folder`: :func:`save_predictor` / :func:`read_predictor` (header kind
  ``fiancee-predictor``) and :func:`exits_fingerprints`.
- :mod:`~fiancee.predictor.errors`: :func:`relative_error`, :func:`error_summary` (Tables S3, S4).

Architectures (after Table S7), chosen with ``arch``, are the registered heads:

- ``"mlp"``: vector inputs (faces' z): flatten, then Linear + LeakyReLU layers narrowing to one output
  per exit (Table S7, MegaPortraits column: 512 -> 256 -> 128 -> 64 -> E).
- ``"conv"``: semantic tasks (fashion): the label map with the noise broadcast over it as extra channels
  (OASIS's 3D noise), Conv2D + ReLU, stride-2 convs down to at most 8x8, a ResBlock, flatten, and a
  ReLU MLP (Table S7, OASIS column: Conv2D + ReLU, ResBlock, Flatten, Linear + ReLU ... Linear).
- ``"features"``: the same conv + ResBlock + MLP on the backbone's features after the key stage (the
  stage before the first exit). Table S7's OASIS predictor reads 1024 channels, the width of OASIS's
  first module: this is that option. The bank computes these features anyway and every route runs
  them, so they cost the predictor nothing extra at inference.
- ``"tiny"`` (the default): a 1x1 conv, average pooling to at most 4x4 and one hidden layer on the same
  key-stage features, well under 1 % of a backbone.

This package takes objects and tensors (a predictor folder is its own); the workflow that builds the LPIPS
table of an exit run and trains a predictor for it is :mod:`fiancee.train.predictor`.
"""

from __future__ import annotations

from .errors import error_summary, relative_error
from .features import key_features, predict, predictor_features
from .folder import FORMAT, _check_predictor_config, exits_fingerprints, read_predictor, save_predictor  # noqa: F401
from .heads import HEADS, TINY_GRID, TINY_HIDDEN, TINY_WIDTH, ResBlock, arch_names, get_head  # noqa: F401
from .model import ARCHS, FEATURE_ARCHS, LOG_FLOOR, TARGETS, FoldedPredictor, QualityPredictor, load_predictor
from .training import RECIPES, train_predictor

__all__ = [
    "ARCHS",
    "FEATURE_ARCHS",
    "RECIPES",
    "TARGETS",
    "LOG_FLOOR",
    "QualityPredictor",
    "FoldedPredictor",
    "ResBlock",
    "key_features",
    "predictor_features",
    "predict",
    "train_predictor",
    "save_predictor",
    "load_predictor",
    "exits_fingerprints",
    "relative_error",
    "error_summary",
]
