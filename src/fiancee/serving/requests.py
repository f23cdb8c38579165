"""What one HTTP request to ``fiancee serve`` may say, checked before it reaches a model; what its answer holds.

Pure functions on bytes and numpy arrays: no Ray, no torch (a torch-free replica serves an ONNX export with them,
and the tests call them directly). A request is a JSON object::

    {"max_lpips": 0.1, "seed": 7}                              every noise input drawn from the seed
    {"max_lpips": 0.1, "inputs": {"z": [0.3, -1.2, ...]}}      an input given as nested lists of its declared shape
    {"max_lpips": 0.1, "seed": 7, "inputs": {"label": [[0, 3, ...], ...]}}
                                                               a label map as class indices [H, W] (or one-hot)
    {"max_lpips": 0.1, "inputs": {"x": {"png": "<base64>"}}}   an image input (an upscale tile) as a PNG

The inputs are the task's own declarations (name, kind, shape: an export's manifest lists them, a pipeline's task
declares them), never a list of built-in task names. A refused request gets :class:`BadRequest`: an HTTP status
(400 malformed, 413 too large, 415 not JSON, 422 a value out of range or of the wrong shape) and one line naming
what was expected.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np

from ..core.jsonio import loads_strict
from ..core.numbers import is_int
from ..core.rules import check_threshold

__all__ = [
    "BadRequest",
    "InputDecl",
    "Limits",
    "GenerateRequest",
    "FIELDS",
    "SEED_MAX",
    "check_size",
    "parse_generate",
    "draw_noise",
    "encode_png",
    "decode_png",
    "answer",
]

FIELDS = ("max_lpips", "seed", "inputs")
SEED_MAX = 2**63 - 1  # numpy's generator takes any integer >= 0; a JSON integer past int64 is refused as a typo


class BadRequest(ValueError):
    """A request refused before it reaches the model: ``status`` (4xx) and one line (``str(e)``)."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(message.split()))
        self.status = status


@dataclass(frozen=True)
class InputDecl:
    """One generator input as the task declares it: ``kind`` is ``label_map``, ``noise``, ``condition`` or None
    (a pipeline without a task), ``shape`` its per-input shape (no batch dimension)."""

    name: str
    kind: str | None
    shape: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "InputDecl":
        return cls(str(d["name"]), d.get("kind"), tuple(int(s) for s in d["shape"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape)}

    def expected(self) -> str:
        return f"{self.name} [{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Limits:
    """``max_body_bytes``: the largest request body read (a bigger one is 413 before it is read whole)."""

    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class GenerateRequest:
    """A checked request: one float32 array per declared input (no batch dimension) and its threshold."""

    inputs: tuple[np.ndarray, ...]
    max_lpips: float
    seed: int | None = None


def check_size(length: int | None, limits: Limits) -> None:
    """Refuse a body longer than the limit (413), from its Content-Length before reading it, then from its bytes."""
    if length is not None and length > limits.max_body_bytes:
        raise BadRequest(413, f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes} bytes")


def _example(decls: tuple[InputDecl, ...]) -> str:
    noise = [d for d in decls if d.kind == "noise"]
    if len(noise) == len(decls):
        return '{"max_lpips": 0.1, "seed": 0}'
    given = ", ".join(f'"{d.name}": ...' for d in decls if d.kind != "noise")
    return '{"max_lpips": 0.1, ' + ('"seed": 0, ' if noise else "") + '"inputs": {' + given + "}}"


def parse_generate(body: bytes, decls: tuple[InputDecl, ...], limits: Limits = Limits()) -> GenerateRequest:
    """The request ``body`` checked against the task's input declarations ``decls``; :class:`BadRequest` else."""
    check_size(len(body), limits)
    like = _example(decls)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, f"request body must be UTF-8 JSON like {like}") from None
    try:
        obj = loads_strict(text)
    except json.JSONDecodeError as e:
        raise BadRequest(
            400, f"request body is not JSON ({e.msg} at line {e.lineno} column {e.colno}); expected {like}"
        )
    except (ValueError, RecursionError) as e:  # NaN / Infinity literals (named by loads_strict), absurd nesting
        raise BadRequest(400, f"request body is not strict JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest(400, f"request body must be a JSON object like {like}; got {type(obj).__name__}")
    unknown = [k for k in obj if k not in FIELDS]
    if unknown:
        raise BadRequest(400, f"unknown field {unknown[0]!r}; a request takes {', '.join(FIELDS)} (like {like})")
    if "max_lpips" not in obj:
        raise BadRequest(422, f"max_lpips is missing: the LPIPS an output may be from the backbone's, like {like}")
    try:
        t = check_threshold(obj["max_lpips"], "max_lpips")
    except ValueError as e:
        raise BadRequest(422, str(e)) from None
    seed = obj.get("seed")
    if seed is not None and (not is_int(seed) or not 0 <= seed <= SEED_MAX):
        raise BadRequest(422, f"seed must be an integer in [0, {SEED_MAX}]; got {seed!r}")
    given = obj.get("inputs", {})
    if not isinstance(given, dict):
        raise BadRequest(422, f"inputs must be an object naming the task's inputs ({_names(decls)}); got {given!r:.80}")
    known = {d.name for d in decls}
    for name in given:
        if name not in known:
            raise BadRequest(422, f"unknown input {name!r}; this pipeline takes {_names(decls)}")
    noise = draw_noise(decls, seed) if seed is not None else {}
    inputs = []
    for d in decls:
        if d.name in given:
            inputs.append(_input(d, given[d.name]))
        elif d.kind == "noise" and seed is not None:
            inputs.append(noise[d.name])
        elif d.kind == "noise":
            raise BadRequest(422, f"give a seed, or inputs.{d.expected()}")
        else:
            raise BadRequest(422, f"inputs.{d.name} is missing: this pipeline needs {_names(decls)}")
    return GenerateRequest(tuple(inputs), t, seed)


def _names(decls: tuple[InputDecl, ...]) -> str:
    return ", ".join(f"{d.expected()} ({d.kind or 'input'})" for d in decls)


def draw_noise(decls: tuple[InputDecl, ...], seed: int) -> dict[str, np.ndarray]:
    """Every noise input drawn N(0, I) from ``seed``, in declared order, with numpy's generator: the same seed gives
    the same inputs in every replica and runtime (not the draws of ``Task.sample_inputs``, which are torch's)."""
    rng = np.random.default_rng(seed)
    return {d.name: rng.standard_normal(d.shape, dtype=np.float32) for d in decls if d.kind == "noise"}


def _input(d: InputDecl, value) -> np.ndarray:
    where = f"inputs.{d.name}"
    if isinstance(value, dict):
        if set(value) != {"png"} or not isinstance(value["png"], str):
            raise BadRequest(422, f'{where} must be nested lists of shape {list(d.shape)} or {{"png": "<base64>"}}')
        return decode_png(value["png"], d)
    if not isinstance(value, list):
        raise BadRequest(422, f"{where} must be nested lists of numbers of shape {list(d.shape)}; got {value!r:.80}")
    try:
        x = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(
            422, f"{where} must be nested lists of numbers of shape {list(d.shape)} (ragged or not numbers)"
        )
    if d.kind == "label_map" and x.shape == d.shape[1:]:  # class indices [H, W] -> one-hot [L, H, W]
        classes = d.shape[0]
        if not (np.all(x == np.round(x)) and x.min() >= 0 and x.max() < classes):
            raise BadRequest(422, f"{where} as class indices must hold integers in 0..{classes - 1}")
        return (np.arange(classes)[:, None, None] == x[None]).astype(np.float32)
    if x.shape != d.shape:
        also = f" or class indices {list(d.shape[1:])}" if d.kind == "label_map" else ""
        raise BadRequest(422, f"{where} must have shape {list(d.shape)}{also}; got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise BadRequest(422, f"{where} holds NaN or Inf; expected finite numbers")
    if d.kind == "label_map" and not (np.isin(x, (0.0, 1.0)).all() and (x.sum(axis=0) == 1).all()):
        raise BadRequest(422, f"{where} must be a one-hot label map (0 / 1, one class per pixel)")
    if np.abs(x).max(initial=0.0) > np.finfo(np.float32).max:  # finite in float64, past float32's range
        raise BadRequest(422, f"{where} holds numbers too large for float32")
    return x.astype(np.float32)


def decode_png(text: str, d: InputDecl) -> np.ndarray:
    """A base64 PNG as the input ``d`` (``[C, H, W]`` with C 1 or 3, values in [-1, 1]); its size is checked from
    the header before any pixel is decoded."""
    from PIL import Image

    where = f"inputs.{d.name}"
    if len(d.shape) != 3 or d.shape[0] not in (1, 3):
        raise BadRequest(422, f"{where} is not an image input (shape {list(d.shape)}); give nested lists")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(422, f"{where}.png must be base64 of a PNG file") from None
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception:  # PIL's UnidentifiedImageError and friends
        raise BadRequest(422, f"{where}.png is not a PNG file") from None
    c, h, w = d.shape
    if image.size != (w, h):
        raise BadRequest(422, f"{where}.png must be {w}x{h} pixels; got {image.size[0]}x{image.size[1]}")
    try:
        pixels = np.asarray(image.convert("RGB" if c == 3 else "L"), dtype=np.float32)
    except Exception as e:  # a truncated or corrupt PNG fails when decoded
        raise BadRequest(422, f"{where}.png could not be decoded: {e}") from None
    pixels = pixels.reshape(h, w, c).transpose(2, 0, 1)  # [C, H, W]
    return pixels / 127.5 - 1.0


def encode_png(image: np.ndarray) -> bytes:
    """An image ``[C, H, W]`` in [-1, 1] (C 1 or 3) as PNG bytes."""
    from PIL import Image

    pixels = np.clip(np.rint((np.asarray(image, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB"}.get(pixels.shape[0])
    if mode is None:
        raise ValueError(f"an image to encode must be [C, H, W] with 1 or 3 channels; got {list(image.shape)}")
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[0] if mode == "L" else pixels.transpose(1, 2, 0), mode=mode)
    image.save(buffer, format="PNG", compress_level=1)  # lossless all the same; the fastest zlib level
    return buffer.getvalue()


def answer(result: dict, route_names: list[str], backbone_macs: float) -> dict:
    """The JSON answer to one request from what the replica returned for it (:func:`fiancee.serving.batch.run_batch`):
    the PNG in base64, the route (0-based, and its name), the MACs charged, the predicted LPIPS of the route taken
    (0 for the backbone: an image's LPIPS against itself) and of every exit (None where the predictor did not run)."""
    route = int(result["route"])
    predicted = result["predicted_lpips"]
    return {
        "image_png": base64.b64encode(result["png"]).decode("ascii"),
        "route": route,
        "route_name": route_names[route],
        "macs": int(result["macs"]),
        "macs_saved": round(1.0 - float(result["macs"]) / backbone_macs, 6),
        "predicted_lpips": None if predicted is None else (predicted[route] if route < len(predicted) else 0.0),
        "predicted_lpips_per_exit": predicted,
        "max_lpips": result["max_lpips"],
        "batch_size": int(result["batch_size"]),
    }
