"""The fashion task's trained artifacts: the OASIS backbone, its U-Net discriminator, and where the label
classifier that scores the backbone lies (a folder holding ``config.json``, ``backbone.safetensors``, optionally
``discriminator.safetensors`` and ``classifier.safetensors``; the shipped one is ``fiancee/weights/fashion``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...backbones.oasis import OASISConfig, OASISGenerator
from ...backbones.oasis_discriminator import UNetDiscriminator
from ...io import build_bounded, load_tensors, read_json
from ..base import find_weights

__all__ = [
    "DISCRIMINATOR_FILE",
    "default_weights_dir",
    "load_fashion_backbone",
    "load_fashion_discriminator",
    "classifier_folder",
]


def default_weights_dir() -> Path:
    """``$FIANCEE_WEIGHTS/fashion`` if set, else the trained backbone shipped in the package."""
    return find_weights("fashion")


def load_fashion_backbone(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> OASISGenerator:
    """The trained OASIS generator from a folder holding ``config.json`` + ``backbone.safetensors``."""
    folder = Path(weights) if weights is not None else default_weights_dir()
    cfg_path, w_path = folder / "config.json", folder / "backbone.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(
            f"expected a fashion backbone folder with config.json and backbone.safetensors at {folder}; "
            "train one with `fiancee train-backbone --task fashion`"
        )
    cfg = read_json(cfg_path)
    if "generator" not in cfg:
        raise ValueError(f"{cfg_path} has no 'generator' entry (the OASISConfig arguments)")
    gen = cfg["generator"]
    if not isinstance(gen, dict):
        raise ValueError(f"{cfg_path}: field 'generator' must be a JSON object; got {gen!r}")
    # Probe without spectral norm: its power iteration is slow on the meta device, and it only adds weights.
    model = build_bounded(
        lambda: OASISGenerator(OASISConfig(**gen)),
        w_path,
        cfg_path,
        probe=lambda: OASISGenerator(OASISConfig(**{**gen, "spectral": False})),
    )
    state = load_tensors(w_path, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{w_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval().requires_grad_(False)


DISCRIMINATOR_FILE = "discriminator.safetensors"


def load_fashion_discriminator(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> UNetDiscriminator | None:
    """The backbone's U-Net discriminator from its folder (``discriminator.safetensors`` + ``config.json``'s
    ``discriminator`` entry, written by ``fiancee train-backbone`` / ``fiancee export-backbone``), or None
    when the folder holds none (backbones exported before the discriminator was kept)."""
    folder = Path(weights) if weights is not None else default_weights_dir()
    cfg_path, w_path = folder / "config.json", folder / DISCRIMINATOR_FILE
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    entry = cfg.get("discriminator") if isinstance(cfg, dict) else None
    if entry is None and not w_path.is_file():
        return None
    if not isinstance(entry, dict) or not w_path.is_file():
        raise ValueError(
            f"{folder}: a discriminator needs both {DISCRIMINATOR_FILE} and config.json's 'discriminator' "
            f"entry (num_classes, in_channels, channels); found only one"
        )
    from ...io import config_int, config_int_list

    args = {
        "num_classes": config_int(entry, "num_classes", cfg_path, minimum=1),
        "in_channels": config_int(entry, "in_channels", cfg_path, minimum=1),
        "channels": config_int_list(entry, "channels", cfg_path, minimum=1),
    }
    model = build_bounded(lambda: UNetDiscriminator(**args), w_path, cfg_path)
    state = load_tensors(w_path, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{w_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval().requires_grad_(False)


def classifier_folder(weights: str | os.PathLike | None) -> Path | None:
    """Where the label classifier for a backbone folder is: ``classifier.safetensors`` beside the backbone,
    else the shipped one (a backbone being trained is scored by the same fixed judge as the committed
    one, so its numbers compare); None when neither exists."""
    for folder in (Path(weights) if weights is not None else None, default_weights_dir()):
        if folder is not None and (folder / "classifier.safetensors").is_file():
            return folder
    return None
