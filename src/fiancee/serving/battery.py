"""A battery of malformed requests for any pipeline's declared inputs, each with the 4xx it must get.

The tests run it through :func:`fiancee.serving.requests.parse_generate` (no Ray) and once through a running
service; the load test (tools/serve_load.py) sends it to the service it measures. Built from the declarations, so
it fits a user's own task as it fits the built-in ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .requests import SEED_MAX, InputDecl, Limits

__all__ = ["BadCase", "bad_requests", "valid_request"]


@dataclass(frozen=True)
class BadCase:
    name: str
    body: bytes
    status: int
    message: str  # a part of the one line the answer must carry


def valid_request(decls: tuple[InputDecl, ...], max_lpips: float = 0.1, seed: int = 0) -> dict:
    """A request the service answers: a seed for the noise inputs, zeros (class 0 for a label map) for the rest."""
    body: dict = {"max_lpips": max_lpips}
    if any(d.kind == "noise" for d in decls):
        body["seed"] = seed
    given = {d.name: _zeros(d) for d in decls if d.kind != "noise"}
    if given:
        body["inputs"] = given
    return body


def _zeros(d: InputDecl):
    shape = d.shape[1:] if d.kind == "label_map" else d.shape  # a label map as class indices
    value: object = 0
    for n in reversed(shape):
        value = [value] * n
    return value


def bad_requests(decls: tuple[InputDecl, ...], limits: Limits = Limits()) -> list[BadCase]:
    """At least 20 malformed requests: not JSON, not strict JSON, wrong fields, thresholds and seeds out of range,
    inputs of the wrong name, shape or type, an oversize body."""
    good = valid_request(decls)
    first = decls[0]
    depth = min(20_000, limits.max_body_bytes // 2)  # past Python's recursion limit, within the body limit
    cases = [
        BadCase("empty body", b"", 400, "request body is not JSON"),
        BadCase("truncated JSON", b'{"max_lpips": 0.1,', 400, "request body is not JSON"),
        BadCase("not UTF-8", b"\xff\xfe{", 400, "request body must be UTF-8 JSON"),
        BadCase("a JSON array", b"[0.1]", 400, "request body must be a JSON object"),
        BadCase("a JSON string", b'"seed 0"', 400, "request body must be a JSON object"),
        BadCase("NaN literal", b'{"max_lpips": NaN, "seed": 0}', 400, "NaN is not JSON"),
        BadCase("Infinity literal", b'{"max_lpips": Infinity, "seed": 0}', 400, "Infinity is not JSON"),
        BadCase("a number overflowing to infinity", b'{"max_lpips": 1e999, "seed": 0}', 400, "overflows to infinity"),
        BadCase("nesting too deep", b"[" * depth + b"]" * depth, 400, "request body is not strict JSON"),
        BadCase("unknown field", _json({**good, "threshold": 0.1}), 400, "unknown field 'threshold'"),
        BadCase("max_lpips missing", _json({k: v for k, v in good.items() if k != "max_lpips"}), 422, "max_lpips is"),
        BadCase("max_lpips 0", _json({**good, "max_lpips": 0}), 422, "max_lpips must lie in (0, 1]"),
        BadCase("max_lpips 1.5", _json({**good, "max_lpips": 1.5}), 422, "max_lpips must lie in (0, 1]"),
        BadCase("max_lpips negative", _json({**good, "max_lpips": -0.1}), 422, "max_lpips must lie in (0, 1]"),
        BadCase("max_lpips a string", _json({**good, "max_lpips": "0.1"}), 422, "max_lpips must be a number"),
        BadCase("max_lpips true", _json({**good, "max_lpips": True}), 422, "max_lpips must be a number"),
        BadCase("max_lpips null", _json({**good, "max_lpips": None}), 422, "max_lpips must be a number"),
        BadCase("seed negative", _json({**good, "seed": -1}), 422, "seed must be an integer"),
        BadCase("seed a float", _json({**good, "seed": 1.5}), 422, "seed must be an integer"),
        BadCase("seed a string", _json({**good, "seed": "7"}), 422, "seed must be an integer"),
        BadCase("seed past int64", _json({**good, "seed": SEED_MAX + 1}), 422, "seed must be an integer"),
        BadCase("inputs not an object", _json({**good, "inputs": [1, 2]}), 422, "inputs must be an object"),
        BadCase("unknown input", _json({**good, "inputs": {"nope": [0.0]}}), 422, "unknown input 'nope'"),
        BadCase("input of the wrong shape", _json(_with(good, first, [0.0] * 3)), 422, f"inputs.{first.name} must"),
        BadCase("input ragged", _json(_with(good, first, [[0.0], [0.0, 1.0]])), 422, f"inputs.{first.name} must"),
        BadCase("input of strings", _json(_with(good, first, ["a"] * 3)), 422, f"inputs.{first.name} must"),
        BadCase("input a number", _json(_with(good, first, 0.5)), 422, f"inputs.{first.name} must be nested lists"),
        BadCase(
            "input too large for float32",
            _json(_with(good, first, _full(first, 1e300))),
            422,
            "one-hot" if first.kind == "label_map" else "float32",
        ),
        BadCase("input not a PNG", _json(_with(good, first, {"png": "aGVsbG8="})), 422, f"inputs.{first.name}"),
        BadCase("oversize body", b" " * (limits.max_body_bytes + 1), 413, "exceeds the limit"),
    ]
    noise = [d for d in decls if d.kind == "noise"]
    if noise:
        missing = {k: v for k, v in good.items() if k != "seed"}
        cases.append(BadCase("neither seed nor noise input", _json(missing), 422, "give a seed, or inputs."))
    return cases


def _with(good: dict, d: InputDecl, value) -> dict:
    return {**good, "inputs": {**good.get("inputs", {}), d.name: value}}


def _full(d: InputDecl, v: float):
    value: object = v
    for n in reversed(d.shape):
        value = [value] * n
    return value


def _json(obj) -> bytes:
    return json.dumps(obj).encode()
