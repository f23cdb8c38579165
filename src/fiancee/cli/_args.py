"""Arguments several commands share, each declared once here; ``choices`` come from the modules that own the names.

A ``choices`` list is read when argparse first needs it (parsing that option, or printing that command's help),
not when the parser is built (:func:`choice_option`): its owners import torch, which ``fiancee --help`` and
``fiancee --version`` need not wait for.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Iterable

TASK_HELP = "a built-in task (faces, fashion), package.module:attr naming a Task, or an entry point of fiancee.tasks"
WRITE_INTO = "write into an existing, non-empty --out folder"
HELD_OUT = "held-out inputs (default 500)"
NO_FID = "skip FID (Inception is slow on CPU)"


class Names(Sequence):
    """A ``choices`` list read from its owner on first use (``read`` returns the names in the order shown)."""

    def __init__(self, read: Callable[[], Iterable[str]]):
        self._read = read
        self._names: tuple[str, ...] | None = None

    def _all(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._read())
        return self._names

    def __getitem__(self, i):
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(list(self._all()))


def choice_option(
    parser: argparse.ArgumentParser, *flags: str, names: Callable[[], Iterable[str]], **kwargs
) -> argparse.Action:
    """``parser.add_argument(*flags, choices=..., **kwargs)`` with the choices read from ``names()`` on first use.
    (Set after add_argument, which formats the metavar and so would read them at once.)"""
    action = parser.add_argument(*flags, **kwargs)
    action.choices = Names(names)
    return action


# ----------------------------------------------------------------------------------------------
# Where the names live: the one place to change when an owner turns a tuple into a registry.


def predictor_heads() -> list[str]:
    """Predictor heads (train-predictor --arch, bench --predictor)."""
    from ..predictor.heads import HEADS

    return HEADS.in_order()  # registration order: the built-ins first, then any added in this process


def export_targets() -> list[str]:
    """Export targets (export --target), the built-in onnx first."""
    from ..export_targets import EXPORT_TARGETS

    return EXPORT_TARGETS.in_order()


def predictor_recipes() -> list[str]:
    from ..predictor import RECIPES

    return list(RECIPES)


def predictor_targets() -> list[str]:
    """What a predictor regresses (train-predictor --target)."""
    from ..predictor import TARGETS

    return list(TARGETS)


def exit_recipes() -> list[str]:
    from ..train.losses import RECIPES

    return list(RECIPES)


def lr_schedules() -> list[str]:
    """Learning-rate schedules (train-exits --schedule)."""
    from ..train.losses import SCHEDULES

    return list(SCHEDULES)


def presets() -> list[str]:
    from ..train.exits import PRESETS

    return list(PRESETS)


def exit_inits() -> list[str]:
    """Branch initialisations, the default (inherit) first."""
    from ..exits import INITS

    return sorted(INITS, key=lambda name: name != "inherit")


def critics() -> list[str]:
    """``task`` (the task's own critic kind) and every critic kind."""
    from ..train import critics as owner

    return ["task", *owner.CRITICS.in_order()]


def reference_backbones() -> list[str]:
    from ..backbones import BACKBONES

    return list(BACKBONES)


def backbone_sizes() -> list[str]:
    from ..backbones import SIZES

    return list(SIZES)


def lpips_nets() -> list[str]:
    from ..metrics.weights import NETS

    return list(NETS)


def guarantee_methods() -> list[str]:
    """The calibrations with a guarantee: the high-probability ones (ltt first, the default), then the others (crc)."""
    from ..risk import GUARANTEED, HIGH_PROBABILITY

    return [*HIGH_PROBABILITY, *(m for m in GUARANTEED if m not in HIGH_PROBABILITY)]


def risk_bounds() -> list[str]:
    from ..risk import BOUNDS

    return list(BOUNDS)


def bank_modes() -> list[str]:
    from ..bank import MODES

    return list(MODES)


def bank_indexes() -> list[str]:
    from ..bank import INDEX_KINDS

    return list(INDEX_KINDS)


# ----------------------------------------------------------------------------------------------
# Types


def task_spec(text: str) -> str:
    """--task: a built-in name, package.module:attr, or an entry point (checked before any work)."""
    from ..tasks.registry import check_task_spec

    try:
        return check_task_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ----------------------------------------------------------------------------------------------
# Options


def task_option(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = None,
    help: str | None = TASK_HELP,
    only: str | None = None,
) -> None:
    """--task, required unless ``default``; ``only``: the one task the command is for (its own commands)."""
    kind = {"choices": [only]} if only is not None else {"type": task_spec}
    parser.add_argument("--task", **kind, required=default is None, default=default, help=help)


def out_option(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    default: str | None = None,
    help: str | None = None,
    refuse_existing: bool = True,
    unset: Callable[[argparse.Namespace], str] | None = None,
) -> None:
    """--out, the folder a command writes. ``refuse_existing``: an existing, non-empty folder is refused before any
    work unless --overwrite (:func:`overwrite_option`) is given, so no worked example silently replaces a committed
    or earlier result (False: the command checks its own folder, or resumes a run there). ``unset``: the folder the
    command writes when --out is not given."""
    parser.add_argument("--out", required=required, default=default, help=help)
    if refuse_existing:
        parser.set_defaults(refuse_existing_out=unset or _no_folder)


def _no_folder(args: argparse.Namespace) -> None:
    return None


def refuse_existing_out(args: argparse.Namespace) -> None:
    """Refuse an existing, non-empty --out folder of a command declared with ``refuse_existing`` (see out_option)."""
    unset = getattr(args, "refuse_existing_out", None)
    if unset is None:
        return
    folder = args.out if args.out is not None else unset(args)
    if folder is None or getattr(args, "overwrite", False):
        return
    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"--out {folder} already exists and is not empty; "
            "pass --overwrite to replace what this command writes there, or choose a new folder"
        )


def folder_code_option(parser: argparse.ArgumentParser, *, task: bool = True) -> None:
    """--task / --trust-task-code for a command that loads folders: a folder may name a ``package.module:attr`` task
    (or bank key function), which loading imports only if the user names it here (--task) or trusts the folders
    (--trust-task-code); registered tasks and entry points need neither (docs/errors.md). ``task``: False where the
    command already takes --task (it names the folder's task too)."""
    if task:
        parser.add_argument(
            "--task",
            type=task_spec,
            default=None,
            help="the folder's task, if it names package.module:attr code (allows loading it)",
        )
    parser.add_argument(
        "--trust-task-code",
        action="store_true",
        help="import whatever package.module:attr code the folders name (task, bank key function)",
    )


def folder_code_allowed(args: argparse.Namespace):
    """The block :func:`main` runs a command in: the folder code the user named (--task) or trusted is allowed."""
    from ..specs import allow_folder_code

    named = [args.task] if isinstance(getattr(args, "task", None), str) else []
    return allow_folder_code(*named, every=bool(getattr(args, "trust_task_code", False)))


def calibration_options(parser: argparse.ArgumentParser) -> None:
    """How the router is calibrated (demo, assemble-pipeline): --n-calibrate, --epsilon, --delta,
    --target-compliance, --method (fiancee.assemble.check_calibration_args checks them together)."""
    parser.add_argument(
        "--n-calibrate", type=int, default=1000, help="held-out inputs the router is calibrated on (default 1000)"
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=0.05,
        help="guarantee: at most this share of outputs miss the threshold (default 0.05)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=0.1,
        help="guarantee: ... with probability >= 1 - delta over the calibration draw (default 0.1)",
    )
    parser.add_argument(
        "--target-compliance",
        type=float,
        default=None,
        help="fit the router for this average compliance instead of the guarantee (split-conformal margins)",
    )
    choice_option(
        parser,
        "--method",
        names=guarantee_methods,
        default="ltt",
        help="the guarantee's calibration: ltt (Learn-then-Test, default), ucb (upper confidence bound; "
        "both with probability >= 1 - delta), crc (Conformal Risk Control: expected miss rate <= "
        "epsilon); docs/guarantee.md",
    )


def overwrite_option(parser: argparse.ArgumentParser, help: str = WRITE_INTO) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def seed_option(parser: argparse.ArgumentParser, *, default: int | None = 0, help: str | None = None) -> None:
    parser.add_argument("--seed", type=int, default=default, help=help)


def device_option(parser: argparse.ArgumentParser, *, default: str | None = "cpu", help: str | None = None) -> None:
    """--device: cpu by default; train-exits picks cuda when available (default None)."""
    parser.add_argument("--device", default=default, help=help)


def n_option(parser: argparse.ArgumentParser, default: int | None, help: str | None = None) -> None:
    parser.add_argument("--n", type=int, default=default, help=help)


def progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true")


def json_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """--json: print the result as JSON instead of a table."""
    parser.add_argument("--json", action="store_true", help=help)


def no_fid_option(parser: argparse.ArgumentParser, help: str = NO_FID) -> None:
    parser.add_argument("--no-fid", action="store_true", help=help)


def data_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--data", default=None, help=help)


def weights_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--weights", default=None, help=help)


def preset_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    choice_option(parser, "--preset", names=presets, default="quick", help=help)


def size_option(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    choice_option(parser, "--size", names=backbone_sizes, default=default, help=help)


def head_option(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A predictor head (train-predictor --arch, bench --predictor); default: the one train-predictor trains."""
    choice_option(parser, flag, names=predictor_heads, default=None, help=help)


def floats(text: str, flag: str) -> list[float]:
    """A comma-separated list of numbers (--thresholds, --epsilons)."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers like 0.05,0.1; got {text!r}") from None
