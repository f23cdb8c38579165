"""Result files: one committed JSON per measurement, stamped with where it came from.

Every figure the documents state (README.md, BENCHMARKS.md, docs/*.md) is read from a result file
(``results/<name>.json``) or a bench report (``benchmarks/*.json``); ``tools/docs.py`` writes the tables
and inline figures from them, and ``tests/test_docs_results.py`` keeps the two in agreement.

A result file::

    kind "fiancee-result", format 1, name   (the header of every fiancee folder and report; results written
                 before say format_version 1 and are read as they are, fiancee.core.folders)
    source       "measured" (made by ``record`` below) or "transcribed" (copied once from a document,
                 for runs no longer present; ``note`` says why it cannot be regenerated here)
    command      the fiancee command that made it (a list for a sweep of several)
    commit       git commit of the checkout it ran from; ``dirty``: files under src/ that differed
    machine      CPU model, cores, memory, platform, Python, torch; load average at start and end
    date         UTC, ISO 8601; ``seconds``: wall time of the command
    artifacts    {name: fingerprint} of the committed artifacts it measured (``ARTIFACTS``); a result
                 whose fingerprint is not the committed artifact's is stale
    earlier_artifacts  {name: fingerprint} of artifacts it measured that are no longer committed
                 (transcribed history; the documents present it as such)
    data         what the command wrote (its JSON report, or what it printed)

Record one by running the command through this module (it runs in this process, with stdout shown)::

    python -m fiancee.results record results/exits_faces.json -- \\
        fiancee evaluate-exits src/fiancee/weights/faces/exits --n 1000 --no-fid --json --out /tmp/exits_faces

``python -m fiancee.results check [FILE...]`` lists stale results (exit 1 when there are any).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .core.folders import RESULT, UPSCALE, header, make_header
from .core.source import git_commit
from .io import loads_strict, write_json
from .timing import cpu_name, load_average

__all__ = [
    "KIND",
    "FORMAT",
    "FORMAT_VERSION",
    "ARTIFACTS",
    "artifact_fingerprint",
    "committed_fingerprints",
    "machine",
    "git_commit",
    "stamp",
    "record",
    "load_result",
    "load_results",
    "stale",
    "main",
]

KIND = RESULT
FORMAT = 1
FORMAT_VERSION = FORMAT  # the name before every file's version was its header's "format"

# The committed artifacts a result can measure, named "<task>/<part>" after the folders of fiancee/weights:
# "<task>/exits" (an exit run: the fingerprint of its latest checkpoint's branches), "<task>/<file>" for a
# weights file "<file>.safetensors" (the fingerprint its manifest records: weights/<task>/config.json's
# "fingerprint" is backbone.safetensors'), and "<task>/backbone" for a task whose backbone is not a file here
# (read from a pinned package at run time: the fingerprint of the state dict the task loads). Fingerprints are
# fiancee's own (``io.tensor_fingerprint`` over names, shapes, dtypes and values).
_WEIGHTS = Path(__file__).resolve().parent / "weights"


def _tasks_with_weights() -> list[str]:
    return sorted(p.name for p in _WEIGHTS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def _artifact_names() -> list[str]:
    names = []
    for task in _tasks_with_weights():
        folder = _WEIGHTS / task
        names += [f"{task}/{f.stem}" for f in sorted(folder.glob("*.safetensors"))]
        if (folder / "exits" / "latest.json").is_file():
            names.append(f"{task}/exits")
        if (folder / "pipeline" / "config.json").is_file():
            names.append(f"{task}/pipeline")
        if f"{task}/backbone" not in names:
            names.append(f"{task}/backbone")
    return sorted(names)


class _Artifacts(dict):
    """``ARTIFACTS``: name -> a function giving its fingerprint (listed from fiancee/weights when first read)."""

    def _fill(self) -> None:
        if not dict.__len__(self):
            for name in _artifact_names():
                dict.__setitem__(self, name, lambda name=name: _fingerprint(name))

    def __contains__(self, key) -> bool:
        self._fill()
        return dict.__contains__(self, key)

    def __getitem__(self, key):
        self._fill()
        return dict.__getitem__(self, key)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._fill()
        return dict.__len__(self)

    def keys(self):
        self._fill()
        return dict.keys(self)


ARTIFACTS: dict[str, Callable[[], str]] = _Artifacts()


def _fingerprint(name: str) -> str:
    from .io import load_tensors, read_json, resolve_inside, tensor_fingerprint

    task, part = name.split("/", 1)
    folder = _WEIGHTS / task
    if part == "exits":
        run = folder / "exits"
        latest = read_json(run / "latest.json", required=("dir",))
        return tensor_fingerprint(
            load_tensors(resolve_inside(run, latest["dir"], "checkpoint") / "branches.safetensors")
        )
    if part == "pipeline":  # what decides its outputs: the branches, the router, the predictor's weights
        config = read_json(folder / "pipeline" / "config.json")
        predictor = load_tensors(resolve_inside(folder / "pipeline", "predictor") / "weights.safetensors")
        recorded = [config.get("branches_fingerprint"), config.get("router"), tensor_fingerprint(predictor)]
        return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]
    if (folder / f"{part}.safetensors").is_file():
        return tensor_fingerprint(load_tensors(folder / f"{part}.safetensors"))
    if part == "backbone":  # not committed here: the weights the task reads from its pinned package
        from .tasks.registry import resolve_folder_task

        # a folder's name: a registered task or an entry point, never code by module:attr
        return tensor_fingerprint(resolve_folder_task(task, folder).load_backbone().state_dict())
    raise ValueError(f"no artifact {name!r}")


def artifact_fingerprint(name: str) -> str:
    """The fingerprint of the committed artifact ``name`` (a key of ``ARTIFACTS``)."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(sorted(ARTIFACTS))}")
    return ARTIFACTS[name]()


def committed_fingerprints(names: Iterable[str] | None = None) -> dict[str, str]:
    return {n: artifact_fingerprint(n) for n in (sorted(ARTIFACTS) if names is None else names)}


# ----------------------------------------------------------------------------------------------
# Provenance


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def machine() -> dict:
    """The machine a measurement ran on: CPU model, cores, memory, platform, Python, torch, threads."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def stamp(
    name: str,
    command: str | list[str],
    data: Any,
    *,
    artifacts: Iterable[str] = (),
    source: str = "measured",
    note: str | None = None,
    seconds: float | None = None,
    load: dict | None = None,
) -> dict:
    """A result file's dictionary: ``data`` with the command, commit, machine, date and the fingerprints of
    the committed ``artifacts`` it measured."""
    if source not in ("measured", "transcribed"):
        raise ValueError(f"source must be 'measured' or 'transcribed'; got {source!r}")
    result = {
        **make_header(KIND, FORMAT),
        "name": name,
        "source": source,
        "command": command,
        **git_commit(),
        "machine": {**machine(), **({"load_average": load} if load else {})},
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "seconds": None if seconds is None else round(seconds, 1),
        "artifacts": committed_fingerprints(sorted(set(artifacts))),
    }
    if note:
        result["note"] = note
    result["data"] = data
    return result


# ----------------------------------------------------------------------------------------------
# Recording a command


def _flag(argv: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# What a command writes under --out that holds its figures (besides what it prints as JSON).
_SUMMARY_KINDS = (UPSCALE,)  # output folders whose summary.json a result keeps, under "summary"
_OUT_FILES = {
    "demo": {
        "report": "report/report.json",
        "predictor_error": "predictor/error.json",
        "predictor_config": "predictor/config.json",
    },
    "evaluate-exits": {"exits": "exits.json"},
    "evaluate": {"report": "report.json"},
    "train-predictor": {"predictor_error": "error.json", "predictor_config": "config.json"},
    "exit-quality": {"exit_quality": "exit_quality.json", "ablation": "ablation.json"},  # ablation: --bank-ablation
    "bank-distance": {"bank_distance": "bank_distance.json"},
    "assemble-pipeline": {"pipeline_config": "config.json"},
}


def _printed_json(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return loads_strict(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):  # the last line that is JSON (a command that prints a summary)
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return loads_strict(line)
            except ValueError:
                continue
    return None


def _drop_per_item(obj: Any) -> Any:
    """Keep summaries, drop per-input arrays (a result file stays a few kB)."""
    if isinstance(obj, dict):
        return {k: _drop_per_item(v) for k, v in obj.items() if k not in ("per_image_lpips", "per_input", "examples")}
    if isinstance(obj, list):
        return [_drop_per_item(v) for v in obj]
    return obj


def _measured_artifacts(argv: Sequence[str]) -> set[str]:
    """The committed artifacts a fiancee command reads, from its parsed arguments: the backbone of its task,
    a committed exit run it names (or the one the demo uses by default), the task's classifier where label
    accuracy is measured."""
    from .cli import build_parser

    args = build_parser().parse_args(list(argv))
    names: set[str] = set()
    task = getattr(args, "task", None) or (getattr(args, "backbone", None) if args.command == "bench" else None)
    runs = [getattr(args, k, None) for k in ("run", "exits", "nobank_run", "bank_run")] + list(
        getattr(args, "runs", None) or []
    )
    for run in (r for r in runs if r):
        path = Path(run).resolve()
        for t in _tasks_with_weights():
            if path == (_WEIGHTS / t / "exits").resolve():
                names.add(f"{t}/exits")
                task = task or t
        if task is None and (path / "config.json").is_file():
            try:
                task = json.loads((path / "config.json").read_text()).get("task")
            except (OSError, ValueError):
                pass
    if args.command == "demo" and args.exits is None and not args.retrain and (_WEIGHTS / str(task) / "exits").is_dir():
        names.add(f"{task}/exits")
    if (
        args.command == "demo"
        and args.exits is None
        and not args.retrain
        and (_WEIGHTS / str(task) / "pipeline").is_dir()
    ):
        names.add(f"{task}/pipeline")  # measured when calibrated as the demo asks (demo._shipped_pipeline)
    pipeline = getattr(args, "pipeline", None)
    for t in _tasks_with_weights() if pipeline else ():
        if Path(pipeline).resolve() == (_WEIGHTS / t / "pipeline").resolve():
            names |= {f"{t}/pipeline", f"{t}/exits", f"{t}/backbone"}
    if task in _tasks_with_weights() or f"{task}/backbone" in ARTIFACTS:
        if getattr(args, "weights", None) is None:  # another backbone folder is not the committed one
            names.add(f"{task}/backbone")
    if args.command in ("evaluate-backbone", "exit-quality") and f"{task}/classifier" in ARTIFACTS:
        names.add(f"{task}/classifier")
    return {n for n in names if n in ARTIFACTS}


def record(
    path: str | os.PathLike,
    argv: Sequence[str],
    *,
    name: str | None = None,
    note: str | None = None,
    artifacts: Iterable[str] | None = None,
    run: Callable[[Sequence[str]], int] | None = None,
) -> dict:
    """Run ``fiancee ARGV`` in this process (stdout shown and kept), collect its figures and write the
    result file ``path``. ``artifacts``: the committed artifacts it measured (default: read from the command)."""
    argv = list(argv)
    if not argv:
        raise ValueError("give the command to run after --, e.g. -- fiancee macs --backbone oasis --json")
    if argv[0] != "fiancee":
        return _record_script(path, argv, name=name, note=note, artifacts=artifacts or ())
    argv = argv[1:]
    if run is None:
        from .cli import main as run
    buffer = io.StringIO()

    class _Tee(io.TextIOBase):
        def write(self, s: str) -> int:
            buffer.write(s)
            return sys.__stdout__.write(s)

        def flush(self) -> None:
            sys.__stdout__.flush()

    load_start = load_average()
    start = time.perf_counter()
    with contextlib.redirect_stdout(_Tee()):
        code = run(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"fiancee {shlex.join(argv)} exited with {code}; no result written")
    printed = buffer.getvalue()
    data: dict[str, Any] = {}
    parsed = _printed_json(printed)
    if parsed is not None:
        data["printed"] = parsed
    elif argv[0] == "lpips":
        data["printed"] = float(printed.strip().splitlines()[-1])
    out = _flag(argv, "--out")
    if out is not None:
        for key, rel in _OUT_FILES.get(argv[0], {}).items():
            f = Path(out) / rel
            if f.is_file():
                data[key] = loads_strict(f.read_text())
        summary = Path(out) / "summary.json"  # an output folder's summary (fiancee upscale), known by its kind
        if summary.is_file():
            obj = loads_strict(summary.read_text())
            if header(obj)[0] in _SUMMARY_KINDS:
                data["summary"] = obj
        if len(data) > 1:  # what it printed is what it wrote (evaluate-exits --json): keep the files
            data.pop("printed", None)
    result = stamp(
        name or Path(path).stem,
        "fiancee " + shlex.join(argv),
        checkout_relative(_drop_per_item(data)),
        artifacts=_measured_artifacts(argv) if artifacts is None else artifacts,
        note=note,
        seconds=seconds,
        load={"start": load_start, "end": load_average()},
    )
    write_json(path, result)
    return result


_CHECKOUT = Path(__file__).resolve().parents[2]


def checkout_relative(obj: Any, root: Path = _CHECKOUT) -> Any:
    """``obj`` with every string naming a path under the checkout made relative to it: a committed result
    never carries where the checkout lay on the machine that measured it (a demo's report records the run
    it used, e.g. the shipped ``src/fiancee/weights/faces/exits``)."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str):
        return obj[len(prefix) :] if obj.startswith(prefix) else obj
    if isinstance(obj, dict):
        return {k: checkout_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [checkout_relative(v, root) for v in obj]
    return obj


def _record_script(path, argv: Sequence[str], *, name: str | None, note: str | None, artifacts: Iterable[str]) -> dict:
    """Another command (``python -c ...`` measuring what no fiancee command prints): run it, keep the JSON it prints."""
    load_start = load_average()
    start = time.perf_counter()
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}; no result written")
    parsed = _printed_json(proc.stdout)
    if parsed is None:
        raise ValueError(f"{shlex.join(argv)} printed no JSON; a result needs it")
    result = stamp(
        name or Path(path).stem,
        shlex.join(argv),
        {"printed": parsed},
        artifacts=artifacts,
        note=note,
        seconds=seconds,
        load={"start": load_start, "end": load_average()},
    )
    write_json(path, result)
    return result


# ----------------------------------------------------------------------------------------------
# Reading and checking


def load_result(path: str | os.PathLike) -> dict:
    obj = loads_strict(Path(path).read_text())
    kind, version = header(obj)  # the committed results keep their old header (format_version): read as they are
    if kind != KIND:
        raise ValueError(
            f"{path}: not a fiancee result file (kind {obj.get('kind') if isinstance(obj, dict) else None!r})"
        )
    if version != FORMAT:
        raise ValueError(f"{path}: result format {version!r}; this fiancee reads format {FORMAT}")
    missing = [
        k for k in ("name", "source", "command", "commit", "machine", "date", "artifacts", "data") if k not in obj
    ]
    if missing:
        raise ValueError(f"{path}: a result file needs {', '.join(missing)}")
    return obj


def load_results(folder: str | os.PathLike) -> dict[str, dict]:
    """Every ``*.json`` of ``folder`` by name (its file stem)."""
    return {p.stem: load_result(p) for p in sorted(Path(folder).glob("*.json"))}


def stale(results: dict[str, dict], committed: dict[str, str] | None = None) -> list[str]:
    """One line per artifact fingerprint of ``results`` that is not the committed artifact's."""
    names = sorted({a for r in results.values() for a in r["artifacts"]})
    unknown = [n for n in names if n not in ARTIFACTS]
    if committed is None:
        committed = committed_fingerprints([n for n in names if n in ARTIFACTS])
    lines = [
        f"{key}: measured {name} {fp}, but the committed {name} is {committed.get(name)}"
        for key, r in sorted(results.items())
        for name, fp in sorted(r["artifacts"].items())
        if name in committed and fp != committed[name]
    ]
    lines += [
        f"{key}: unknown artifact {name!r}"
        for key, r in sorted(results.items())
        for name in r["artifacts"]
        if name in unknown
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(prog="python -m fiancee.results", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("record", help="run a fiancee command (after --) and write its result file")
    p.add_argument("path", help="result file to write, e.g. results/exits_faces.json")
    p.add_argument("--note", default=None)
    p.add_argument(
        "--artifact",
        action="append",
        default=None,
        help="a committed artifact it measured (repeatable; default: read from the command)",
    )
    p = sub.add_parser("check", help="list result files whose artifact fingerprint is not the committed one")
    p.add_argument("paths", nargs="*", default=["results"])
    p = sub.add_parser("fingerprints", help="print the committed artifacts' fingerprints")
    args = parser.parse_args(argv)
    if args.action == "record":
        record(args.path, command, note=args.note, artifacts=args.artifact)
        print(f"result: {args.path}")
        return 0
    if args.action == "fingerprints":
        print(json.dumps(committed_fingerprints(), indent=2))
        return 0
    results: dict[str, dict] = {}
    for p in args.paths:
        path = Path(p)
        results.update(load_results(path) if path.is_dir() else {path.stem: load_result(path)})
    lines = stale(results)
    print("\n".join(lines) if lines else f"{len(results)} result files, none stale")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
