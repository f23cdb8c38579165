"""Export a pipeline folder to ONNX segments that :mod:`fiancee.runtime` runs without PyTorch.

Routing in fiancee happens outside the network (predictor -> router -> mixed-exit tree, paper section 3.2,
Fig. 1), so a routed generator exports as static pieces with a dynamic batch dimension and a small runtime
that chooses which pieces each input goes through. Tracing the whole routed model would keep one branch.

Segments (one ONNX graph each, float32, batch dimension ``B`` dynamic)::

    trunk.onnx       inputs of the task -> h (after the key stage), cond (when the generator has one),
                     predicted LPIPS [B, E], and, with a bank, its query keys [B, Q, D] and query classes [B, Q]:
                     the single trunk pass of docs/pipeline.md ("One pass through the trunk")
    stage_<s>.onnx   backbone stage s (1-based) for s = key stage + 1 .. N: (h, cond) -> h
    branch_<r>.onnx  the exit branch of route r: (h, cond, guide) -> image
    head.onnx        the backbone's head: (h, cond) -> image
    guide.onnx       with a bank: entry ids [B, Q] -> guide tensor (the bank's values baked in)
    bank/*.faiss     with a bank: its FAISS indexes (faiss.write_index), searched by the runtime
    manifest.json    format version, segment order, route table with MACs, router config, input
                     declarations, fingerprints of the source pipeline, sha256 of every file; written last

The folder is written whole (:func:`fiancee.io.atomic_folder`). Exported in eval mode: BatchNorm uses its
running statistics and spectral norm its stored singular vectors (no power iteration), as in PyTorch inference.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .core.manifest import FORMAT, KIND  # the manifest fiancee.runtime reads
from .io import atomic_folder, check_replaceable, file_sha256, tensor_fingerprint, write_json

__all__ = ["FORMAT", "KIND", "DEFAULT_OPSET", "export_pipeline"]

DEFAULT_OPSET = 17
MIN_OPSET = 13  # the legacy exporter's Resize / ArgMax forms used here need 13 or later


def _has_query_classes(bank) -> bool:
    """Whether the bank searches per class: a patch bank over a label map (each query the majority class of its
    patch), so the trunk also returns the queries' classes."""
    return bank.mode == "patch" and bank.label_channels is not None


class _Trunk(nn.Module):
    """Stem + stages 1..k once, the predictor on what it reads, and the bank's queries (pipeline.__call__)."""

    def __init__(self, pipe):
        super().__init__()
        self.model, self.predictor, self.bank = pipe.model, pipe.predictor, pipe.bank
        # The inference copy the pipeline runs (standardization folded in), made here, outside the trace:
        # the graph holds its weights as constants and no finiteness check (a host sync) is traced.
        self.head = pipe.predictor.folded()

    def forward(self, *inputs: torch.Tensor):
        from .bank import majority_labels
        from .predictor import predictor_features

        k = self.model.key_stage
        f = self.model.backbone.features(*inputs, taps=(k,))
        h, cond = f.taps[k], f.cond  # [B, C, h, w] after the key stage
        outs = [h] + ([] if cond is None else [cond])
        if self.predictor.reads_features:
            outs.append(self.head(h))  # [B, E]
        else:
            outs.append(self.head(*predictor_features(self.predictor.arch, self.model, inputs)))
        if self.bank is not None:
            outs.append(self.bank.query_keys(h).float())  # [B, Q, D]
            if _has_query_classes(self.bank):
                outs.append(majority_labels(cond[:, : self.bank.label_channels], self.bank.grid))  # [B, Q]
        return tuple(outs)


class _Piece(nn.Module):
    """A stage, branch or head called with the tensors it takes (cond / guide only when they exist)."""

    def __init__(self, module: nn.Module, has_cond: bool, has_guide: bool = False):
        super().__init__()
        self.module, self.has_cond, self.has_guide = module, has_cond, has_guide

    def forward(self, h: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        cond = rest[0] if self.has_cond else None
        if self.has_guide:
            return self.module(h, cond, rest[-1])
        return self.module(h, cond)


class _Guide(nn.Module):
    """Entry ids ``[B, Q]`` -> the guide tensor (:meth:`fiancee.bank.FeatureBank.assemble`), values baked in."""

    def __init__(self, bank):
        super().__init__()
        self.bank = bank

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bank.assemble(ids, "cpu")


def _without_parametrizations(module: nn.Module) -> nn.Module:
    """A copy whose parametrized weights (spectral norm, OASIS) are plain tensors holding what eval mode uses:
    W / sigma with the stored singular vectors, no power iteration. The parametrization's own ops cannot be
    exported (torch.vdot has no ONNX form). The bank (FAISS indexes) is shared, not copied."""
    import copy

    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in module.modules()):
        return module
    bank = getattr(module, "bank", None)
    plain = copy.deepcopy(module, {} if bank is None else {id(bank): bank})
    for m in [m for m in plain.modules() if parametrize.is_parametrized(m)]:  # listed first: this edits the tree
        # Not parametrize.remove_parametrizations: it deletes the property from the parametrized class, which
        # the copy shares with the pipeline's own module (the pipeline would lose its weights).
        values = {name: getattr(m, name).detach().clone() for name in m.parametrizations}
        del m._modules["parametrizations"]
        m.__class__ = type(m).__bases__[0]  # the class before parametrization (Conv2d, ...)
        for name, value in values.items():
            m._parameters[name] = nn.Parameter(value, requires_grad=False)
    return plain.eval()


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> list[str]:
    dynamic = {name: {0: "B"} for name in inputs + outputs}
    module = _without_parametrizations(module)
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation and traces Python checks as constants; both expected.
        warnings.simplefilter("ignore")
        # dynamo=False: torch 2.13's default exporter (torch.export) needs the onnxscript package, which a
        # deployment would not otherwise install, and exports every branch of a data-dependent check;
        # the TorchScript tracer works offline and records only the ops each segment runs.
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
    import onnx

    # The tracer drops inputs a segment never reads (an OASIS head ignores the condition): record what it takes.
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def _check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= 21:
        raise ValueError(f"--opset must be an integer in {MIN_OPSET}..21; got {opset!r}")
    return opset


def _input_declarations(pipe, examples: tuple[torch.Tensor, ...]) -> list[dict]:
    backbone = pipe.model.backbone
    if pipe.task is not None:
        from .tasks.base import declared_inputs

        specs = [(s.name, s.kind) for s in declared_inputs(pipe.task)]
    else:
        names = backbone.input_names or tuple(f"input{i}" for i in range(len(examples)))
        specs = [(n, None) for n in names]
    if len(specs) != len(examples):
        raise ValueError(
            f"the task declares {len(specs)} input(s) but the backbone's example_inputs gives {len(examples)}"
        )
    return [
        {"name": n, "kind": kind, "shape": [int(d) for d in x.shape[1:]], "dtype": "float32"}
        for (n, kind), x in zip(specs, examples)
    ]


@torch.no_grad()
def export_pipeline(pipeline, out: str | Path, *, opset: int = DEFAULT_OPSET, overwrite: bool = False) -> dict:
    """Write the ONNX folder ``out`` for ``pipeline`` (a pipeline folder or a :class:`FianceePipeline`);
    returns the manifest. Refused before any work when ``out`` holds something else, or exists without
    ``overwrite``; the folder appears whole or not at all."""
    opset = _check_opset(opset)
    out = Path(out)
    pipe, source, faiss = _load_for_export(pipeline, out, overwrite)
    model, backbone = pipe.model, pipe.model.backbone
    with torch.random.fork_rng(devices=[]):  # seeded example inputs without touching the caller's RNG
        torch.manual_seed(0)
        examples = tuple(backbone.example_inputs(2))  # batch 2: nothing specialises to B = 1
    declarations = _input_declarations(pipe, examples)
    input_names = [f"input{i}" for i in range(len(examples))]

    trunk = _Trunk(pipe).eval()
    sample = trunk(*examples)
    has_cond = backbone.features(*examples, taps=(model.key_stage,)).cond is not None
    trunk_out = _trunk_outputs(pipe.bank, has_cond)
    if len(sample) != len(trunk_out):
        raise AssertionError(f"trunk gave {len(sample)} outputs for {trunk_out}")
    h, cond = sample[0], (sample[1] if has_cond else None)
    ids = guide = None
    if pipe.bank is not None:  # the example guide the branches are traced with
        ids = pipe.bank.search(h, cond)
        guide = pipe.bank.assemble(ids, "cpu")

    with atomic_folder(out, kind=KIND, what="ONNX export", overwrite=True) as tmp:
        takes = _export(trunk, examples, tmp / "trunk.onnx", input_names, trunk_out, opset)
        segments = [{"name": "trunk", "file": "trunk.onnx", "inputs": takes, "outputs": trunk_out}]
        segments += _export_backbone(model, h, cond, guide, tmp, opset)
        bank_info = None
        if pipe.bank is not None:
            guide_segment, bank_info = _export_bank(pipe.bank, ids, guide, faiss, tmp, opset)
            segments.append(guide_segment)
        manifest = _manifest(pipe, source, examples, declarations, has_cond, segments, bank_info, opset, tmp)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _load_for_export(pipeline, out: Path, overwrite: bool) -> tuple:
    """``(pipeline, source folder or None, faiss or None)``: the pipeline loaded when given as a folder, in eval
    mode, faiss when it has a bank; every refusal (the ``out`` folder, missing packages, weights that are not
    float32 on the CPU) before any export work."""
    from .extras import require
    from .pipeline import FianceePipeline

    check_replaceable(out, KIND, "ONNX export")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise ValueError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    require("onnx", "fiancee export")  # torch.onnx needs it to write the graphs
    source = None
    if not isinstance(pipeline, FianceePipeline):
        source = Path(pipeline)
        if not source.is_dir():
            raise FileNotFoundError(
                f"no pipeline folder at {source} (make one with `fiancee demo` or FianceePipeline.save)"
            )
        pipeline = FianceePipeline.from_pretrained(source)
    faiss = None
    if pipeline.bank is not None:
        faiss = require("faiss", "exporting a pipeline with a feature bank")
    model = pipeline.model.eval()
    pipeline.predictor.eval()
    weights = {p.device.type for p in model.parameters()} | {p.dtype for p in model.parameters()}
    if weights != {"cpu", torch.float32}:
        raise ValueError(
            f"export a float32 pipeline on the CPU (the graphs are float32); this one has "
            f"{sorted(map(str, weights))} weights: load it with device='cpu'"
        )
    return pipeline, source, faiss


def _trunk_outputs(bank, has_cond: bool) -> list[str]:
    """The trunk's output names, in :meth:`_Trunk.forward`'s order."""
    names = ["h"] + (["cond"] if has_cond else []) + ["predicted_lpips"]
    if bank is not None:
        names.append("query_keys")
        if _has_query_classes(bank):
            names.append("query_classes")
    return names


def _export_backbone(
    model, h: torch.Tensor, cond: torch.Tensor | None, guide: torch.Tensor | None, tmp: Path, opset: int
) -> list[dict]:
    """The stages past the key stage, every branch and the head, traced on the trunk's example ``h`` / ``cond``;
    their segments in the manifest's order (stages, branches, head)."""
    backbone, k = model.backbone, model.key_stage
    has_cond = cond is not None
    pieces = ["h"] + (["cond"] if has_cond else [])
    cond_args = (cond,) if has_cond else ()
    segments = []
    # Backbone stages past the key stage, in order, each fed the output of the one before.
    x = h
    taps = {k: h}
    for s in range(k + 1, backbone.num_stages + 1):
        stage = _Piece(backbone.stages[s - 1], has_cond).eval()
        name = f"stage_{s}.onnx"
        takes = _export(stage, (x, *cond_args), tmp / name, pieces, ["h_out"], opset)
        segments.append({"name": f"stage {s}", "file": name, "stage": s, "inputs": takes, "outputs": ["h_out"]})
        x = stage(x, *cond_args)
        taps[s] = x
    head = _Piece(backbone.head, has_cond).eval()
    head_takes = _export(head, (x, *cond_args), tmp / "head.onnx", pieces, ["image"], opset)
    for r, after in enumerate(model.attach_after):
        branch = _Piece(model.branches[r], has_cond, guide is not None).eval()
        names = pieces + (["guide"] if guide is not None else [])
        file = f"branch_{r}.onnx"
        takes = _export(
            branch, (taps[after], *cond_args, *(() if guide is None else (guide,))), tmp / file, names, ["image"], opset
        )
        segments.append(
            {
                "name": f"branch {r}",
                "file": file,
                "route": r,
                "after_stage": after,
                "inputs": takes,
                "outputs": ["image"],
            }
        )
    segments.append({"name": "head", "file": "head.onnx", "inputs": head_takes, "outputs": ["image"]})
    return segments


def _export_bank(bank, ids: torch.Tensor, guide: torch.Tensor, faiss, tmp: Path, opset: int) -> tuple[dict, dict]:
    """The guide segment (entry ids -> guide tensor, the bank's values baked in) and the bank's FAISS indexes
    under ``bank/``; returns the guide's segment and the manifest's ``bank`` entry."""
    _export(_Guide(bank).eval(), (ids,), tmp / "guide.onnx", ["ids"], ["guide"], opset)  # reads ids
    segment = {"name": "guide", "file": "guide.onnx", "inputs": ["ids"], "outputs": ["guide"]}
    (tmp / "bank").mkdir()
    indexes = {}
    for key, index in bank.indexes.items():
        if type(index).__name__.startswith("Gpu"):
            index = faiss.index_gpu_to_cpu(index)
        file = "bank/index_all.faiss" if key == "all" else f"bank/index_class_{key}.faiss"
        faiss.write_index(index, str(tmp / file))
        indexes[str(key)] = {"file": file, "ntotal": int(index.ntotal)}
    patch = bank.mode == "patch"
    info = {
        "mode": bank.mode,
        "grid": list(bank.grid) if patch else None,
        "label_channels": bank.label_channels if patch else None,
        "key_dim": int(bank.keys.shape[1]),
        "entries": len(bank),
        "queries": int(ids.shape[1]),
        "index_kind": bank.manifest.get("index", "flat"),
        "per_class_counts": {str(c): int(n) for c, n in bank.manifest["per_class_counts"].items()},
        "indexes": indexes,
        "guide_shape": [int(d) for d in guide.shape[1:]],
        "fingerprint": tensor_fingerprint({"keys": bank.keys, "values": bank.values}),
    }
    return segment, info


def _manifest(
    pipe,
    source: Path | None,
    examples: tuple,
    declarations: list[dict],
    has_cond: bool,
    segments: list[dict],
    bank_info: dict | None,
    opset: int,
    tmp: Path,
) -> dict:
    """The manifest :mod:`fiancee.runtime` reads, with the sha256 of every file already in ``tmp``."""
    model = pipe.model
    k, n_stages, n_exits = model.key_stage, model.backbone.num_stages, len(model.attach_after)
    fingerprints = _fingerprints(pipe, source)
    route_macs = [int(m) for m in pipe.route_macs.tolist()]
    routes = _route_table(model.attach_after, k, n_stages, route_macs)
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return {
        "kind": KIND,
        "format": FORMAT,
        "opset": opset,
        "exporter": f"torch {torch.__version__} (TorchScript)",
        "task": pipe.task_spec,
        "inputs": declarations,
        "has_cond": has_cond,
        "attach_after": list(model.attach_after),
        "key_stage": k,
        "num_stages": n_stages,
        "image_shape": [int(d) for d in model.route(*examples, route=n_exits).shape[1:]],
        "segments": segments,
        "routes": routes,
        "route_macs": route_macs,
        "predictor_macs": int(pipe.predictor_macs()),
        "predictor": {
            "arch": pipe.predictor.arch,
            "reads_features": bool(pipe.predictor.reads_features),
            "num_exits": pipe.predictor.num_exits,
        },
        "router": pipe.router.to_config(),
        "bank": bank_info,
        "fingerprints": fingerprints,
        "source": None if source is None else source.name,
        "files": {f: file_sha256(tmp / f) for f in files},
    }


def _fingerprints(pipe, source: Path | None) -> dict:
    """What the export was made from: the weights' fingerprints, and the source folder's save id."""
    model = pipe.model
    fingerprints = {
        "backbone": tensor_fingerprint(model.backbone.state_dict()),
        "branches": tensor_fingerprint(model.branches.state_dict()),
        "predictor": tensor_fingerprint(pipe.predictor.state_dict()),
    }
    if source is not None:
        from .io import read_json

        fingerprints["pipeline_save_id"] = read_json(source / "config.json").get("save_id")
    return fingerprints


def _route_table(attach_after, k: int, n_stages: int, route_macs: list[int]) -> list[dict]:
    """Per route, the segments it runs in order and its MACs: every exit, then the backbone."""
    routes = [
        {
            "route": r,
            "name": f"exit {r + 1}",
            "after_stage": a,
            "segments": ["trunk"] + [f"stage {s}" for s in range(k + 1, a + 1)] + [f"branch {r}"],
            "macs": route_macs[r],
        }
        for r, a in enumerate(attach_after)
    ]
    routes.append(
        {
            "route": len(attach_after),
            "name": "backbone",
            "after_stage": n_stages,
            "segments": ["trunk"] + [f"stage {s}" for s in range(k + 1, n_stages + 1)] + ["head"],
            "macs": route_macs[-1],
        }
    )
    return routes
