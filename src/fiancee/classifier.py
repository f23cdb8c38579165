"""The old path of the fashion task's label classifier, kept so that existing imports work: the
code is :mod:`fiancee.tasks.fashion.classifier`."""

from .tasks.fashion.classifier import (
    LabelClassifier,
    accuracy,
    classify,
    load_classifier,
    save_classifier,
    to_gray,
    train_classifier,
)

__all__ = [
    "LabelClassifier",
    "to_gray",
    "train_classifier",
    "classify",
    "accuracy",
    "save_classifier",
    "load_classifier",
]
