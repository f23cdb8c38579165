"""The end-to-end pipeline: predictor -> router -> mixed-exit tree (paper Fig. 1, section 3).

``FianceePipeline(*inputs, max_lpips=0.1)`` runs the trunk (stem and stages up to the key stage) once,
predicts every exit's LPIPS for every input, lets the router pick the cheapest route meeting the
threshold, and continues the whole batch from the trunk's features through the mixed-exit tree of
:class:`fiancee.exits.ExitGenerator`. Every input is charged what it cost: its route, the predictor and
the bank's search.

A pipeline is one folder (diffusers' habit), written by :meth:`FianceePipeline.save_pretrained` and read by
:meth:`FianceePipeline.from_pretrained`::

    PIPELINE/
      config.json            kind "fiancee-pipeline", format, task, exit geometry (attach_after, scale,
                             min_channels), backbone and branches fingerprints, router config, provenance,
                             a save id (unique per save)
      branches.safetensors   the trained exit branches
      predictor/             config.json + weights.safetensors (fiancee.predictor)
      bank/                  the feature bank, when the exits use one (fiancee.bank)
      calibration.safetensors  the router's calibration table (predicted, true LPIPS [N, E]), when kept:
                             reports on new inputs show the guarantee over calibration / test splits

The backbone itself is a reference: ``config.json`` stores the task's spec (a built-in name,
``package.module:attr`` or an entry point of ``fiancee.tasks``, :mod:`fiancee.tasks.registry`), the task
loads its weights (a package or a committed file), and their fingerprint must equal the one recorded
here. ``from_pretrained(path, backbone=mine)`` uses a backbone you pass instead, after the same check
(diffusers' component override). Nothing in the folder can run code when loaded: its spec resolves only to
registered names and entry points (code the user registered or installed); a recorded ``module:attr`` is
imported only when the user names it (``task=``) or trusts the folder (``trust_task_code=True``, diffusers'
``trust_remote_code``), see :func:`fiancee.tasks.registry.resolve_folder_task`. Nothing outside the folder
is read. The folder is written whole and read whole (see docs/errors.md, "Folders").
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .core.args import check_bool
from .core.folders import PIPELINE, make_header
from .core.renames import UNSET, renamed, warn_renamed
from .core.rules import check_thresholds, threshold_groups
from .exits import ExitGenerator
from .io import (
    atomic_folder,
    compact_floats,
    config_int,
    config_int_list,
    config_object,
    config_str,
    load_tensors,
    read_manifest,
    read_whole_folder,
    resolve_inside,
    save_tensors,
    tensor_fingerprint,
    write_json,
)
from .routing import Router, router_from_config
from .specs import allow_folder_code

__all__ = ["FianceePipeline", "PipelineOutput", "FORMAT"]

FORMAT = 1
CALIBRATION = "calibration.safetensors"  # the router's calibration table, when the folder keeps one
CONFIG_KEYS = ("kind", "format", "task", "attach_after", "scale", "min_channels", "backbone_fingerprint", "router")


@dataclass
class PipelineOutput:
    images: torch.Tensor  # [B, C, H, W] in [-1, 1]
    routes: torch.Tensor  # [B] route per input (0-based; E = the backbone)
    predicted_lpips: torch.Tensor  # [B, E] predicted LPIPS of every exit branch
    macs: torch.Tensor  # [B] MACs each input cost: its route + the predictor + its bank search (float64)
    # [B, Q] L2 distance of each of the input's Q key patches to the bank entry it retrieved (the search's
    # own distances, paper Fig. 10); None without a bank
    bank_distances: torch.Tensor | None = None

    @property
    def exits(self) -> torch.Tensor:
        """Deprecated name of :attr:`routes` (removed in the next release)."""
        warn_renamed("PipelineOutput", "exits", "routes", stacklevel=3)
        return self.routes


class FianceePipeline:
    """``task`` may be None (a pipeline loaded with ``backbone=`` only): routing needs no task, evaluating
    does (it draws inputs from it). ``task_spec`` is what :meth:`save_pretrained` records (default: the task's)."""

    def __init__(
        self,
        task,
        model: ExitGenerator,
        predictor,
        router: Router,
        *,
        bank=None,
        bank_path: str | Path | None = None,
        provenance: dict | None = None,
        task_spec: str | None = None,
        calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if task is None and task_spec is None:
            raise ValueError("a pipeline needs its task, or at least the task spec to record (task_spec=)")
        self.task = task
        self.task_spec = task_spec if task_spec is not None else (getattr(task, "spec", None) or task.name)
        self.model = model.eval()
        self.predictor = predictor.eval()
        self.router = router
        self.bank = bank
        self.bank_path = None if bank_path is None else Path(bank_path)
        self.guide = None if bank is None else bank.guide
        self.provenance = dict(provenance or {})
        # (predicted, true) LPIPS [N, E] of the held-out inputs the router was fitted on: kept with the folder so
        # that a report on new inputs can show the guarantee over random calibration / test splits of both.
        self.calibration = None if calibration is None else _check_calibration(calibration)
        # None, or the counts of FianceePipeline.for_inference's rewrites (a copy that runs but is never saved).
        self.rewrites: dict[str, int] | None = None
        self.compiled = False
        self.route_macs = torch.tensor(model.route_macs(), dtype=torch.float64)
        from .metrics.macs import count_macs

        # Counted once here (shapes only), never inside a caller's FlopCounterMode.
        self._predictor_macs = count_macs(self.predictor, *(torch.zeros(1, *s) for s in self.predictor.input_shapes))

    def for_inference(self, compile: bool = False) -> "FianceePipeline":
        """A copy of this pipeline whose generator and predictor run rewritten (:func:`fiancee.rewrites.for_inference`:
        spectral norms baked, BatchNorms folded, slow transposed-convolution shapes as matrix products,
        SPADE's gamma and beta as one convolution): the same images and routes to float rounding, in fewer
        milliseconds. ``rewrites`` says how many layers each rewrite touched. With ``compile``, every segment the
        mixed-exit tree calls (the backbone's stages and head, each branch) is also compiled with ``torch.compile``
        (:func:`fiancee.rewrites.compile_modules`; the first call at each batch size compiles). This pipeline is
        unchanged; the copy is for inference only (it cannot be saved: save the pipeline it came from)."""
        from .rewrites import compile_modules, for_inference

        compile = check_bool(compile, "compile")
        if self.rewrites is not None and self.compiled == compile:
            return self
        if self.compiled:
            raise ValueError("this pipeline is compiled already; call for_inference on the pipeline it came from")
        out = copy.copy(self)
        if self.rewrites is None:
            out.model, counts = for_inference(self.model)
            out.predictor, predictor_counts = for_inference(self.predictor)
            out.rewrites = {k: counts[k] + predictor_counts[k] for k in counts}
        else:  # rewritten already: compile a copy of its own
            out.model = copy.deepcopy(self.model)
        if compile:
            b = out.model.backbone
            segments = [*b.stages, b.head, *out.model.branches]
            compile_modules(segments, next(out.model.parameters()).device)
            out.compiled = True
        return out

    @torch.no_grad()
    def predict(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Predicted LPIPS ``[B, E]`` of every exit branch."""
        from .predictor import predict

        return predict(self.predictor, self.model, inputs)

    def predictor_macs(self) -> int:
        """MACs of the predictor for one input (on top of the shared trunk when it reads key-stage features)."""
        return self._predictor_macs

    def overhead_macs(self) -> int:
        """MACs one input pays beyond its route: the predictor, and the bank's search (for a bank whose queries
        search per class, the largest class index: :meth:`fiancee.bank.FeatureBank.search_macs_bound`; the
        search's own cost per input is in ``PipelineOutput.macs``). The trunk up to the key stage is not
        overhead: every route runs it, and the pipeline runs it once (:meth:`__call__`)."""
        return self.predictor_macs() + (0 if self.bank is None else self.bank.search_macs_bound())

    @torch.no_grad()
    def __call__(
        self,
        *inputs: torch.Tensor,
        max_lpips: float | Sequence[float] | torch.Tensor,
        routes: torch.Tensor | None = None,
        exits: torch.Tensor | None = UNSET,
    ) -> PipelineOutput:
        """Images for ``inputs`` at quality ``max_lpips`` (LPIPS vs the backbone, in (0, 1]): one threshold for the
        batch, or one per input (a 1-D sequence or tensor ``[B]``; each input is routed by its own).

        One pass through the trunk: the stem and the stages up to the key stage (``model.key_stage``, the
        stage before the first exit) run once for the batch; the bank searches with those features, a
        predictor reading key-stage features reads them, the router decides, and the mixed-exit tree
        continues from them (:meth:`fiancee.exits.ExitGenerator.mixed_from`). ``macs`` per input = its route
        + the predictor + its bank search (the trunk counted once, inside the route).
        ``routes`` (one route per input, 0-based, E = the backbone) overrides the router (e.g. an oracle's
        choice) while keeping one tree execution; the predictor still runs (its output is returned) and is
        still charged. ``exits=`` is the deprecated name of ``routes=``.
        """
        routes = renamed("FianceePipeline.__call__", "exits", exits, "routes", routes, default=None)
        batch = self.model.backbone.check_inputs(*inputs)
        if isinstance(max_lpips, torch.Tensor):
            max_lpips = max_lpips.detach().cpu().numpy() if max_lpips.dim() else max_lpips.item()
        threshold = check_thresholds(max_lpips, batch)
        if routes is not None and not isinstance(routes, torch.Tensor):
            raise ValueError(
                f"routes must be a 1-D integer tensor with one route per input; got {type(routes).__name__}"
            )
        k = self.model.key_stage
        f = self.model.backbone.features(*inputs, taps=(k,))
        h, cond = f.taps[k], f.cond  # [B, C, h, w] after the key stage
        bank_macs = torch.zeros(batch, dtype=torch.float64)
        guide = distances = None
        if self.bank is not None:
            ids, bank_macs, distances = self.bank.search_with_distances(h, cond)
            guide = self.bank.assemble(ids, h.device)
        predicted = self._predicted(h, inputs)  # [B, E]
        if routes is None:
            routes = self._route(predicted, threshold)
        images = self.model.mixed_from(h, cond, k, routes.to(h.device), guide=guide)
        routes = routes.cpu().long()  # checked integers by mixed_from; a uint8 tensor would index as a mask
        macs = self.route_macs[routes] + float(self.predictor_macs()) + bank_macs
        return PipelineOutput(
            images=images, routes=routes, predicted_lpips=predicted.cpu(), macs=macs, bank_distances=distances
        )

    def _predicted(self, h: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The predictor's ``[B, E]`` for the call (:meth:`__call__`, :meth:`segment_calls`): from the key-stage
        features ``h`` when it reads them, else from its own features of ``inputs``. Both come from checked inputs,
        so no second finiteness check."""
        if self.predictor.reads_features:
            return self.predictor(h, check=False)
        from .predictor import predictor_features

        return self.predictor(*predictor_features(self.predictor.arch, self.model, inputs), check=False)

    def _route(self, predicted: torch.Tensor, threshold) -> torch.Tensor:
        """The router's routes ``[B]`` at one threshold, or group by group at one threshold per input."""
        if isinstance(threshold, float):
            return self.router.route(predicted, threshold)
        routes = torch.empty(predicted.shape[0], dtype=torch.long, device=predicted.device)
        for t, rows in threshold_groups(threshold):
            at = torch.from_numpy(rows).to(predicted.device)
            routes[at] = self.router.route(predicted[at], t).to(torch.long)
        return routes

    @torch.no_grad()
    def segment_calls(
        self, *inputs: torch.Tensor, max_lpips: float | Sequence[float]
    ) -> dict[str, Callable[[], object]]:
        """The segments of :meth:`__call__` on ``inputs``, each as a call that runs that segment alone on what the
        segments before it produced (computed once here): ``trunk`` (stem and stages up to the key stage), ``bank``
        (search and guide; only with a bank), ``predictor``, ``router`` and ``tree`` (the mixed-exit tree from the
        key stage). Timed one by one they show where a routed call's time goes (``fiancee bench``); their sum
        misses only the call's own glue (checks, the MACs bookkeeping)."""
        threshold = check_thresholds(max_lpips, self.model.backbone.check_inputs(*inputs), "max_lpips")
        k = self.model.key_stage
        f = self.model.backbone.features(*inputs, taps=(k,))
        h, cond = f.taps[k], f.cond
        calls: dict[str, Callable[[], object]] = {
            "trunk": lambda: self.model.backbone.features(*inputs, taps=(k,)),
        }
        guide = None
        if self.bank is not None:
            ids, _, _ = self.bank.search_with_distances(h, cond)
            guide = self.bank.assemble(ids, h.device)
            calls["bank"] = lambda: self.bank.assemble(self.bank.search_with_distances(h, cond)[0], h.device)
        calls["predictor"] = lambda: self._predicted(h, inputs)
        predicted = calls["predictor"]()
        calls["router"] = lambda: self._route(predicted, threshold)
        routes = self._route(predicted, threshold).to(h.device)
        calls["tree"] = lambda: self.model.mixed_from(h, cond, k, routes, guide=guide)
        return {name: torch.no_grad()(fn) for name, fn in calls.items()}

    # ------------------------------------------------------------------------------------------
    # Folders

    def save_pretrained(self, out: str | Path) -> Path:
        """Write the pipeline folder whole: it is built in a hidden sibling of ``out`` and swapped in
        (:func:`fiancee.io.atomic_folder`), so a reader or a kill mid-save never meets a mix of two saves.
        Refused when ``out`` holds something other than a pipeline. :meth:`from_pretrained` reads it."""
        import uuid

        from .predictor import exits_fingerprints, save_predictor

        if self.rewrites is not None:
            raise ValueError(
                "this pipeline was rewritten for inference (FianceePipeline.for_inference): its layers no longer "
                "have their trained names; save the pipeline it came from"
            )
        out = Path(out)
        with atomic_folder(out, kind=PIPELINE, what="pipeline") as tmp:
            # float16 when that is lossless (branches exported at float16 stay half the size; io.compact_floats)
            branches = compact_floats(self.model.branches.state_dict())
            save_tensors(tmp / "branches.safetensors", branches)
            save_predictor(self.predictor, tmp / "predictor", fingerprints=exits_fingerprints(self.model))
            if self.bank_path is not None:
                shutil.copytree(self.bank_path, tmp / "bank")  # symlinks followed: the copy holds files only
            if self.calibration is not None:
                predicted, true = self.calibration
                save_tensors(tmp / CALIBRATION, {"predicted": predicted, "true": true})
            write_json(
                tmp / "config.json",
                {
                    **make_header(PIPELINE, FORMAT),
                    "task": self.task_spec,
                    "attach_after": list(self.model.attach_after),
                    "scale": f"{self.model.scale.numerator}/{self.model.scale.denominator}",
                    "min_channels": self.model.min_channels,
                    "backbone_fingerprint": tensor_fingerprint(self.model.backbone.state_dict()),
                    # which branches this config belongs with, and a stamp unique to this save (read_whole_folder)
                    "branches_fingerprint": tensor_fingerprint(branches),
                    "save_id": uuid.uuid4().hex,
                    "bank": "bank" if self.bank_path is not None else None,
                    "calibration": CALIBRATION if self.calibration is not None else None,
                    "router": self.router.to_config(),
                    "route_macs": [int(m) for m in self.route_macs.tolist()],
                    "provenance": self.provenance,
                },
            )
        return out

    save = save_pretrained  # the name before save_pretrained / from_pretrained became the pair of every object

    @classmethod
    @read_whole_folder("config.json", path_index=1)  # a save swapping the folder mid-load makes it load again
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        *,
        backbone=None,
        task=None,
        trust_task_code: bool = False,
    ) -> "FianceePipeline":
        """Load a pipeline folder (:meth:`save_pretrained` writes one; folders with the old header
        ``fiancee_pipeline`` and the old field ``exits`` load too, :mod:`fiancee.core.folders`).

        ``task``: a Task or a spec overriding the recorded one; by default the recorded spec is resolved
        to registered names and entry points (:func:`fiancee.tasks.registry.resolve_folder_task`).
        ``trust_task_code``: also import the ``module:attr`` code the folder names (its task, its bank's
        key function); pass it only for a folder you trust. ``backbone``: a StagedGenerator to use instead
        of the one the task loads; its weights' fingerprint must equal the recorded one. With ``backbone``
        and no ``task`` the task is not resolved (``pipeline.task`` is None; routing does not need it).
        """
        from .predictor import load_predictor

        if not isinstance(trust_task_code, bool):
            raise ValueError(f"trust_task_code must be True or False; got {trust_task_code!r}")
        path = Path(path)
        config = read_manifest(
            resolve_inside(path, "config.json"),
            kind=PIPELINE,
            version=FORMAT,
            what="fiancee pipeline config",
            required=CONFIG_KEYS,
        )
        _check_config(config, path / "config.json")
        if task is not None or backbone is None:
            from .tasks.registry import resolve_folder_task

            task = resolve_folder_task(config["task"], path / "config.json", task=task, trust_task_code=trust_task_code)
        if backbone is None:
            backbone = task.load_backbone(device)
            source = f"task {config['task']!r} loads weights"
        else:
            from .staged import StagedGenerator

            if not isinstance(backbone, StagedGenerator):
                raise ValueError(f"backbone= must be a fiancee StagedGenerator; got {type(backbone).__name__}")
            backbone = backbone.to(device).eval().requires_grad_(False)
            source = "the backbone passed has weights"
        have = tensor_fingerprint(backbone.state_dict())
        if have != config["backbone_fingerprint"]:
            raise ValueError(
                f"{path} was built for backbone weights {config['backbone_fingerprint']}, "
                f"but {source} {have}: the exits would not match this backbone"
            )
        bank = guide_spec = None
        bank_path = None
        if config.get("bank"):
            from .bank import load_bank

            bank_path = resolve_inside(path, config["bank"], "config.json's 'bank' entry")
            with allow_folder_code(every=trust_task_code):  # the bank's key function
                bank = load_bank(bank_path, backbone)
            guide_spec = bank.guide_spec
        model = ExitGenerator(
            backbone, config["attach_after"], config["scale"], config["min_channels"], guide=guide_spec
        ).to(device)
        branches = load_tensors(resolve_inside(path, "branches.safetensors"), device=device)
        if config.get("branches_fingerprint") not in (None, tensor_fingerprint(branches)):
            raise ValueError(
                f"{path}: branches.safetensors is not the one config.json was saved with "
                "(a folder mixed from two saves?)"
            )
        model.branches.load_state_dict(branches)
        predictor, _ = load_predictor(resolve_inside(path, "predictor"), model, device=device)
        calibration = None
        if config.get("calibration") is not None:
            table = load_tensors(resolve_inside(path, config["calibration"], "config.json's 'calibration' entry"))
            if set(table) != {"predicted", "true"}:
                raise ValueError(f"{path}: {config['calibration']} must hold the tensors 'predicted' and 'true'")
            calibration = (table["predicted"], table["true"])
        return cls(
            task,
            model,
            predictor,
            router_from_config(config["router"]),
            bank=bank,
            bank_path=bank_path,
            provenance=config.get("provenance"),
            task_spec=(getattr(task, "spec", None) if task is not None else None) or config["task"],
            calibration=calibration,
        )


def _check_calibration(calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted, true)``: two finite float tensors ``[N, E]`` of the same shape."""
    if not isinstance(calibration, (tuple, list)) or len(calibration) != 2:
        raise ValueError("calibration must be the pair (predicted, true) of LPIPS tables [N, E]")
    predicted, true = (torch.as_tensor(t, dtype=torch.float32).detach().cpu() for t in calibration)
    if predicted.ndim != 2 or predicted.shape != true.shape or not predicted.shape[0]:
        raise ValueError(
            f"calibration's predicted and true LPIPS must be tables [N, E] of one shape; got "
            f"{list(predicted.shape)} and {list(true.shape)}"
        )
    if not (torch.isfinite(predicted).all() and torch.isfinite(true).all()):
        raise ValueError("calibration's LPIPS tables hold NaN or Inf")
    return predicted, true


def _check_config(config: dict, source: Path) -> None:
    """Every field of a pipeline config has the type its reader needs (the field named, not a TypeError later)."""
    config_str(config, "task", source)
    config_int_list(config, "attach_after", source, minimum=1)
    config_int(config, "min_channels", source, minimum=1)
    config_str(config, "backbone_fingerprint", source)
    config_str(config, "bank", source, optional=True)
    config_str(config, "calibration", source, optional=True)
    if not isinstance(config["scale"], (str, int, float)) or isinstance(config["scale"], bool):
        raise ValueError(f"{source}: field 'scale' must be a fraction like '1/4' or a number; got {config['scale']!r}")
    if not isinstance(config["router"], dict):
        raise ValueError(f"{source}: field 'router' must be a JSON object; got {config['router']!r}")
    config_object(config, "provenance", source, optional=True)
