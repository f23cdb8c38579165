"""A quality predictor's folder: ``config.json`` (header kind ``fiancee-predictor``, constructor arguments,
fingerprints, provenance) and ``weights.safetensors``, and the fingerprints that tie it to the exact weights whose
LPIPS it learned. :meth:`QualityPredictor.save_pretrained` / :meth:`QualityPredictor.from_pretrained` (and the
older :func:`load_predictor`, :mod:`fiancee.predictor.model`) wrap the functions here, which take the class to
build rather than import it (the model module imports this one); folders with the old header
``quality_predictor`` still load (:mod:`fiancee.core.folders`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.folders import PREDICTOR, make_header
from ..io import (
    atomic_folder,
    build_bounded,
    config_int,
    config_int_list,
    config_str,
    load_tensors,
    read_manifest,
    read_whole_folder,
    resolve_inside,
    save_tensors,
    tensor_fingerprint,
    write_json,
)

__all__ = ["FORMAT", "TARGETS", "exits_fingerprints", "save_predictor", "read_predictor"]

FORMAT = 1
# What a predictor's network regresses (:class:`fiancee.predictor.QualityPredictor`'s ``target``); here, where its
# folder's config is checked, because the model module imports this one.
TARGETS = ("lpips", "log")


def exits_fingerprints(model) -> dict[str, str]:
    """Fingerprints of the backbone's weights and of the exits' weights (a table / predictor is only
    valid for the exact weights that produced its LPIPS)."""
    return {
        "backbone": tensor_fingerprint(model.backbone.state_dict()),
        "exits": tensor_fingerprint(model.branches.state_dict()),
    }


def save_predictor(
    predictor,
    out: str | Path,
    *,
    fingerprints: dict[str, str],
    extra: dict | None = None,
    files: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/config.json`` (constructor arguments, fingerprints, provenance) + ``out/weights.safetensors``
    (+ ``files``: name -> JSON object, e.g. the error report), the folder replaced whole
    (:func:`fiancee.io.atomic_folder`); refused when ``out`` holds something other than a predictor."""
    out = Path(out)
    with atomic_folder(out, kind=PREDICTOR, what="quality predictor") as tmp:
        save_tensors(tmp / "weights.safetensors", predictor.state_dict())
        for name, obj in (files or {}).items():
            write_json(tmp / name, obj)
        write_json(
            tmp / "config.json",
            {
                **make_header(PREDICTOR, FORMAT),
                "predictor": predictor.config(),
                "fingerprints": dict(fingerprints),
                **(extra or {}),
            },
        )
    return out


def _check_predictor_config(args: Any, weights: Path, source: Path) -> dict:
    """The constructor arguments of a saved predictor, type-checked (the size is bounded by
    :func:`fiancee.io.build_bounded` where it is built)."""
    if not isinstance(args, dict):
        raise ValueError(f"{source}: field 'predictor' must be a JSON object; got {args!r}")
    known = {"arch", "num_exits", "input_shapes", "width", "hidden", "max_grid", "target"}
    if set(args) - known:
        raise ValueError(f"{source}: field 'predictor' has unknown keys {sorted(set(args) - known)}")
    config_str(args, "arch", source)
    config_int(args, "num_exits", source, minimum=1)
    config_int(args, "width", source, minimum=1, optional=True)
    config_int_list(args, "hidden", source, minimum=1, nonempty=False, optional=True)
    config_int(args, "max_grid", source, minimum=1, optional=True)
    if "target" in args and args["target"] not in TARGETS:
        expected = " or ".join(repr(t) for t in TARGETS)
        raise ValueError(f"{source}: field 'predictor' has target {args['target']!r}; expected {expected}")
    shapes = args.get("input_shapes")
    if (
        not isinstance(shapes, list)
        or not shapes
        or not all(isinstance(s, list) and config_int_list({"s": s}, "s", source, minimum=1) for s in shapes)
    ):
        raise ValueError(
            f"{source}: field 'input_shapes' must be a non-empty list of shapes (lists of positive "
            f"integers); got {shapes!r}"
        )
    return args


@read_whole_folder("config.json")  # a save swapping the folder mid-load makes it load again
def read_predictor(path: str | Path, cls, model=None, device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """``(predictor, config)`` from a folder, the predictor built as ``cls(**recorded arguments)`` (a
    :class:`fiancee.predictor.QualityPredictor`); with ``model`` the backbone and exit fingerprints must match."""
    path = Path(path)
    config = read_manifest(
        resolve_inside(path, "config.json"),
        kind=PREDICTOR,
        version=FORMAT,
        what="quality predictor config",
        required=("predictor", "fingerprints"),
    )
    weights = resolve_inside(path, "weights.safetensors")
    if not isinstance(config["fingerprints"], dict):
        raise ValueError(
            f"{path / 'config.json'}: field 'fingerprints' must be a JSON object; got {config['fingerprints']!r}"
        )
    if model is not None:
        want = config.get("fingerprints", {})
        have = exits_fingerprints(model)
        for part in ("backbone", "exits"):
            if want.get(part) != have[part]:
                raise ValueError(
                    f"{path} was trained for {part} weights {want.get(part)}, but these {part} have "
                    f"{have[part]}: its predicted LPIPS would describe other images; retrain it for "
                    "these exits"
                )
    args = _check_predictor_config(config["predictor"], weights, path / "config.json")
    predictor = build_bounded(lambda: cls(**args), weights, path / "config.json")
    try:
        predictor.load_state_dict(load_tensors(weights))
    except RuntimeError as e:  # torch's many-line "Error(s) in loading state_dict": the config names another model
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ValueError(
            f"{path / 'config.json'}: field 'predictor' describes a model its weights "
            f"({weights.name}) do not fit: {first}"
        ) from None
    return predictor.to(device).eval(), config
