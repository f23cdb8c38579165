"""Inference rewrites: the same generator, with work that does not scale with its MACs taken out.

MACs are the paper's measure of a route's cost (section 4); on a CPU a route's milliseconds follow its MACs only
where its layers run at the backbone's multiply-accumulates per second. Timed layer by layer on the built-in
generators (one thread, oneDNN under PyTorch), four kinds of layer run far slower per MAC than the layers around
them, and each is the same arithmetic done another way here:

- **a transposed convolution on a 1x1 input** (DCGAN's first layer, z -> 4x4) is a matrix product ``z @ W``,
  which the deconvolution kernel runs several times slower than a matrix product: it becomes that product
  (:class:`MatmulConvTranspose2d`);
- **a transposed convolution with few output channels** (the RGB head of the backbone and of every branch): the
  kernel vectorizes over output channels, and 3 of them leave it mostly idle. It becomes one matrix product
  into columns and a col2im (:func:`torch.nn.functional.fold`) (:class:`ColumnsConvTranspose2d`); so does one
  whose input has few pixels in all (at most :data:`COLUMN_ROWS` = batch x height x width: DCGAN's 4x4 layer at
  batch 1), where the kernel runs slower than the matrix product of the same size;
- **two narrow convolutions reading the same input** (SPADE's gamma and beta, 8-12 outputs each in a branch):
  the module runs them as one convolution with both outputs (``fuse_for_inference``, which any module of a
  user's generator may define too: :func:`fuse_modules`);
- **per-call reparametrizations and normalizations**: spectral norm recomputes ``W / sigma`` on every call
  (eval mode keeps sigma fixed), and an eval-mode BatchNorm after a convolution is an affine map the
  convolution's own weights can absorb. Both are fixed costs per layer, which a narrow branch pays as often
  as the wide backbone. The weights are baked (:func:`bake_parametrizations`) and folded (:func:`fold_batchnorm`).

Every rewrite keeps the outputs to float rounding (tests/test_rewrites.py compares every route of the built-in
generators) and leaves the original untouched (:func:`for_inference` rewrites a deep copy). A rewritten model is
for inference only: its weights no longer have their trained names, so it is never saved or trained. The backbone
is rewritten with its exits, so a speed-up measured against it compares like with like.
"""

from __future__ import annotations

import copy
import os
import shutil
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

__all__ = [
    "NARROW_CHANNELS",
    "COLUMN_ROWS",
    "ColumnsConvTranspose2d",
    "MatmulConvTranspose2d",
    "bake_parametrizations",
    "compile_modules",
    "cpp_compiler",
    "fold_batchnorm",
    "for_inference",
    "fuse_modules",
    "replace_transposed",
]

# At most this many output channels, a transposed convolution runs as a matrix product and col2im (the RGB heads).
NARROW_CHANNELS = 4
# At most this many input pixels over the batch (B x H x W), any plain transposed convolution does too: timed on
# DCGAN's layers (one thread), the matrix product and col2im took half the deconvolution kernel's time at 16
# pixels, about as long at 64, and longer from 128 on.
COLUMN_ROWS = 32


def _containers(root: nn.Module) -> Iterator[nn.Module]:
    """Every module reachable from ``root``, each once, including modules kept outside the registry as plain
    attributes (e.g. :class:`fiancee.tasks.faces.DCGANFaceGenerator` keeps its stages as views onto ``main``)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        stack.extend(m._modules.values())
        stack.extend(v for k, v in vars(m).items() if k != "_modules" and isinstance(v, nn.Module))


def _replace_children(root: nn.Module, mapping: dict[int, nn.Module | None]) -> None:
    """Put ``mapping[id(old)]`` wherever ``old`` sits in a container (None: drop it from an nn.Sequential)."""
    for m in list(_containers(root)):
        for name, child in list(m._modules.items()):
            if child is not None and id(child) in mapping:
                new = mapping[id(child)]
                if new is None:
                    if not isinstance(m, nn.Sequential):
                        raise ValueError(f"cannot drop {type(child).__name__} from a {type(m).__name__}")
                    del m._modules[name]
                else:
                    m._modules[name] = new


@torch.no_grad()
def bake_parametrizations(model: nn.Module) -> int:
    """Replace every parametrized weight (spectral norm, weight norm) by its current value; returns how many.

    In eval mode spectral norm divides by a fixed sigma, so the baked weight gives the same outputs without
    recomputing ``W / sigma`` on every call."""
    owners = [m for m in _containers(model) if parametrize.is_parametrized(m)]
    count = 0
    for m in owners:
        # Not parametrize.remove_parametrizations: it deletes the weight's property from the parametrized class,
        # which a deep copy shares with the module it was copied from (the original would lose its weight).
        values = {name: getattr(m, name).detach().clone() for name in m.parametrizations.keys()}
        del m._modules["parametrizations"]
        m.__class__ = m.__class__.__bases__[0]  # the class the module had before it was parametrized
        for name, value in values.items():
            m.register_parameter(name, nn.Parameter(value, requires_grad=False))
            count += 1
    return count


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d / ConvTranspose2d in an nn.Sequential into
    that convolution (weights scaled per output channel, bias shifted); the BatchNorm leaves the Sequential.
    Returns how many were folded. Running statistics are what eval mode uses, so the outputs do not change."""
    # Where each module sits: (container, the module after it in a Sequential, the one before; None elsewhere).
    # A convolution is folded only if every place that holds it has that same BatchNorm right after it, and the
    # BatchNorm only ever follows it (a layer shared with a container that reads its output unnormalized stays).
    places: dict[int, list[tuple]] = {}
    for m in _containers(model):
        layers = list(m._modules.values())
        seq = isinstance(m, nn.Sequential)
        for i, child in enumerate(layers):
            after = layers[i + 1] if seq and i + 1 < len(layers) else None
            before = layers[i - 1] if seq and i > 0 else None
            places.setdefault(id(child), []).append((seq, after, before))
    mapping: dict[int, nn.Module | None] = {}
    for seq in [m for m in _containers(model) if isinstance(m, nn.Sequential)]:
        layers = list(seq._modules.values())
        for conv, bn in zip(layers, layers[1:]):
            if (
                not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                or type(bn) is not nn.BatchNorm2d
                or bn.running_mean is None
                or id(conv) in mapping
                or conv.groups != 1
                or not all(is_seq and after is bn for is_seq, after, _ in places[id(conv)])
                or not all(is_seq and before is conv for is_seq, _, before in places[id(bn)])
            ):
                continue
            scale = torch.rsqrt(bn.running_var + bn.eps)
            shift = -bn.running_mean * scale
            if bn.affine:
                scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
            folded = copy.deepcopy(conv)
            # ConvTranspose2d keeps its output channels in dim 1 of the weight, Conv2d in dim 0.
            shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
            folded.weight = nn.Parameter(conv.weight * scale.view(shape), requires_grad=False)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            folded.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            mapping[id(conv)], mapping[id(bn)] = folded, None
    _replace_children(model, mapping)
    return sum(v is None for v in mapping.values())


class MatmulConvTranspose2d(nn.Module):
    """A ConvTranspose2d (stride 1, no padding) that runs a 1x1 input as the matrix product it is:
    ``out[b, o, i, j] = sum_c x[b, c] W[c, o, i, j]``; any other input size runs the original layer."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        self.conv = conv
        self.register_buffer(
            "matrix", conv.weight.detach().reshape(conv.in_channels, -1).contiguous(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (1, 1):
            return self.conv(x)
        y = torch.mm(x.flatten(1), self.matrix).view(x.shape[0], self.conv.out_channels, *self.conv.kernel_size)
        return y if self.conv.bias is None else y + self.conv.bias.view(1, -1, 1, 1)


class ColumnsConvTranspose2d(nn.Module):
    """A ConvTranspose2d run as one matrix product into columns ``[B, C_out k k, H W]`` and a col2im
    (:func:`torch.nn.functional.fold`, which sums the overlapping kernel windows): the same sums. ``always``: for
    every input (few output channels); otherwise only for inputs of at most :data:`COLUMN_ROWS` pixels over the
    batch, the original layer for larger ones."""

    def __init__(self, conv: nn.ConvTranspose2d, always: bool = True):
        super().__init__()
        self.conv = conv
        self.always = bool(always)
        self.register_buffer(
            "matrix", conv.weight.detach().reshape(conv.in_channels, -1).t().contiguous(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.dim() != 4 or not (self.always or x.shape[0] * x.shape[2] * x.shape[3] <= COLUMN_ROWS):
            return c(x)
        b, _, h, w = x.shape
        size = tuple((n - 1) * s - 2 * p + k for n, s, p, k in zip((h, w), c.stride, c.padding, c.kernel_size))
        cols = torch.matmul(self.matrix, x.flatten(2))  # [B, C_out k k, H W]
        y = F.fold(cols, size, c.kernel_size, stride=c.stride, padding=c.padding)
        return y if c.bias is None else y + c.bias.view(1, -1, 1, 1)


def _plain_transposed(conv: nn.ConvTranspose2d) -> bool:
    return conv.groups == 1 and conv.dilation == (1, 1) and conv.output_padding == (0, 0)


def replace_transposed(model: nn.Module) -> int:
    """Swap each plain ConvTranspose2d for :class:`MatmulConvTranspose2d` (stride 1, no padding) or
    :class:`ColumnsConvTranspose2d` (always with at most :data:`NARROW_CHANNELS` outputs, else on small inputs);
    returns how many were swapped."""
    mapping: dict[int, nn.Module | None] = {}
    for m in _containers(model):
        if type(m) is not nn.ConvTranspose2d or not _plain_transposed(m) or m.padding_mode != "zeros":
            continue
        if m.stride == (1, 1) and m.padding == (0, 0):
            mapping[id(m)] = MatmulConvTranspose2d(m)
        else:
            mapping[id(m)] = ColumnsConvTranspose2d(m, always=m.out_channels <= NARROW_CHANNELS)
    _replace_children(model, mapping)
    return len(mapping)


def fuse_modules(model: nn.Module) -> int:
    """Call ``fuse_for_inference()`` on every module that defines it (e.g. :class:`fiancee.backbones.oasis.SPADE`
    runs its gamma and beta convs as one): a generator's own modules know which of their layers read the same
    input. Returns how many modules fused."""
    fusable = [m for m in _containers(model) if callable(getattr(m, "fuse_for_inference", None))]
    for m in fusable:
        m.fuse_for_inference()
    return len(fusable)


def for_inference(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A rewritten deep copy of ``model`` in eval mode, and how many layers each rewrite touched.

    ``model`` itself is unchanged. The copy's parameters do not require gradients; it is for inference only."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    out = copy.deepcopy(model).eval()
    counts = {
        "parametrizations_baked": bake_parametrizations(out),
        "batchnorms_folded": fold_batchnorm(out),
        "transposed_convolutions_replaced": replace_transposed(out),
        "modules_fused": fuse_modules(out),
    }
    for p in out.parameters():
        p.requires_grad_(False)
    return out, counts


def cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor would use on the CPU (``$CXX``, g++, clang++ or c++), or None."""
    return os.environ.get("CXX") or next((c for c in ("g++", "clang++", "c++") if shutil.which(c)), None)


def compile_modules(modules: Sequence[nn.Module], device: torch.device | str = "cpu") -> int:
    """``torch.compile`` each module in place (:meth:`torch.nn.Module.compile`); returns how many.

    Compiled one by one, not as one graph: the mixed-exit tree chooses at run time which stages and branches a
    batch runs and on how many rows, so the tree stays Python and each segment it calls is compiled (a segment
    seen at a second batch size recompiles once with a dynamic batch). On the CPU TorchInductor needs a C++
    compiler; without one this raises before anything is compiled."""
    modules = list(modules)
    if not all(isinstance(m, nn.Module) for m in modules):
        raise ValueError("modules must all be torch.nn.Module instances")
    if torch.device(device).type == "cpu" and not cpp_compiler():
        raise ValueError(
            "compiling on the CPU needs a C++ compiler for TorchInductor (g++, clang++ or $CXX); none found"
        )
    for m in modules:
        m.compile()
    return len(modules)
