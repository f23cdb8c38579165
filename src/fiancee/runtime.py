"""Run an exported pipeline (``fiancee export``) with ONNX Runtime, without PyTorch.

Needs numpy and onnxruntime (``pip install 'fiancee[runtime]'``, which also brings ``onnx`` for the load-time
check below), and faiss when the pipeline has a bank. This module imports nothing that imports torch.

    from fiancee.runtime import OnnxPipeline

    pipe = OnnxPipeline("out/demo/onnx")
    out = pipe(z, max_lpips=0.1)      # z: numpy float32 [B, 100]
    out.images, out.routes, out.predicted_lpips, out.macs

``__call__`` does what :meth:`fiancee.pipeline.FianceePipeline.__call__` does (docs/pipeline.md): the trunk
once (stem, stages up to the key stage, the predictor, the bank's queries), the bank search and the guide,
the router (the manifest's router config run by its kind's numpy rule, :mod:`fiancee.core.routers`: the rule
:mod:`fiancee.routing` runs in torch, same ties), then the mixed batch as a tree exactly as
:meth:`fiancee.exits.ExitGenerator.mixed`: a stage runs only on the inputs still on the backbone past it, a
branch only on its own inputs. The rules this shares with the PyTorch side (routing, config checks, the FAISS
search and its cost, index checks, path confinement, strict JSON, the manifest's constants) are
:mod:`fiancee.core`'s, imported here, never copied.

Loading reads only files inside the folder (every name in the manifest is checked to stay inside it),
checks every file's sha256 against the manifest (a folder mixed from two exports is refused), and refuses
ONNX graphs with external data (they would read files the manifest does not name). Nothing loaded runs code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .core.files import file_sha256, resolve_inside
from .core.folders import check_header
from .core.jsonio import read_json
from .core.manifest import FIELDS, FORMAT, KIND
from .core.numbers import finite
from .core.renames import UNSET, renamed, warn_renamed
from .core.routers import check_router_config, route_numpy
from .core.rules import check_thresholds, threshold_groups
from .core.search import read_index, search_classes

__all__ = ["FORMAT", "KIND", "OnnxPipeline", "OnnxOutput", "route_numpy"]


@dataclass
class OnnxOutput:
    images: np.ndarray  # [B, C, H, W] float32 in [-1, 1]
    routes: np.ndarray  # [B] int64 route per input (0-based; E = the backbone)
    predicted_lpips: np.ndarray  # [B, E] float32
    macs: np.ndarray  # [B] float64: route + predictor + bank search

    @property
    def exits(self) -> np.ndarray:
        """Deprecated name of :attr:`routes` (removed in the next release)."""
        warn_renamed("OnnxOutput", "exits", "routes")
        return self.routes


def _require(module: str, purpose: str):
    from .extras import require  # importlib only: torch-free like this module

    return require(module, purpose)


def _file_inside(folder: Path, entry, what: str) -> Path:
    """``folder / entry``, confined to the folder (:func:`fiancee.core.files.resolve_inside`) and present."""
    target = resolve_inside(folder, entry, what)
    if not target.is_file():
        raise FileNotFoundError(f"{folder}: {what} {entry!r} is missing (an incomplete export?)")
    return target


def _check_router(config, num_routes: int, source: Path) -> dict:
    try:
        return check_router_config(config, num_routes)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _read_manifest(folder: Path) -> tuple[dict, Path]:
    """The export's manifest and its path, refused unless it is a fiancee ONNX export of this format with every
    field :mod:`fiancee.core.manifest` lists."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no exported pipeline at {folder} (make one with `fiancee export PIPELINE --out {folder}`)"
        )
    source = folder / "manifest.json"
    if not source.is_file():
        raise FileNotFoundError(f"{folder} has no manifest.json: not a fiancee ONNX export (`fiancee export`)")
    # An export written before the one folder header (kind "fiancee_onnx", field "exits") reads as this format.
    m = check_header(
        read_json(_file_inside(folder, "manifest.json", "manifest")),
        kind=KIND,
        version=FORMAT,
        what="fiancee ONNX export",
        source=source,
        hint=" (export it again with this version's `fiancee export`)",
    )
    for key in FIELDS:
        if key not in m:
            raise ValueError(f"{source}: missing field {key!r}")
    return m, source


def _checked_files(folder: Path, files, source: Path) -> dict:
    """The manifest's ``files`` (name -> sha256), every one present inside the folder and unchanged."""
    if not isinstance(files, dict):
        raise ValueError(f"{source}: field 'files' must map file names to sha256")
    for name, digest in files.items():  # every file the export wrote, unchanged: nothing mixed from two exports
        if file_sha256(_file_inside(folder, name, "file")) != digest:
            raise ValueError(
                f"{folder}/{name} is not the file this manifest was written with (a folder mixed from "
                "two exports, or a modified file); export again"
            )
    return files


def session_options(ort, threads: int | None):
    """The ``SessionOptions`` every segment opens with: ONNX Runtime's defaults, or with ``threads`` a pool of that
    many intra-op threads, one inter-op thread, sequential execution and no spinning."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Segments run one after another from Python (stages, branches, numpy in between): idle workers that
        # spin would burn the very cores the caller and the next segment need, so they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class _Sessions:
    """Opens the export's segments as ONNX Runtime sessions: only files the manifest lists, none with external
    data; ``takes`` records the inputs each session reads (the tracer drops the ones a segment never reads)."""

    def __init__(self, ort, folder: Path, source: Path, files: dict, threads: int | None, providers: list[str] | None):
        self.ort, self.folder, self.source, self.files = ort, folder, source, files
        self.options = session_options(ort, threads)
        self.providers = providers or ["CPUExecutionProvider"]
        self.takes: dict[int, list[str]] = {}

    def __call__(self, file: str):
        if file not in self.files:
            raise ValueError(f"{self.source}: segment file {file!r} is not among the files the manifest lists")
        path = _file_inside(self.folder, file, "segment file")
        data = path.read_bytes()
        _refuse_external_data(data, path)
        sess = self.ort.InferenceSession(data, sess_options=self.options, providers=self.providers)
        self.takes[id(sess)] = [i.name for i in sess.get_inputs()]
        return sess


# ----------------------------------------------------------------------------------------------
# The pipeline


class OnnxPipeline:
    """An exported pipeline folder, run with ONNX Runtime (CPU unless ``providers`` says otherwise).

    ``threads``: intra-op threads of every session (and of FAISS), None for ONNX Runtime's default.
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None):
        self.folder = folder = Path(folder)
        m, source = _read_manifest(folder)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
        self.manifest = m
        self._read_routes(m, source)
        files = _checked_files(folder, m["files"], source)

        ort = _require("onnxruntime", "fiancee.runtime")
        self._threads = threads
        session = _Sessions(ort, folder, source, files, threads, providers)
        self._takes: dict[int, list[str]] = session.takes
        seg = {s.get("name"): s for s in m["segments"] if isinstance(s, dict)}
        self._open_segments(seg, source, session)
        self.bank = m.get("bank")
        self._guide = None
        self._indexes = {}
        if self.bank is not None:
            self._open_bank(seg, source, session, threads)

    @property
    def threads(self) -> int | None:
        """The intra-op threads of every session (None: ONNX Runtime's default)."""
        return self._threads

    @property
    def exits(self) -> list[int]:
        """Deprecated name of :attr:`attach_after` (removed in the next release)."""
        warn_renamed("OnnxPipeline", "exits", "attach_after")
        return self.attach_after

    def _read_routes(self, m: dict, source: Path) -> None:
        """The routes (the stages exits attach after, stages, MACs), the router and the input declarations,
        checked."""
        self.attach_after = [int(e) for e in m["attach_after"]]
        self.num_routes = len(self.attach_after) + 1
        self.key_stage, self.num_stages = int(m["key_stage"]), int(m["num_stages"])
        if len(m["route_macs"]) != self.num_routes or not all(finite(v) for v in m["route_macs"]):
            raise ValueError(f"{source}: route_macs must hold {self.num_routes} numbers (the exits, then the backbone)")
        self.route_macs = np.asarray(m["route_macs"], dtype=np.float64)
        self.predictor_macs = float(m["predictor_macs"])
        self.router = _check_router(m["router"], self.num_routes, source)
        self.inputs = m["inputs"]
        if not isinstance(self.inputs, list) or not all(
            isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("shape"), list)
            for d in self.inputs
        ):
            raise ValueError(f"{source}: field 'inputs' must list the task's inputs with name and shape")

    def _open_segments(self, seg: dict, source: Path, session) -> None:
        """The trunk, the stages past the key stage, every branch and the head: each must be in 'segments'."""
        need = (
            ["trunk", "head"]
            + [f"stage {s}" for s in range(self.key_stage + 1, self.num_stages + 1)]
            + [f"branch {r}" for r in range(len(self.attach_after))]
        )
        for name in need:
            if name not in seg:
                raise ValueError(f"{source}: segment {name!r} is missing from 'segments'")
        self._trunk = session(seg["trunk"]["file"])
        self._trunk_outputs = [o.name for o in self._trunk.get_outputs()]
        self._stages = {s: session(seg[f"stage {s}"]["file"]) for s in range(self.key_stage + 1, self.num_stages + 1)}
        self._branches = [session(seg[f"branch {r}"]["file"]) for r in range(len(self.attach_after))]
        self._head = session(seg["head"]["file"])
        self.has_cond = "cond" in self._trunk_outputs

    def _open_bank(self, seg: dict, source: Path, session, threads: int | None) -> None:
        """The bank's guide segment, its FAISS indexes (checked as :func:`fiancee.core.search.read_index` does)
        and where each class's entries start in the bank."""
        if "guide" not in seg:
            raise ValueError(f"{source}: the bank's 'guide' segment is missing")
        self._guide = session(seg["guide"]["file"])
        self._faiss = _require("faiss", "an exported pipeline with a feature bank")
        if threads is not None:
            self._faiss.omp_set_num_threads(threads)
        d = int(self.bank["key_dim"])
        for key, entry in self.bank["indexes"].items():
            path = _file_inside(self.folder, entry["file"], "bank index")
            index = read_index(self._faiss, path, int(entry["ntotal"]), d)
            self._indexes[key if key == "all" else int(key)] = index
        self._offsets, start = {}, 0
        for c, n in sorted((int(c), int(n)) for c, n in self.bank["per_class_counts"].items()):
            self._offsets[c] = start
            start += n

    # -- inputs -------------------------------------------------------------------------------
    def _check_inputs(self, inputs) -> int:
        decl = self.inputs
        names = ", ".join(f"{d['name']} [B, {', '.join(map(str, d['shape']))}]" for d in decl)
        if len(inputs) != len(decl):
            raise ValueError(f"expected {len(decl)} input(s): {names} (float32 numpy arrays); got {len(inputs)}")
        batch = None
        for x, d in zip(inputs, decl):
            want = f"{d['name']} must be a float32 numpy array [B, {', '.join(map(str, d['shape']))}]"
            if not isinstance(x, np.ndarray):
                raise ValueError(f"{want}; got {type(x).__name__}")
            if (
                x.dtype != np.float32
                or x.ndim != len(d["shape"]) + 1
                or list(x.shape[1:]) != d["shape"]
                or x.shape[0] < 1
            ):
                raise ValueError(f"{want}; got {x.dtype} {list(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"inputs disagree on the batch size: {d['name']} has {x.shape[0]}, expected {batch}")
            batch = x.shape[0]
            if not np.isfinite(x).all():
                raise ValueError(f"{d['name']} holds NaN or Inf; expected finite numbers")
            if d.get("kind") == "label_map" and not (np.isin(x, (0.0, 1.0)).all() and (x.sum(axis=1) == 1).all()):
                raise ValueError(f"{d['name']} must be a one-hot label map (0 / 1, one class per pixel)")
        return batch

    # -- the call -------------------------------------------------------------------------------
    def __call__(
        self,
        *inputs: np.ndarray,
        max_lpips: float | Sequence[float] | np.ndarray,
        routes: np.ndarray | None = None,
        exits: np.ndarray | None = UNSET,
    ) -> OnnxOutput:
        """Images for ``inputs`` at quality ``max_lpips`` (as :meth:`fiancee.pipeline.FianceePipeline.__call__`: one
        threshold, or one per input); ``routes`` (one per input, 0-based) overrides the router, the predictor still
        runs and is charged. ``exits=`` is the deprecated name of ``routes=``."""
        forced = renamed("OnnxPipeline.__call__", "exits", exits, "routes", routes, default=None)
        batch = self._check_inputs(inputs)
        threshold = check_thresholds(max_lpips, batch, "max_lpips")
        if forced is not None:
            forced = np.asarray(forced)
            if (
                forced.ndim != 1
                or forced.shape[0] != batch
                or not np.issubdtype(forced.dtype, np.integer)
                or forced.min() < 0
                or forced.max() >= self.num_routes
            ):
                raise ValueError(f"routes must be {batch} integers in 0..{self.num_routes - 1}; got {forced!r}")
            forced = forced.astype(np.int64)
        feeds = {f"input{i}": x for i, x in enumerate(inputs)}
        out = dict(zip(self._trunk_outputs, self._trunk.run(None, feeds)))
        h, cond, predicted = out["h"], out.get("cond"), out["predicted_lpips"]
        bank_macs = np.zeros(batch, dtype=np.float64)
        guide = None
        if self.bank is not None:
            ids, bank_macs = self._search(out["query_keys"], out.get("query_classes"))
            guide = self._guide.run(None, {"ids": ids})[0]
        routes = self._route(predicted, threshold) if forced is None else forced
        images = self._tree(h, cond, routes, guide)
        macs = self.route_macs[routes] + self.predictor_macs + bank_macs
        return OnnxOutput(images=images, routes=routes, predicted_lpips=predicted, macs=macs)

    def _route(self, predicted: np.ndarray, threshold) -> np.ndarray:
        """The router's routes ``[B]`` at one threshold, or group by group at one threshold per input (as
        :meth:`fiancee.pipeline.FianceePipeline._route`)."""
        if isinstance(threshold, float):
            return route_numpy(self.router, predicted, threshold)
        routes = np.empty(predicted.shape[0], dtype=np.int64)
        for t, rows in threshold_groups(threshold):
            routes[rows] = route_numpy(self.router, predicted[rows], t)
        return routes

    def _run(self, sess, h, cond, guide=None) -> np.ndarray:
        # A segment that never reads the condition (an OASIS head) was exported without that input.
        given = {"h": h, "cond": cond, "guide": guide}
        return sess.run(None, {name: given[name] for name in self._takes[id(sess)]})[0]

    def _tree(self, h, cond, routes: np.ndarray, guide) -> np.ndarray:
        """:meth:`fiancee.exits.ExitGenerator._tree` from the key stage: each segment only on its own rows; a batch
        on one route runs as :meth:`_one_route` (the same values, no row copies)."""
        if routes.min() == routes.max():
            return self._one_route(h, cond, int(routes[0]), guide)
        return self._branching_tree(h, cond, routes, guide)

    def _one_route(self, h, cond, route: int, guide) -> np.ndarray:
        """Every input on ``route``: its stages and its branch (or the head) on the whole batch, as
        :meth:`fiancee.exits.ExitGenerator._one_route`; selecting every row would only copy the arrays."""
        last = self.num_stages if route == len(self.attach_after) else self.attach_after[route]
        for s in range(self.key_stage + 1, last + 1):
            h = self._run(self._stages[s], h, cond)
        if route < len(self.attach_after):
            return self._run(self._branches[route], h, cond, guide)
        return self._run(self._head, h, cond)

    def _branching_tree(self, h, cond, routes: np.ndarray, guide) -> np.ndarray:
        """The general tree: after each exit's stage its inputs leave into their branch, the rest go on."""
        batch = h.shape[0]
        alive = np.arange(batch)  # input positions of the rows of h
        out = None
        branch_at = {k: i for i, k in enumerate(self.attach_after)}
        for done in range(self.key_stage, self.num_stages):
            if done > self.key_stage:
                h = self._run(self._stages[done], h, cond)
            route = branch_at.get(done)
            if route is None:
                continue
            here = routes[alive] == route
            if here.any():
                sel = np.nonzero(here)[0]
                images = self._run(
                    self._branches[route],
                    h[sel],
                    None if cond is None else cond[sel],
                    None if guide is None else guide[sel],
                )
                if out is None:
                    out = np.empty((batch, *images.shape[1:]), dtype=images.dtype)
                out[alive[sel]] = images
                keep = np.nonzero(~here)[0]
                if keep.size == 0:
                    return out
                alive, h = alive[keep], h[keep]
                cond = None if cond is None else cond[keep]
                guide = None if guide is None else guide[keep]
        h = self._run(self._stages[self.num_stages], h, cond)
        images = self._run(self._head, h, cond)
        if out is None:
            out = np.empty((batch, *images.shape[1:]), dtype=images.dtype)
        out[alive] = images
        return out

    def _search(self, queries: np.ndarray, classes: np.ndarray | None):
        """Nearest bank entry of every query ``[B, Q]`` and the MACs of each input's search
        (:meth:`fiancee.bank.FeatureBank.search_with_macs`: per class index, the whole index for a class it
        never saw)."""
        b, q, d = queries.shape
        flat = np.ascontiguousarray(queries.reshape(b * q, d), dtype=np.float32)
        found, macs, _ = search_classes(
            self._faiss, self._indexes, self._offsets, flat, None if classes is None else classes.reshape(-1), d
        )
        return found.reshape(b, q), macs.reshape(b, q).sum(axis=1)


def _refuse_external_data(data: bytes, path: Path) -> None:
    """An ONNX graph whose tensors live in external files would read files the manifest does not name:
    refused (the exporter writes every weight inside the graph)."""
    onnx = _require("onnx", "fiancee.runtime (checking an ONNX graph before loading it)")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX graph: {e}") from None
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    if any(uses_external_data(t) for t in _get_all_tensors(model)):
        raise ValueError(
            f"{path} keeps tensors in external files; refusing to load it (export again with `fiancee export`)"
        )
