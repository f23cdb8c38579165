"""The guiding feature bank (paper section 3.3, 4.1 "database", S1.1.1, S1.2.1).

A bank is a small key-value database built once from the frozen backbone. At inference the
features after the *key stage* (the stage before the first exit) are turned into keys, the nearest
stored keys are found with FAISS, and their values are glued into a *guide* tensor that every exit
branch takes as an extra input (:class:`fiancee.exits.GuideSpec`). The paper finds that it lifts the
earliest (cheapest) exits most (Fig. 8, Table S1), which lets the router send more inputs to them.

Two modes:

- ``patch`` (OASIS, S1.1.1): keys = key-stage features cut into a grid of non-overlapping patches,
  each flattened; values = the features at the *value stage* (the middle of the backbone) cut into
  the same grid. A query image is cut the same way, every patch retrieves its nearest key, and the
  value patches are glued back on the grid -> ``[B, C_value, H_value, W_value]``; the branches take it
  as ``GuideSpec("first", C_value)``. When the task has label maps, a patch's class is its majority
  label and it is searched only among bank entries of that class (S1.1.1: "the closest key from the
  database with corresponding semantic class"). A class without entries falls back to the index of
  all entries.
- ``global`` (MegaPortraits, S1.2.1): one key per input from a named key function (default: key-stage
  features average-pooled to 2x2), value = the backbone's RGB image of that entry; the retrieved image
  is concatenated, resized, to every branch block: ``GuideSpec("every", 3)``.

Redundancy is cut by farthest-point sampling (S1.1.1, "up to 5K for each semantic class"):
:func:`farthest_point_sampling`, per class, up to ``max_per_class`` entries.

One module per concept:

- ``keys``: the key functions of global mode and their registry (``register_key_function``)
- ``sampling``: farthest-point sampling
- ``patches``: the patch grid (cut, glue, majority labels)
- ``index``: FAISS indexes (make, move to the GPU, write, read checked)
- ``manifest``: the folder's kind, format version and modes; the manifest and entry checks
- ``folder``: the bank folder written whole and read checked (its layout is documented there)
- ``feature_bank``: :class:`FeatureBank` (search with its cost, guide tensor, ``save_pretrained`` /
  ``from_pretrained``) and :func:`load_bank`
- ``build``: :class:`BankSpec`, :func:`collect_features`, :func:`build_feature_bank`
- ``latency``: :func:`retrieval_latency`

Building a task's bank (resolving the task, drawing its inputs) is the workflow :mod:`fiancee.train.bank`.
"""

from __future__ import annotations

# The core's FAISS search and index reading, which this package wraps, kept as the old module's attributes
# (tests/test_core.py checks that the bank uses these objects themselves, no copy).
from ..core.search import read_index as read_index
from ..core.search import search_classes as search_classes
from .build import BankSpec, build_feature_bank, collect_features
from .feature_bank import FeatureBank, load_bank, start_images
from .index import INDEX_KINDS
from .keys import KEY_FUNCTIONS, key_function, register_key_function
from .latency import retrieval_latency
from .manifest import FORMAT, FORMAT_VERSION, KIND, MODES
from .patches import cut_patches, glue_patches, majority_labels
from .sampling import farthest_point_sampling

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KEY_FUNCTIONS",
    "register_key_function",
    "farthest_point_sampling",
    "cut_patches",
    "glue_patches",
    "majority_labels",
    "BankSpec",
    "FeatureBank",
    "collect_features",
    "build_feature_bank",
    "load_bank",
    "retrieval_latency",
    "start_images",
    "key_function",
    "KIND",
    "MODES",
    "INDEX_KINDS",
]
