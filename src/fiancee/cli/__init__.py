"""The ``fiancee`` command line. It only parses: each subcommand calls one library function.

One module per command family: its ``register(subparsers)`` adds the commands, each with its ``run_...`` function
as ``func``; arguments several commands share are declared once in :mod:`fiancee.cli._args`. A new command is a new
module listed in :data:`COMMANDS`.

Errors a user can cause (bad arguments, missing files, wrong shapes) print one line and exit 2 (:func:`main`).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Sequence

from . import backbone, bank, bench, exits, export, measure, pipeline, predictor, serve, studies, task
from ._args import folder_code_allowed, refuse_existing_out

__all__ = ["main", "build_parser"]

# In the order `fiancee --help` lists them.
COMMANDS = (measure, backbone, exits, task, predictor, pipeline, bank, studies, bench, export, serve)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its one-line style
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="fiancee",
        description="Conditional early exits for trained image generators.",
        epilog="`fiancee COMMAND --help` shows a command's options and a worked example.",
    )
    parser.add_argument("--version", action="version", version=f"fiancee {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `fiancee` alone: the list of commands
        parser.print_help()
        return 0
    try:
        refuse_existing_out(args)
        with folder_code_allowed(args):
            return args.func(args)
    except KeyboardInterrupt:
        print(f"fiancee {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ImportError, *_USER_ERRORS, KeyError) as e:
        # What a user can cause (bad arguments, missing or corrupt files, wrong shapes, a missing optional
        # package): one line, exit 2. FIANCEE_DEBUG=1 shows the traceback instead, for bug reports.
        if os.environ.get("FIANCEE_DEBUG"):
            raise
        print(f"fiancee {args.command}: error: {_error_line(e)}", file=sys.stderr)
        return 2


_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ArithmeticError, MemoryError)


def _error_line(e: Exception) -> str:
    """The one line main prints for ``e``."""
    if isinstance(e, ImportError):
        # A missing optional package (matplotlib, FAISS): the line names the extra that installs it.
        from ..extras import MissingDependency, install_hint

        hint = None if isinstance(e, MissingDependency) else install_hint(e.name)
        return _one_line(e) + (f": {hint}" if hint else "")
    if isinstance(e, KeyError) and not isinstance(e, _USER_ERRORS):
        # a file lacking an entry its reader needs (the readers name most of them first)
        return f"missing key {e} in a config or checkpoint"
    return _one_line(e)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())  # third-party messages (FAISS, torch) can span lines
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.strerror}: {e.filename}"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        text = (
            f"no space left on the device writing {e.filename or 'a file'}; nothing was half-written "
            "(free space and retry)"
        )
    elif isinstance(e, MemoryError):
        text = "out of memory: " + (text or "the request is larger than this machine can hold")
    elif isinstance(e, OverflowError):
        text = "a number is too large: " + text
    elif type(e).__name__ == "DecompressionBombError":  # PIL: an image far larger than its file
        text = "refusing to decode an image that large (decompression bomb?): " + text
    if len(text) > _MAX_ERROR:  # a third-party message may embed a whole tensor
        text = text[: _MAX_ERROR - 30].rstrip() + f" ... ({len(text)} characters)"
    return text or type(e).__name__


_MAX_ERROR = 600
