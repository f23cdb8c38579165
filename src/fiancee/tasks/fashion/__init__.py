"""Task ``fashion``: semantic image synthesis (the paper's OASIS pipeline) on Fashion-MNIST.

One module per concept:

- :mod:`.data`: Fashion-MNIST's idx files, the 32x32 padding and the semantic label maps (11 classes).
- :mod:`.weights`: the trained OASIS backbone, its U-Net discriminator, where the label classifier lies.
- :mod:`.task`: :class:`FashionTask`, the task the registry names ``fashion``.
- :mod:`.classifier`: the label classifier (the analogue of the paper's mIoU): network, training, save / load.
- :mod:`.evaluation`: training the classifier on the real data and scoring the backbone (label accuracy, FID).

Every public name is importable from here (``from fiancee.tasks.fashion import FashionTask, load_split``).
"""

from .data import (
    BACKGROUND,
    CLASS_NAMES,
    DEFAULT_DATA_DIR,
    DEFAULT_MIN_COMPONENT,
    DEFAULT_THRESHOLD,
    IDX_FILES,
    NUM_LABELS,
    SIZE,
    FashionData,
    clean_specks,
    find_data_dir,
    label_maps,
    load_fashion_mnist,
    load_split,
    one_hot,
    pad_images,
    read_idx,
)
from .evaluation import evaluate_fashion_backbone, fid_reference_sets, generate, train_label_classifier
from .task import FashionTask
from .weights import (
    DISCRIMINATOR_FILE,
    classifier_folder,
    default_weights_dir,
    load_fashion_backbone,
    load_fashion_discriminator,
)

__all__ = [
    "CLASS_NAMES",
    "NUM_LABELS",
    "BACKGROUND",
    "DEFAULT_DATA_DIR",
    "IDX_FILES",
    "find_data_dir",
    "read_idx",
    "load_fashion_mnist",
    "pad_images",
    "clean_specks",
    "label_maps",
    "one_hot",
    "FashionData",
    "load_split",
    "FashionTask",
    "default_weights_dir",
    "load_fashion_backbone",
    "load_fashion_discriminator",
    "DEFAULT_THRESHOLD",
    "DEFAULT_MIN_COMPONENT",
    "SIZE",
    "DISCRIMINATOR_FILE",
    "classifier_folder",
    "train_label_classifier",
    "generate",
    "fid_reference_sets",
    "evaluate_fashion_backbone",
]
