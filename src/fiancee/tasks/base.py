"""The Task interface: everything the pipeline needs to know about one generator and its data.

A task names a pretrained staged generator, says where its exits go (``attach_after``: the stages, 1-based,
branches attach after) and how wide their branches start, draws inputs for it, and says what "comparing two
images" means for it (the paper measures an exit's quality as LPIPS between the exit's image and the
backbone's image for the same input).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..staged import StagedGenerator

__all__ = [
    "Task",
    "InputSpec",
    "INPUT_KINDS",
    "SPLITS",
    "WEIGHTS_ENV",
    "weights_dir",
    "find_weights",
    "check_split",
    "declared_inputs",
    "cross_noises",
    "pair_noises",
    "parse_shift",
]

SPLITS = ("train", "test")
INPUT_KINDS = ("label_map", "noise", "condition")


@dataclass(frozen=True)
class InputSpec:
    """One generator input as its task declares it (what used to be guessed from shapes and counts).

    - ``label_map``: a one-hot semantic map ``[L, H, W]`` drawn from data. The bank searches per class
      of it (S1.1.1; the stem's condition must start with it, as OASIS's does), the ``conv`` predictor
      reads it, and fixed noise sets are crossed with it (S1.1.2, 4.1). At most one per task.
    - ``noise``: redrawn freely, N(0, I) of its per-sample shape (:meth:`Task.draw_noise`); the
      predictor's table and the bank cross a fixed set of these with the other inputs.
    - ``condition``: anything else the generator is asked for (an attribute vector, a pose): kept
      exactly as :meth:`Task.sample_inputs` draws it.
    """

    name: str
    kind: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"an input needs a non-empty name; got {self.name!r}")
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input {self.name!r}: kind must be one of {INPUT_KINDS}; got {self.kind!r}")


# The trained artifacts this project commits (the fashion backbone and classifier, the faces exits)
# ship inside the package, so a checkout, an editable install and a wheel all read the same files.
WEIGHTS_ENV = "FIANCEE_WEIGHTS"


def weights_dir(*parts: str) -> Path:
    """Where a trained artifact is read from: ``$FIANCEE_WEIGHTS/<parts>`` when that variable is set,
    else the copy shipped in the package (``fiancee/weights/<parts>``). The path may not exist."""
    root = os.environ.get(WEIGHTS_ENV)
    base = Path(root) if root else Path(__file__).resolve().parents[1] / "weights"
    return base.joinpath(*parts)


def find_weights(*parts: str) -> Path:
    """:func:`weights_dir`, or a one-line ``FileNotFoundError`` naming the folder when it is absent."""
    path = weights_dir(*parts)
    if not path.exists():
        where = (
            f"${WEIGHTS_ENV} is {os.environ[WEIGHTS_ENV]!r}"
            if os.environ.get(WEIGHTS_ENV)
            else f"set {WEIGHTS_ENV} to a folder holding {'/'.join(parts)}"
        )
        raise FileNotFoundError(f"no trained artifact {'/'.join(parts)!r} at {path} ({where})")
    return path


def parse_shift(task, shift) -> tuple[str, str | None]:
    """``"name"`` or ``"name:argument"`` -> (name, argument), the name one the task declares
    (:attr:`Task.shifts`); anything else is refused naming the task's shifts."""
    declared = getattr(task, "shifts", None) or {}
    if not declared:
        raise ValueError(f"task {task.name!r} declares no input shifts (Task.shifts)")
    name, _, arg = shift.partition(":") if isinstance(shift, str) else ("", "", "")
    if name not in declared:
        known = "; ".join(f"{k}: {v}" for k, v in declared.items())
        raise ValueError(f"task {task.name!r} has no input shift {shift!r}; it declares {known}")
    return name, (arg or None)


def check_split(split: str, splits: tuple[str, ...] = SPLITS) -> str:
    if split not in splits:
        raise ValueError(f"split must be one of {splits}; got {split!r}")
    return split


class Task(ABC):
    """One generator + its inputs. Subclasses fill the class attributes and the abstract methods.

    ``attach_after`` was called ``exits`` before: a task that declares only ``exits = (...)`` still works (it is
    read as ``attach_after``), and ``task.exits`` still reads ``attach_after``; both old spellings go in the next
    release.
    """

    name: str
    description: str
    attach_after: tuple[int, ...]  # exit branches attach after these stages (1-based)
    default_scale: str  # branch width scale factor SF (paper S1.1.1)
    default_min_channels: int  # channel floor of the scale rule
    image_size: tuple[int, int]  # (H, W) of the backbone's output
    image_channels: int = 3
    # What sample_inputs returns, in order. The default is today's minimal task: one noise vector.
    inputs: tuple[InputSpec, ...] = (InputSpec("z", "noise"),)
    # Discriminator kind of every branch's critic when the recipe does not ask for patch critics
    # (fiancee.train.critics): the kind the generator was trained with. ``oasis``: a copy of the
    # discriminator :meth:`load_discriminator` returns (paper eq. 3), trained with OASIS's loss.
    critic_kind: str = "dcgan"
    # How `fiancee build-bank` populates and cuts this task's bank (fiancee.bank.BankSpec fields plus
    # the population: `n` draws, each crossed with `noises` fixed noise draws when the task has a
    # label map or condition). Default: one key per input (MegaPortraits, S1.2.1).
    bank_defaults: dict = {"mode": "global", "grid": (4, 4), "max_per_class": 1024, "n": 4096, "noises": 1}
    spec: str | None = None  # the spec this task was resolved from (set by the registry)
    # The split a router's calibration inputs are drawn from (fiancee.assemble, under a seed of their own). A
    # guarantee holds for inputs exchangeable with these, so they must be as new to the exits as the inputs routed
    # later: the training split serves when its draws are fresh (new noise), but a task whose exits were trained on
    # a fixed set of its training examples (image tiles) names a split of its own, never seen in training.
    calibration_split: str = "train"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A task written before the rename declares `exits = (...)`: that is its attach_after, and `task.exits`
        # (read or set) is the property below from then on.
        old = cls.__dict__.get("exits")
        if old is not None and not isinstance(old, property):
            if "attach_after" not in cls.__dict__:
                cls.attach_after = old
            del cls.exits

    @property
    def exits(self) -> tuple[int, ...]:
        """The old name of :attr:`attach_after` (kept for one release)."""
        return self.attach_after

    @exits.setter
    def exits(self, value: tuple[int, ...]) -> None:  # a task that sets `self.exits` in its __init__
        self.attach_after = value

    @abstractmethod
    def load_backbone(self, device: str | torch.device = "cpu") -> StagedGenerator:
        """The pretrained backbone, in eval mode, with gradients off."""

    @abstractmethod
    def sample_inputs(self, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, ...]:
        """``n`` generator inputs; the same (n, seed, split) always gives the same tensors.

        ``split`` separates the inputs used to fit things (predictor, bank) from those used to
        evaluate them, so the two never overlap.
        """

    # Named input shifts (:meth:`shifted_inputs`): name -> what it draws, for a user. A calibrated router's
    # guarantee assumes routed inputs are like its calibration inputs; these draw inputs that are not
    # (`fiancee guarantee --shift`). Empty: the task declares none.
    shifts: dict = {}

    def shifted_inputs(self, n: int, seed: int, split: str, shift: str) -> tuple[torch.Tensor, ...]:
        """``n`` inputs like :meth:`sample_inputs` draws, from the shifted distribution ``shift``
        (``"name"`` or ``"name:argument"``, a name of :attr:`shifts`). Tasks that declare shifts override it."""
        parse_shift(self, shift)
        raise NotImplementedError(f"task {self.name!r} declares the shift {shift!r} but does not draw it")

    def draw_noise(self, name: str, n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """``n`` fresh draws ``[n, *shape]`` of the noise input ``name`` (default N(0, I))."""
        return torch.randn(n, *shape, generator=generator)

    def load_discriminator(self, device: str | torch.device = "cpu") -> "torch.nn.Module | None":
        """The discriminator the backbone was trained with, when its weights ship (eval mode, gradients
        off), else None. For the ``oasis`` critic it is an N+1-class segmenter: images ``[B, C, H, W]`` ->
        logits ``[B, L + 1, H, W]``, channel 0 "fake", channel ``c + 1`` label ``c`` of the label map."""
        return None

    def real_images(self, n: int, seed: int, split: str = "test") -> torch.Tensor | None:
        """The real images ``[n, C, H, W]`` in [-1, 1] whose conditions ``sample_inputs(n, seed, split)``
        draws (what FID against real data compares with, the paper's Table S1), or None for a task with
        no data set of its own (then an exit's FID is measured against the backbone's images)."""
        return None

    def label_accuracy(self, images: torch.Tensor, n: int, seed: int, split: str = "test") -> float | None:
        """How often a classifier trained on real data recognises the class asked for in ``images``, the
        generator's output for ``sample_inputs(n, seed, split)`` (the analogue of the paper's mIoU), or
        None when the task ships no such classifier."""
        return None

    def critic_note(self) -> str | None:
        """One line shown when exits train adversarially against a critic that is not the paper's (e.g.
        the backbone's discriminator did not ship, so a fresh one is used), else None."""
        return None

    def pretrained_exits(self) -> Path | None:
        """A committed exit run of this task (its ``latest.json`` marks it complete), or None."""
        return None

    def pretrained_pipeline(self) -> Path | None:
        """A committed pipeline folder of this task (exits, predictor, calibrated router) the demo measures
        instead of building one, or None. Worth shipping when the demo's LPIPS tables would take long."""
        return None

    def reference(self, backbone: StagedGenerator, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The image every exit is compared with: the backbone's own output (paper section 4)."""
        with torch.no_grad():
            return backbone(*inputs)

    def to_lpips_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images as LPIPS should see them: ``[B, 3, H', W']`` in [-1, 1], at least 64 px a side.

        LPIPS's AlexNet has too little spatial extent below 64 px, so smaller images are resized up
        (bilinear); gray images are repeated to 3 channels.
        """
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W]; got {list(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, w = x.shape[-2:]
        if min(h, w) < 64:
            factor = 64 / min(h, w)
            x = F.interpolate(x, size=(round(h * factor), round(w * factor)), mode="bilinear", align_corners=False)
        return x.clamp(-1, 1)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "attach_after": list(self.attach_after),
            "default_scale": self.default_scale,
            "default_min_channels": self.default_min_channels,
            "image_size": list(self.image_size),
            "image_channels": self.image_channels,
            "inputs": [{"name": i.name, "kind": i.kind} for i in declared_inputs(self)],
            "critic_kind": self.critic_kind,
        }


def declared_inputs(task: Task, inputs: tuple[torch.Tensor, ...] | None = None) -> tuple[InputSpec, ...]:
    """The task's input declarations, checked (and against ``inputs`` drawn from it, when given)."""
    specs = tuple(task.inputs)
    if not specs or not all(isinstance(s, InputSpec) for s in specs):
        raise ValueError(f"task {task.name!r}: inputs must be a non-empty tuple of InputSpec; got {task.inputs!r}")
    if sum(s.kind == "label_map" for s in specs) > 1:
        raise ValueError(f"task {task.name!r} declares more than one label_map input: {[s.name for s in specs]}")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"task {task.name!r}: input names must differ; got {[s.name for s in specs]}")
    # The kinds live with the critics (fiancee.train.critics.CRITICS, a layer above): a registered name is
    # checked where critics are built, before an exit-training run writes anything.
    if not isinstance(task.critic_kind, str) or not task.critic_kind:
        raise ValueError(
            f"task {task.name!r}: critic_kind must be a non-empty string naming a registered critic; "
            f"got {task.critic_kind!r}"
        )
    if inputs is not None and len(inputs) != len(specs):
        raise ValueError(
            f"task {task.name!r} declares {len(specs)} input(s) ({', '.join(s.name for s in specs)}) "
            f"but sample_inputs returned {len(inputs)}: declare every input in Task.inputs"
        )
    return specs


def _fixed_noises(
    task: Task, inputs: tuple[torch.Tensor, ...], noises: "int | torch.Tensor | Sequence[torch.Tensor]", seed: int
) -> tuple[tuple[InputSpec, ...], list[torch.Tensor]]:
    """The task's declared inputs and ``K`` fixed draws of each noise input (``[K, ...]`` each), checked."""
    specs = declared_inputs(task, inputs)
    have = ", ".join(f"{s.name} ({s.kind})" for s in specs)
    if all(s.kind == "noise" for s in specs):
        raise ValueError(
            f"noises= crosses a task's label map or conditions with fixed noise draws; task {task.name!r} "
            f"has no label map or condition (its inputs: {have})"
        )
    if not any(s.kind == "noise" for s in specs):
        raise ValueError(
            f"noises= crosses fixed noise draws with the other inputs; task {task.name!r} declares no "
            f"noise input (its inputs: {have})"
        )
    shapes = [tuple(x.shape[1:]) for s, x in zip(specs, inputs) if s.kind == "noise"]
    if isinstance(noises, bool) or not isinstance(noises, (int, torch.Tensor, tuple, list)):
        raise ValueError(f"noises must be a count or fixed noise tensors; got {type(noises).__name__}")
    if isinstance(noises, int):
        if noises < 1:
            raise ValueError(f"noises must be >= 1; got {noises}")
        names = [s.name for s in specs if s.kind == "noise"]
        fixed = [
            task.draw_noise(name, noises, shape, torch.Generator().manual_seed(seed + i))
            for i, (name, shape) in enumerate(zip(names, shapes))
        ]
    else:
        fixed = [noises] if isinstance(noises, torch.Tensor) else list(noises)
    if (
        len(fixed) != len(shapes)
        or any(f.dim() < 1 or tuple(f.shape[1:]) != sh for f, sh in zip(fixed, shapes))
        or len({f.shape[0] for f in fixed}) != 1
    ):
        want = ", ".join(f"[K, {', '.join(map(str, sh))}]" for sh in shapes)
        raise ValueError(f"noises must be {want} (one per noise input); got {[list(f.shape) for f in fixed]}")
    return specs, fixed


def cross_noises(
    task: Task, inputs: tuple[torch.Tensor, ...], noises: "int | torch.Tensor | Sequence[torch.Tensor]", seed: int
) -> tuple[torch.Tensor, ...]:
    """``n`` draws of the task's kept inputs (label map, conditions) crossed with ``K`` fixed draws of its
    noise inputs: ``n * K`` inputs, draw-major (each kept input repeated ``K`` times in a row, the ``K``
    noises tiled). The paper builds the predictor's table (S1.1.2) and the bank (4.1) this way.

    ``noises`` is ``K`` (drawn with :meth:`Task.draw_noise`, the i-th noise input from ``seed + i``) or
    the fixed draws themselves, one ``[K, ...]`` tensor per noise input.
    """
    specs, fixed = _fixed_noises(task, inputs, noises, seed)
    k, n = fixed[0].shape[0], inputs[0].shape[0]
    draws = iter(fixed)
    out = []
    for spec, x in zip(specs, inputs):
        if spec.kind == "noise":
            f = next(draws)
            out.append(f.repeat(n, *[1] * (f.dim() - 1)))  # [n*K, ...]: the K draws, tiled
        else:
            out.append(x.repeat_interleave(k, dim=0))  # [n*K, ...]: every draw K times in a row
    return tuple(out)


def pair_noises(
    task: Task, inputs: tuple[torch.Tensor, ...], noises: "int | torch.Tensor | Sequence[torch.Tensor]", seed: int
) -> tuple[torch.Tensor, ...]:
    """The ``n`` draws with their noise inputs replaced by ``K`` fixed draws in turn (draw ``i`` gets fixed
    draw ``i mod K``): ``n`` inputs. Table S3's set, held-out maps "joined" with the training noises, with
    as many maps as inputs, whatever K (a full cross of 500 maps with K = 500 noises would be 250,000).
    ``noises`` and ``seed`` as in :func:`cross_noises` (the same arguments give the same fixed draws).
    """
    specs, fixed = _fixed_noises(task, inputs, noises, seed)
    k, n = fixed[0].shape[0], inputs[0].shape[0]
    which = torch.arange(n) % k
    draws = iter(fixed)
    return tuple(
        next(draws).index_select(0, which).to(x.dtype) if spec.kind == "noise" else x for spec, x in zip(specs, inputs)
    )
