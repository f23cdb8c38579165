"""A reader for ncnn's ``.param`` / ``.bin`` model files (convolution weights only).

ncnn (Tencent, BSD-3-Clause) stores a network as a text graph (``.param``) and one flat binary of the
weighted layers' data in graph order (``.bin``). This reader is written from the format as ncnn's
``ModelBin`` reads it; it never imports ncnn and never executes anything from the files:

- ``.param``: the magic line ``7767517``, a line ``layer_count blob_count``, then one line per layer:
  type, name, input count, output count, input blob names, output blob names, ``k=v`` parameters
  (a negative key ``-233xx=n,v1,...`` holds an array). For ``Convolution``: ``0`` = num_output,
  ``1`` = kernel, ``3`` = stride, ``4`` = pad, ``5`` = bias_term, ``6`` = weight data size.
- ``.bin``: per convolution, a 4-byte tag then the weight ``[out][in][kh][kw]`` (tag ``0x01306B47``:
  float16, padded to a multiple of 4 bytes; tag ``0``: float32), then, when ``bias_term = 1``, an
  untagged float32 bias of ``num_output`` values. A correct read consumes the file to its last byte.

Layers that carry no weights (``Input``, ``Split``, ``Concat``, ``Eltwise``, ``BinaryOp``, ``Interp``,
``ReLU``, ...) are listed but read nothing; any other weighted layer type is refused by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NcnnLayer", "NcnnConv", "read_param", "read_convolutions", "MAGIC", "FP16_TAG"]

MAGIC = 7767517
FP16_TAG = 0x01306B47
_WEIGHTLESS = {
    "Input",
    "Split",
    "Concat",
    "Eltwise",
    "BinaryOp",
    "Interp",
    "ReLU",
    "Sigmoid",
    "TanH",
    "Noop",
    "Crop",
    "Reshape",
    "Permute",
    "Flatten",
    "Pooling",
    "Softmax",
    "Clip",
    "UnaryOp",
    "PixelShuffle",
}


@dataclass(frozen=True)
class NcnnLayer:
    """One line of a ``.param`` file."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict = field(default_factory=dict)  # int key -> int | float | tuple (arrays)


@dataclass(frozen=True)
class NcnnConv:
    """One convolution's weights as read from the ``.bin`` (float32 numpy arrays)."""

    name: str
    weight: np.ndarray  # [out, in, kh, kw]
    bias: np.ndarray | None  # [out]
    stride: int
    pad: int
    leaky_slope: float | None  # activation fused into the layer (``9=2``: leaky ReLU with this slope)


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` text graph, checked against its header."""
    path = Path(path)
    lines = [ln.split() for ln in path.read_text(encoding="ascii").splitlines() if ln.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise ValueError(f"{path}: not an ncnn .param file (the first line must be the magic {MAGIC})")
    if len(lines) < 2 or len(lines[1]) != 2:
        raise ValueError(f"{path}: the second line must be 'layer_count blob_count'")
    count = int(lines[1][0])
    layers = []
    for row in lines[2:]:
        if len(row) < 4:
            raise ValueError(f"{path}: a layer line needs type, name and two counts; got {' '.join(row)!r}")
        n_in, n_out = int(row[2]), int(row[3])
        blobs = row[4 : 4 + n_in + n_out]
        params: dict = {}
        for kv in row[4 + n_in + n_out :]:
            key, _, val = kv.partition("=")
            k = int(key)
            if k <= -23300:  # an array: -23300 - id = count,v1,...,vn
                items = val.split(",")
                params[-k - 23300] = tuple(_value(v) for v in items[1:])
            else:
                params[k] = _value(val)
        layers.append(NcnnLayer(row[0], row[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params))
    if len(layers) != count:
        raise ValueError(f"{path}: the header says {count} layers, the file has {len(layers)}")
    return layers


def read_convolutions(param: str | os.PathLike, bin_path: str | os.PathLike) -> list[NcnnConv]:
    """Every convolution of an ncnn model, in graph order, with its weights read from ``bin_path``.

    Raises ``ValueError`` on a weighted layer type this reader does not know, an unknown storage tag,
    a weight size that disagrees with the layer's shape, or a ``.bin`` not consumed exactly.
    """
    layers = read_param(param)
    data = Path(bin_path).read_bytes()
    pos = 0
    convs = []
    for layer in layers:
        if layer.type in _WEIGHTLESS:
            continue
        if layer.type != "Convolution":
            raise ValueError(
                f"{param}: layer {layer.name} is a {layer.type}; this reader knows Convolution weights only"
            )
        p = layer.params
        out, kernel, size = int(p.get(0, 0)), int(p.get(1, 0)), int(p.get(6, 0))
        if out <= 0 or kernel <= 0 or size <= 0 or size % (out * kernel * kernel):
            raise ValueError(f"{param}: layer {layer.name} has an inconsistent shape (0={out} 1={kernel} 6={size})")
        cin = size // (out * kernel * kernel)
        if pos + 4 > len(data):
            raise ValueError(f"{bin_path}: ends inside layer {layer.name}'s tag")
        tag = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if tag == FP16_TAG:
            nbytes = size * 2
            w = np.frombuffer(data, dtype="<f2", count=size, offset=pos).astype(np.float32)
            pos += (nbytes + 3) // 4 * 4  # float16 data is padded to a multiple of 4 bytes
        elif tag == 0:
            w = np.frombuffer(data, dtype="<f4", count=size, offset=pos).copy()
            pos += size * 4
        else:
            raise ValueError(
                f"{bin_path}: layer {layer.name} has storage tag {tag:#x}; expected float16 "
                f"({FP16_TAG:#x}) or float32 (0)"
            )
        bias = None
        if int(p.get(5, 0)) == 1:
            if pos + out * 4 > len(data):
                raise ValueError(f"{bin_path}: ends inside layer {layer.name}'s bias")
            bias = np.frombuffer(data, dtype="<f4", count=out, offset=pos).copy()
            pos += out * 4
        if pos > len(data):
            raise ValueError(f"{bin_path}: ends inside layer {layer.name}'s weight")
        act = int(p.get(9, 0))
        slope = None
        if act == 2:
            slope = float(p[10][0]) if 10 in p and p[10] else 0.0
        elif act not in (0,):
            raise ValueError(
                f"{param}: layer {layer.name} fuses activation type {act}; this reader knows leaky ReLU (2)"
            )
        convs.append(
            NcnnConv(layer.name, w.reshape(out, cin, kernel, kernel), bias, int(p.get(3, 1)), int(p.get(4, 0)), slope)
        )
    if pos != len(data):
        raise ValueError(
            f"{bin_path}: {len(data) - pos} bytes left after the last layer's weights (not this .param's .bin?)"
        )
    return convs
