"""Exit branches and their execution (paper sections 3.1, 4.1, 4.2, S1.1.1, S1.2.1).

For a backbone of N stages, the exit attached after stage k is a branch of N - k blocks mirroring
backbone stages k+1 .. N, every channel count multiplied by a scale factor SF and floored at a
minimum channel count (a count already at or below the minimum is kept), followed by a copy of the
head. The first branch block takes the backbone's full-width features (Tables S8 and S9).

The vocabulary: ``attach_after`` are the stages (1-based counts) branches attach after; ``routes`` are
route indices (0-based), numbered shallowest first: route ``i < E`` is the exit after stage
``attach_after[i]``, and route ``E == len(attach_after)`` is the backbone itself (the last exit).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .core.args import check_choice, check_int, check_int_list, is_integer
from .core.renames import UNSET, renamed, warn_renamed
from .staged import StagedGenerator

__all__ = [
    "parse_scale",
    "scale_channels",
    "branch_channels",
    "GuideSpec",
    "Branch",
    "ExitGenerator",
    "INITS",
    "channel_importance",
]

# How branch weights start: "random" (fresh layers, as the paper) or "inherit" (the backbone's own
# weights, sliced to the channels that matter most: Anycost GAN's channel sorting, GAN Compression's
# inheritance). See Branch.inherit_.
INITS = ("random", "inherit")

Guide = Union[torch.Tensor, Callable[[torch.Tensor, Union[torch.Tensor, None]], torch.Tensor], None]


def parse_scale(scale: float | str | Fraction) -> Fraction:
    """``"1/4"``, ``0.25`` or ``Fraction(1, 4)`` -> ``Fraction(1, 4)``; must lie in (0, 1]."""
    try:
        if isinstance(scale, bool):  # Fraction(True) is 1: a flag is not a scale
            raise TypeError
        value = Fraction(scale).limit_denominator(1000) if not isinstance(scale, Fraction) else scale
    except OverflowError:  # Fraction(inf)
        raise ValueError(
            f"scale factor must be a finite number in (0, 1] or a fraction like '1/4'; got {scale!r}"
        ) from None
    except (ValueError, ZeroDivisionError, TypeError):
        raise ValueError(f"scale factor must be a number or a fraction like '1/4'; got {scale!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"scale factor must lie in (0, 1]; got {scale!r}")
    return value


def scale_channels(channels: int, scale: float | str | Fraction, min_channels: int, unit: int = 1) -> int:
    """The paper's channel rule (S1.1.1): ``c * SF`` floored at ``min_channels``.

    A count already at or below the minimum is kept as it is ("if the minimum number is 64, and we
    enforce factor of 1/3 starting from 128, the new channel number will be 64, instead of 43").
    With ``unit > 1`` and ``c`` a multiple of it, the base width is scaled instead of ``c``
    (OASIS: 1024 = 16 x 64 -> 16 x int(64/3) = 336, as in Table S8); otherwise ``int(c * SF)``.
    """
    for value, name in ((channels, "channels"), (min_channels, "min_channels"), (unit, "channel unit")):
        if not is_integer(value) or value <= 0:
            raise ValueError(
                f"channel counts must be positive integers; got {name}={value!r} "
                f"(channels={channels!r}, min_channels={min_channels!r}, unit={unit!r})"
            )
    sf = parse_scale(scale)
    if channels <= min_channels:
        return channels
    if unit > 1 and channels % unit == 0:
        scaled = int(unit * sf) * (channels // unit)
    else:
        scaled = int(channels * sf)
    return max(min_channels, scaled)


def branch_channels(
    stage_channels: Sequence[tuple[int, int]],
    after: int,
    scale: float | str | Fraction,
    min_channels: int,
    unit: int = 1,
) -> list[tuple[int, int]]:
    """``(in, out)`` of every block of the branch attached after stage ``after`` (1-based count).

    The first block takes the backbone's full-width features; the others chain scaled widths.
    """
    n = len(stage_channels)
    if not is_integer(after) or not 1 <= after < n:
        raise ValueError(f"an exit can follow stages 1..{n - 1} of a {n}-stage backbone; got {after}")
    out: list[tuple[int, int]] = []
    c_in = stage_channels[after - 1][1]
    for index in range(after, n):
        c_out = scale_channels(stage_channels[index][1], scale, min_channels, unit)
        out.append((c_in, c_out))
        c_in = c_out
    return out


@dataclass(frozen=True)
class GuideSpec:
    """How a guide tensor (from the feature bank) enters the branches.

    ``mode="first"`` (OASIS, S1.1.1): the guide is resized to the first branch block's input and
    mapped by a learned 3x3 conv to half its channels, so that input grows x1.5 (Table S8 caption).
    ``mode="every"`` (MegaPortraits, S1.2.1): the guide (an RGB image) is resized bilinearly and
    concatenated as it is to the input of every branch block (+``channels`` each, Table S9 caption).
    """

    mode: str
    channels: int

    def __post_init__(self):
        check_choice(self.mode, "guide mode", ("first", "every"))
        check_int(self.channels, "guide channels", minimum=1)


def _structural_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` under a name that ignores how Sequentials are keyed.

    Children of a Sequential / ModuleList are named by position, so a slice ``main[3:6]`` (keys
    3, 4, 5) and its narrowed copy (keys 0, 1, 2) give the same names.
    """
    out = {
        f"{prefix}{k}": t for k, t in list(module._parameters.items()) + list(module._buffers.items()) if t is not None
    }
    positional = isinstance(module, (nn.Sequential, nn.ModuleList))
    for i, (name, child) in enumerate(module._modules.items()):
        if child is not None:
            out.update(_structural_tensors(child, f"{prefix}{i if positional else name}."))
    return out


def channel_importance(backbone: StagedGenerator, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Mean absolute activation of every channel after every stage, over ``inputs`` (``[C_s]`` each).

    Data-driven and architecture-free (only the staged contract is used): the channels a narrowed
    branch block keeps when it inherits the backbone's weights are the ones that carry the most signal.
    """
    with torch.no_grad():
        taps = backbone.features(*inputs, taps=range(1, backbone.num_stages + 1)).taps
    return [h.abs().float().mean(dim=[d for d in range(h.dim()) if d != 1]) for _, h in sorted(taps.items())]


def _copy_sliced(
    dst: nn.Module, src: nn.Module, in_size: int, in_idx: torch.Tensor, extra: int, out_size: int, out_idx: torch.Tensor
) -> tuple[int, int]:
    """Copy ``src``'s tensors into the narrower ``dst``, keeping channels ``in_idx`` / ``out_idx``.

    A dimension whose size differs is matched to the input side (backbone size ``in_size``, branch size
    ``len(in_idx) + extra``) or the output side (``out_size``, ``len(out_idx)``) by its sizes; the
    ``extra`` input channels (the bank's guide, concatenated last) start at zero so the inherited block
    initially computes what the backbone did. Tensors with no counterpart keep their fresh values.
    Returns (tensors copied, tensors left fresh).
    """
    src_t = _structural_tensors(src)
    copied = fresh = 0
    for name, d in _structural_tensors(dst).items():
        s = src_t.get(name)
        if s is None or s.dim() != d.dim():
            fresh += 1
            continue
        x, target = s.detach(), d.data
        n_in = len(in_idx) + extra
        if (
            x.dim() == 1
            and x.shape != target.shape
            and in_size > 1
            and x.numel() % in_size == 0
            and target.numel() == n_in * (x.numel() // in_size)
            and x.numel() // in_size > 1
        ):
            # A flattened [in, k*k] vector (spectral norm's right singular vector): map it by input channel.
            x, target = x.view(in_size, -1), target.view(n_in, -1)
        pad_in: int | None = None
        for k in range(target.dim()):
            if x.shape[k] == target.shape[k]:
                continue
            as_in = x.shape[k] == in_size and target.shape[k] == n_in
            as_out = x.shape[k] == out_size and target.shape[k] == len(out_idx)
            if as_in and as_out and not (extra == 0 and torch.equal(in_idx, out_idx)):
                raise ValueError(f"cannot inherit {name}: dimension {k} could be the input or the output channels")
            if as_out:
                x = x.index_select(k, out_idx.to(x.device))
            elif as_in:
                x = x.index_select(k, in_idx.to(x.device))
                pad_in = k if extra else None
            elif target.shape[k] < x.shape[k]:
                x = x.narrow(k, 0, target.shape[k])  # an inner width tied to neither side
            else:
                x = None
                break
        if x is None:
            fresh += 1
            continue
        if pad_in is not None:
            shape = list(x.shape)
            shape[pad_in] = extra
            x = torch.cat([x, x.new_zeros(shape)], dim=pad_in)
        target.copy_(x.to(d.dtype))
        copied += 1
    return copied, fresh


@torch.no_grad()
def _converge_spectral_norms(module: nn.Module, iterations: int = 100, max_rounds: int = 50) -> None:
    """Run spectral norm's power iteration to convergence on every spectrally normalised weight of
    ``module`` (``torch.nn.utils.parametrizations.spectral_norm``).

    A narrowed copy of a weight is a different matrix from the one the inherited singular vectors
    belong to: with them, the eval-mode estimate of its largest singular value can be far too small
    (an untrained inherited OASIS branch measured a normalised spectral norm of about 2.7 instead of 1),
    so the branch's output jumps with tiny input changes until training's one iteration per step repairs
    it. Converging here starts the branch in the state training moves it to.
    """
    for sub in module.modules():
        plist = getattr(sub, "parametrizations", None)
        if plist is None or "weight" not in plist:
            continue
        for p in plist["weight"]:
            if hasattr(p, "_power_method") and hasattr(p, "_reshape_weight_to_matrix"):
                w = p._reshape_weight_to_matrix(plist["weight"].original)
                # Until the estimate settles: with two close leading singular values 100 iterations left
                # it 0.8 % off on a narrowed tiny OASIS block.
                sigma = None
                for _ in range(max_rounds):
                    p._power_method(w, iterations)
                    new = torch.dot(p._u, torch.mv(w, p._v)).item()
                    if sigma is not None and abs(new - sigma) <= 1e-6 * abs(new):
                        break
                    sigma = new


class Branch(nn.Module):
    """The narrow copy of stages ``after+1 .. N`` and of the head."""

    def __init__(
        self,
        backbone: StagedGenerator,
        after: int,
        scale: float | str | Fraction,
        min_channels: int,
        guide: GuideSpec | None = None,
    ):
        super().__init__()
        self.after = after
        self.guide_spec = guide
        plan = branch_channels(backbone.stage_channels, after, scale, min_channels, backbone.channel_unit)
        self.block_channels = plan
        extra = [0] * len(plan)
        if guide is not None and guide.mode == "first":
            extra[0] = plan[0][0] // 2
            self.guide_adapter = nn.Conv2d(guide.channels, extra[0], 3, padding=1)
        elif guide is not None:
            extra = [guide.channels] * len(plan)
        self.guide_extra = extra
        self.blocks = nn.ModuleList(
            backbone.make_branch_stage(after + j, c_in + extra[j], c_out) for j, (c_in, c_out) in enumerate(plan)
        )
        self.head = backbone.make_branch_head(plan[-1][1])

    @torch.no_grad()
    def inherit_(self, backbone: StagedGenerator, importance: Sequence[torch.Tensor]) -> dict:
        """Start every block from the backbone stage it mirrors, keeping its most important channels.

        ``importance[s]`` scores the output channels of backbone stage ``s`` (0-based), e.g.
        :func:`channel_importance`. The first block reads the backbone's full-width features, so it keeps
        every input channel; each later block reads the channels its predecessor kept. Where a backbone
        stage keeps its width (a residual block with an identity shortcut), the block keeps the very
        channels it reads, so the shortcut stays consistent. At SF 1 a branch becomes an exact copy of
        the rest of the backbone. Returns counts of tensors copied and left fresh.
        """
        n = backbone.num_stages
        if len(importance) != n:
            raise ValueError(f"importance must score every one of the {n} stages; got {len(importance)}")
        prev = torch.arange(backbone.stage_channels[self.after - 1][1])
        copied = fresh = 0
        for j, block in enumerate(self.blocks):
            s = self.after + j
            cin, cout = backbone.stage_channels[s]
            want = self.block_channels[j][1]
            if importance[s].numel() != cout:
                raise ValueError(
                    f"importance of stage {s + 1} scores {importance[s].numel()} channels; the stage has {cout}"
                )
            if cin == cout and want == len(prev):
                keep = prev
            else:
                keep = torch.topk(importance[s].float().cpu(), want).indices.sort().values
            c, f = _copy_sliced(block, backbone.stages[s], cin, prev, self.guide_extra[j], cout, keep)
            if len(prev) < cin or len(keep) < cout:  # zero guide columns leave the singular values as they were
                _converge_spectral_norms(block)
            copied, fresh, prev = copied + c, fresh + f, keep
        last = backbone.stage_channels[-1][1]
        c, f = _copy_sliced(self.head, backbone.head, last, prev, 0, -1, torch.arange(0))
        if len(prev) < last:
            _converge_spectral_norms(self.head)
        return {"copied": copied + c, "fresh": fresh + f}

    def _with_guide(self, j: int, h: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        if self.guide_extra[j] == 0:
            return h
        size = h.shape[-2:]
        if self.guide_spec.mode == "first":
            g = self.guide_adapter(F.interpolate(guide, size=size, mode="nearest"))
        else:
            g = F.interpolate(guide, size=size, mode="bilinear", align_corners=False)
        return torch.cat([h, g], dim=1)

    def forward(
        self,
        h: torch.Tensor,
        cond: torch.Tensor | None,
        guide: torch.Tensor | None = None,
        return_features: bool = False,
    ):
        """The branch's image; with ``return_features`` also every block's output (feature distillation)."""
        if self.guide_spec is not None:
            if guide is None:
                raise ValueError(
                    f"the branch after stage {self.after} was built with a guide ({self.guide_spec}) but got none"
                )
            if guide.shape[0] != h.shape[0] or guide.shape[1] != self.guide_spec.channels:
                raise ValueError(
                    f"guide must be [B={h.shape[0]}, {self.guide_spec.channels}, H, W]; got {list(guide.shape)}"
                )
        feats = []
        for j, block in enumerate(self.blocks):
            h = block(self._with_guide(j, h, guide), cond)
            feats.append(h)
        image = self.head(h, cond)
        return (image, feats) if return_features else image


def _take(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.index_select(0, index)


def _required(value, name: str, expected: str):
    if value is UNSET:
        raise ValueError(f"pass {name}= ({expected})")
    return value


class ExitGenerator(nn.Module):
    """A staged backbone with exit branches after the chosen stages.

    ``attach_after`` lists the stages (1-based counts) after which a branch is attached, e.g.
    ``(1, 2, 3, 4)`` for OASIS. Call it with ``route=`` an int (one route for the whole batch: 0-based,
    ``len(attach_after)`` = the backbone) or a ``[B]`` integer tensor of routes (a mixed batch, run as a
    tree: :meth:`mixed`).

    A guide (from the feature bank) is either a tensor ``[B, C, h, w]`` or a callable
    ``guide(h, cond)`` that maps the features after the key stage (``attach_after[0]``, the stage before
    the first exit) and the condition (e.g. the label map, or None) to that tensor.

    Old names, kept for one release with a DeprecationWarning: the attribute ``exits`` (now
    ``attach_after``), the keywords ``exit=`` (now ``route=``) and ``exits=`` of :meth:`mixed` /
    :meth:`mixed_from` (now ``routes=``).
    """

    def __init__(
        self,
        backbone: StagedGenerator,
        attach_after: Sequence[int],
        scale: float | str | Fraction,
        min_channels: int,
        guide: GuideSpec | None = None,
    ):
        super().__init__()
        attach_after = check_int_list(attach_after, "attach_after", increasing=True)
        if attach_after[0] < 1 or attach_after[-1] >= backbone.num_stages:
            raise ValueError(
                f"attach_after must lie in 1..{backbone.num_stages - 1} for a {backbone.num_stages}-stage "
                f"backbone; got {attach_after}"
            )
        self.backbone = backbone
        self.attach_after = attach_after
        self.scale = parse_scale(scale)
        self.min_channels = check_int(min_channels, "min_channels", minimum=1)
        self.guide_spec = guide
        self.branches = nn.ModuleList(Branch(backbone, k, self.scale, self.min_channels, guide) for k in attach_after)
        self._cap_costs()

    @property
    def exits(self) -> list[int]:
        """Deprecated name of :attr:`attach_after` (removed in the next release)."""
        warn_renamed("ExitGenerator", "exits", "attach_after")
        return self.attach_after

    def _cap_costs(self) -> None:
        """No route may cost more than the backbone: the router would never pick it.

        The guide widens a branch's first block by half its input (S1.1.1) and adds the adapter conv;
        after a deep stage, where the branch's first block reads the backbone's full-width features at a
        high resolution, that can exceed what the backbone spends on the remaining stages (fashion's exit
        3 with the patch bank: 142 vs 124 MMACs). Such a branch is built without the guide (the bank's
        benefit is largest on the shallow exits anyway, Table S1); a route that costs more than the
        backbone even so is refused here, before any training.
        """
        full = self.route_cost(self.num_routes - 1)
        for i, k in enumerate(self.attach_after):
            if self.branches[i].guide_spec is not None and self.route_cost(i) > full:
                self.branches[i] = Branch(self.backbone, k, self.scale, self.min_channels, None)
        for i, k in enumerate(self.attach_after):
            cost = self.route_cost(i)
            if cost > full:
                raise ValueError(
                    f"the exit after stage {k} would cost {cost / 1e6:.1f} MMACs per input, more than the backbone's "
                    f"{full / 1e6:.1f}: drop it from the exits or narrow the branches (scale {self.scale}, "
                    f"min_channels {self.min_channels})"
                )

    @property
    def guided(self) -> list[bool]:
        """Per exit, whether its branch reads the bank's guide (see :meth:`_cap_costs`)."""
        return [b.guide_spec is not None for b in self.branches]

    def route_cost(self, route: int, batch_size: int = 1) -> int:
        """MACs of one route for ``batch_size`` inputs (the bank's search is counted by the bank)."""
        from .metrics.macs import count_macs

        return count_macs(
            self, *self.backbone.example_inputs(batch_size), route=route, guide=self._meta_guide(batch_size)
        )

    def inherit_(self, importance: Sequence[torch.Tensor]) -> dict:
        """Initialise every branch from the backbone's weights (:meth:`Branch.inherit_`)."""
        counts = [b.inherit_(self.backbone, importance) for b in self.branches]
        return {k: sum(c[k] for c in counts) for k in ("copied", "fresh")}

    @property
    def num_routes(self) -> int:
        """Branches plus the backbone."""
        return len(self.attach_after) + 1

    @property
    def key_stage(self) -> int:
        return self.attach_after[0]

    def _check_route(self, route: int) -> int:
        if isinstance(route, bool) or not isinstance(route, int) or not 0 <= route < self.num_routes:
            raise ValueError(
                f"route must be an int in 0..{self.num_routes - 1} (the last is the backbone); got {route!r}"
            )
        return route

    def _resolve_guide(self, guide: Guide, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor | None:
        if self.guide_spec is None:
            return None
        if guide is None:
            raise ValueError(
                "these exits were built with a guide; pass guide= (a tensor or a callable on key-stage features)"
            )
        g = guide(h, cond) if callable(guide) else guide
        if not isinstance(g, torch.Tensor) or g.dim() != 4 or g.shape[0] != h.shape[0]:
            got = f"{list(g.shape)}" if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"guide must be a tensor [B={h.shape[0]}, C, h, w]; got {got}")
        return g

    def forward(
        self,
        *inputs: torch.Tensor,
        route: int | torch.Tensor = UNSET,
        guide: Guide = None,
        exit: int | torch.Tensor = UNSET,
    ) -> torch.Tensor:
        """``route`` an int: the whole batch on that route (:meth:`route`); a ``[B]`` integer tensor: one route
        per input (:meth:`mixed`). ``exit=`` is the deprecated name of ``route=``."""
        route = _required(
            renamed("ExitGenerator", "exit", exit, "route", route), "route", "an int route or a [B] tensor of routes"
        )
        if isinstance(route, torch.Tensor):
            return self.mixed(*inputs, routes=route, guide=guide)
        return self.route(*inputs, route=route, guide=guide)

    def route(
        self, *inputs: torch.Tensor, route: int = UNSET, guide: Guide = None, check: bool = True, exit: int = UNSET
    ) -> torch.Tensor:
        """Run the whole batch through one route (0-based; ``len(attach_after)`` = the backbone).

        ``check=False`` skips the backbone's input checks (a host sync each): for inputs already
        checked, and for CUDA graph capture, which cannot contain a sync. ``exit=`` is the deprecated
        name of ``route=``.
        """
        route = self._check_route(
            _required(renamed("ExitGenerator.route", "exit", exit, "route", route), "route", "an int route")
        )
        if check:
            self.backbone.check_inputs(*inputs)
        if route == len(self.attach_after):
            return self.backbone.features(*inputs, image=True).image
        after = self.attach_after[route]
        f = self.backbone.features(*inputs, taps=(self.key_stage, after))
        g = self._resolve_guide(guide, f.taps[self.key_stage], f.cond)
        return self.branches[route](f.taps[after], f.cond, g)

    def mixed(
        self,
        *inputs: torch.Tensor,
        routes: torch.Tensor = UNSET,
        guide: Guide = None,
        check: bool = True,
        exits: torch.Tensor = UNSET,
    ) -> torch.Tensor:
        """Run a batch where every sample has its own route (``routes [B]``, 0-based), as a tree.

        Each backbone stage only processes the samples still on the backbone past it, and each
        branch only its own samples, so no sample pays for a route it does not take. Outputs come
        back in input order. In eval mode the result equals running every sample alone on its route.
        (In train mode BatchNorm statistics depend on who shares a sub-batch: train one route at a time.)
        ``check=False`` skips the backbone's input checks, as in :meth:`route`. ``exits=`` is the deprecated
        name of ``routes=``.
        """
        routes = _required(
            renamed("ExitGenerator.mixed", "exits", exits, "routes", routes), "routes", "a [B] tensor of routes"
        )
        batch = self.backbone.check_inputs(*inputs) if check else inputs[0].shape[0]
        routes = self._check_routes(routes, batch, inputs[0].device)
        h, cond = self.backbone.stem(*inputs)
        return self._tree(h, cond, 0, routes, guide)

    def mixed_from(
        self,
        h: torch.Tensor,
        cond: torch.Tensor | None,
        start: int,
        routes: torch.Tensor = UNSET,
        guide: Guide = None,
        *,
        exits: torch.Tensor = UNSET,
    ) -> torch.Tensor:
        """:meth:`mixed` continued from features already computed: ``h [B, C, h, w]`` is the output of
        stage ``start`` (a stage count, 0 = the stem's output) for the whole batch, ``cond`` the stem's
        condition. The pipeline runs the trunk up to the key stage once, lets the predictor and the bank
        read it, and continues here, so no stage runs twice. ``start`` may not lie past the first exit
        (its branch starts from there); with ``start == key_stage`` a callable ``guide`` is applied to ``h``.
        The result equals ``mixed`` on the inputs that gave ``h`` (eval mode). ``exits=`` is the deprecated
        name of ``routes=``.
        """
        routes = _required(
            renamed("ExitGenerator.mixed_from", "exits", exits, "routes", routes), "routes", "a [B] tensor of routes"
        )
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= self.key_stage:
            raise ValueError(f"start must be a stage count in 0..{self.key_stage} (the key stage); got {start!r}")
        if not isinstance(h, torch.Tensor) or h.dim() < 2:
            raise ValueError(
                f"h must be the features [B, ...] after stage {start}; got "
                f"{list(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}"
            )
        routes = self._check_routes(routes, h.shape[0], h.device)
        return self._tree(h, cond, start, routes, guide)

    def _check_routes(self, routes: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        if (
            not isinstance(routes, torch.Tensor)
            or routes.dim() != 1
            or routes.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
        ):
            got = f"{routes.dtype} {list(routes.shape)}" if isinstance(routes, torch.Tensor) else type(routes).__name__
            raise ValueError(f"routes must be a 1-D integer tensor with one route per sample; got {got}")
        if routes.numel() != batch:
            raise ValueError(f"routes has {routes.numel()} entries for a batch of {batch}")
        routes = routes.to(device, torch.int64)
        if int(routes.min()) < 0 or int(routes.max()) >= self.num_routes:
            raise ValueError(f"route indices must lie in 0..{self.num_routes - 1}; got {routes.tolist()}")
        return routes

    def _tree(
        self, h: torch.Tensor, cond: torch.Tensor | None, start: int, routes: torch.Tensor, guide: Guide
    ) -> torch.Tensor:
        """The mixed-exit tree from ``h``, the output of stage ``start`` (0 = the stem) for every sample; a batch
        on one route takes :meth:`_one_route` (no gathers or scatters: the same values, bit for bit)."""
        first, last = torch.stack(torch.aminmax(routes)).tolist()  # one host sync for both
        if first == last:
            return self._one_route(h, cond, start, first, guide)
        return self._branching_tree(h, cond, start, routes, guide)

    def _one_route(
        self, h: torch.Tensor, cond: torch.Tensor | None, start: int, route: int, guide: Guide
    ) -> torch.Tensor:
        """:meth:`_branching_tree` when every sample takes ``route``: the same stages and branch on the whole batch.

        Selecting every row copies the batch without changing a value, so skipping the selections changes
        nothing but their cost (the fixed cost of a batch a router sends to one route, or of ``route=`` forced
        through the pipeline). The guide is resolved at the key stage as there, even for the backbone route."""
        # h leaves the loop as the output of stage ``last``: the exit's stage, or the one before the last stage.
        last = self.backbone.num_stages - 1 if route == len(self.attach_after) else self.attach_after[route]
        g: torch.Tensor | None = None
        for done in range(start, last + 1):
            if done > start:
                h = self.backbone.stages[done - 1](h, cond)
            if done == self.key_stage:
                g = self._resolve_guide(guide, h, cond)
        if route < len(self.attach_after):
            return self.branches[route](h, cond, g)
        h = self.backbone.stages[-1](h, cond)  # start <= key_stage < N: the last stage is still to run
        return self.backbone.head(h, cond)

    def _branching_tree(
        self, h: torch.Tensor, cond: torch.Tensor | None, start: int, routes: torch.Tensor, guide: Guide
    ) -> torch.Tensor:
        """The general tree: after each exit's stage its samples leave into their branch, the rest go on."""
        batch = h.shape[0]
        alive = torch.arange(batch, device=routes.device)  # input positions of the rows of h
        out: torch.Tensor | None = None
        g: torch.Tensor | None = None
        branch_at = {k: i for i, k in enumerate(self.attach_after)}

        def emit(rows: torch.Tensor, images: torch.Tensor) -> None:
            nonlocal out
            if out is None:
                out = images.new_empty((batch, *images.shape[1:]))
            out.index_copy_(0, rows, images)

        for done in range(start, self.backbone.num_stages):
            if done > start:  # h is the output of stage ``done`` (the first one was computed by the caller)
                h = self.backbone.stages[done - 1](h, cond)
            if done == self.key_stage:
                g = self._resolve_guide(guide, h, cond)
            route = branch_at.get(done)
            if route is None:
                continue
            here = routes.index_select(0, alive) == route
            if bool(here.any()):
                sel = here.nonzero().squeeze(1)
                emit(
                    alive.index_select(0, sel),
                    self.branches[route](h.index_select(0, sel), _take(cond, sel), _take(g, sel)),
                )
                keep = (~here).nonzero().squeeze(1)
                if keep.numel() == 0:
                    return out
                alive, h, cond, g = (
                    alive.index_select(0, keep),
                    h.index_select(0, keep),
                    _take(cond, keep),
                    _take(g, keep),
                )
        h = self.backbone.stages[-1](h, cond)  # start <= key_stage < N: the last stage is still to run
        emit(alive, self.backbone.head(h, cond))
        return out

    def trunk(self, *inputs: torch.Tensor, guide: Guide = None, all_stages: bool = False):
        """Run the backbone once and keep what every branch needs (used to train all exits at once).

        Returns ``(features, cond, guide, image)``: ``features[i]`` is ``h`` after stage ``attach_after[i]``
        (with ``all_stages``: after stage ``i + 1``, every stage, for feature distillation),
        ``image`` the backbone's output (the distillation target).
        """
        self.backbone.check_inputs(*inputs)
        taps = range(1, self.backbone.num_stages + 1) if all_stages else self.attach_after
        f = self.backbone.features(*inputs, taps=taps, image=True)
        g = self._resolve_guide(guide, f.taps[self.key_stage], f.cond)
        return [f.taps[k] for k in taps], f.cond, g, f.image

    def route_macs(self, batch_size: int = 1) -> list[int]:
        """MACs of every route for ``batch_size`` inputs, shallowest first, the backbone last."""
        return [self.route_cost(r, batch_size) for r in range(self.num_routes)]

    def _meta_guide(self, batch_size: int) -> Guide:
        if self.guide_spec is None:
            return None
        channels = self.guide_spec.channels

        def fake_guide(h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
            # Shape stand-in for the bank's output: MACs of retrieval are counted by the bank itself.
            return torch.zeros(h.shape[0], channels, *h.shape[-2:], device=h.device, dtype=h.dtype)

        return fake_guide
