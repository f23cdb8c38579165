"""Train all exit branches of a model by distillation (paper section 4.1 eq. 3, 4.2 eq. 4, S1.1.2).

The backbone stays frozen. For every batch the backbone runs once (``ExitGenerator.trunk``): its
features after each exit stage feed every branch, its image is the target every branch learns to
reproduce. Each branch has its own critic; per-exit losses are logged separately.

Runs alone or under ``torchrun --nproc_per_node N``: the branches and the critics are wrapped in
DistributedDataParallel, every rank draws its own inputs (the data is split by rank), and only rank 0
writes the run folder (:mod:`fiancee.train.run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core.folders import EXITS_RUN, header, make_header, upgrade
from ..exits import INITS, ExitGenerator, channel_importance, parse_scale
from ..io import RunLock, check_replaceable, config_int_list, folder_kind, read_json, resolve_inside, tensor_fingerprint
from ..tasks.base import declared_inputs
from .critics import CRITICS, Critic, build_critic
from .distributed import DistEnv, init_distributed, shutdown_distributed
from .losses import BranchLoss, FeatureAdapters, Recipe, get_recipe, lr_at, make_optimizer
from .run import RunDir, load_optimizer_tensors, optimizer_tensors

__all__ = [
    "PRESETS",
    "ExitTrainConfig",
    "train_exits",
    "load_exits",
    "build_exits",
    "run_bank_path",
    "run_guide",
    "critic_kind",
    "build_critics",
    "read_run_config",
    "RUN_FORMAT",
]

# Presets: quick fits a 2-core CPU in minutes, full is for a GPU.
# quick distils with the reconstruction terms only: on 2 CPU cores VGG16 at 64 px costs about 5 s per
# 32 images forward + backward, and a fresh critic needs thousands of steps before its gradients help
# rather than fight the LPIPS target the router will threshold. LPIPS (AlexNet, ~30x cheaper than
# VGG) carries the perceptual signal and an L1 term (weight 1) anchors the colours, which LPIPS barely
# sees. full keeps the paper's recipe as it is. A task whose critics are copies of its backbone's own
# trained discriminator (critic kind ``oasis``, paper eq. 3) keeps the adversarial term in quick too:
# such a critic is no fresh one, it segments real garments from the first step.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "steps": 300,
        "batch_size": 16,
        "checkpoint_every": 50,
        "recipe_overrides": {"vgg": 0.0, "adversarial": 0.0, "feature_matching": 0.0, "l1": 1.0},
    },
    "full": {"steps": 20000, "batch_size": 32, "checkpoint_every": 1000, "recipe_overrides": {}},
    # For tests: a handful of steps on tiny batches, every term but VGG on.
    "smoke": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "recipe_overrides": {"vgg": 0.0}},
}


@dataclasses.dataclass
class ExitTrainConfig:
    task: str
    scale: str = "1/4"
    min_channels: int = 16
    recipe: dict | None = None  # Recipe.to_dict(); filled from recipe_name + preset overrides
    recipe_name: str = "oasis"
    preset: str = "quick"
    steps: int = 600
    batch_size: int = 32
    checkpoint_every: int = 100
    seed: int = 0
    bank: str | None = None
    world_size: int = 1
    # exits.INITS: sliced from the backbone's own weights (the default: on faces it reaches at 300 steps what
    # fresh branches reach after 1500, docs/training.md), or fresh branches as in the paper.
    init: str = "inherit"
    # None: every step draws fresh inputs and runs the backbone on them. N: the run trains on N fixed
    # training inputs whose trunk (the backbone's features at the exits and its image) is computed once,
    # the first time a batch needs it, and kept in memory: for a backbone whose forward costs as much as
    # the branches' training (Real-ESRGAN: 18 GMACs per tile) this takes about 40 % off every later step.
    fixed_inputs: int | None = None
    # The fingerprint of the branch weights the run started from (another run or an exported exits folder of the
    # same task and geometry: ``train_exits(warm_start=...)``), or None. Training on from shipped branches is how a
    # run continues across machines when only the exported weights (no critics, no optimizer state) were kept.
    warm_start: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_config(
    task: str,
    *,
    scale: str | None = None,
    min_channels: int | None = None,
    recipe: str = "oasis",
    preset: str = "quick",
    steps: int | None = None,
    batch_size: int | None = None,
    checkpoint_every: int | None = None,
    seed: int = 0,
    bank: str | None = None,
    recipe_overrides: dict | None = None,
    init: str = "inherit",
    fixed_inputs: int | None = None,
) -> ExitTrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {list(INITS)}")
    p = PRESETS[preset]
    from ..tasks.registry import resolve_task, task_spec

    defaults = resolve_task(task)
    task = task_spec(defaults)  # the run config stores the spec string, resolved the same way when loaded
    sf = parse_scale(defaults.default_scale if scale is None else scale)
    if min_channels is None:
        min_channels = defaults.default_min_channels
    if int(min_channels) <= 0:
        raise ValueError(f"min channels must be positive; got {min_channels}")
    overrides = dict(p["recipe_overrides"])
    asked = (recipe_overrides or {}).get("critic", get_recipe(recipe).critic)
    if (
        recipe == "oasis"
        and "adversarial" in overrides
        and (asked == "oasis" or (asked == "task" and defaults.critic_kind == "oasis"))
    ):
        overrides.pop("adversarial")  # eq. 3 against copies of the backbone's trained discriminator (PRESETS note)
    rec = get_recipe(recipe).replace(**{**overrides, **(recipe_overrides or {})})
    cfg = ExitTrainConfig(
        task=task,
        scale=f"{sf.numerator}/{sf.denominator}",
        min_channels=min_channels,
        recipe=rec.to_dict(),
        recipe_name=recipe,
        preset=preset,
        steps=int(p["steps"] if steps is None else steps),
        batch_size=int(p["batch_size"] if batch_size is None else batch_size),
        checkpoint_every=int(p["checkpoint_every"] if checkpoint_every is None else checkpoint_every),
        seed=int(seed),
        bank=bank,
        init=init,
        fixed_inputs=None if fixed_inputs is None else fixed_inputs,
    )
    if fixed_inputs is not None and (
        isinstance(fixed_inputs, bool) or not isinstance(fixed_inputs, int) or fixed_inputs < cfg.batch_size
    ):
        raise ValueError(f"fixed inputs must be an integer >= the batch size ({cfg.batch_size}); got {fixed_inputs!r}")
    if cfg.steps <= 0 or cfg.batch_size <= 0 or cfg.checkpoint_every <= 0:
        raise ValueError(
            "steps, batch size and checkpoint interval must be positive; "
            f"got {cfg.steps}, {cfg.batch_size}, {cfg.checkpoint_every}"
        )
    return cfg


def build_exits(task, backbone, scale: str, min_channels: int | None, bank=None) -> ExitGenerator:
    """The task's exits around its backbone (guide channels reserved when a bank is used: a bank folder,
    or a :class:`fiancee.bank.FeatureBank` already loaded for this backbone)."""
    guide = None
    if bank is not None:
        from ..bank import FeatureBank, load_bank

        guide = (bank if isinstance(bank, FeatureBank) else load_bank(bank, backbone)).guide_spec
    mc = task.default_min_channels if min_channels is None else int(min_channels)
    return ExitGenerator(backbone, task.attach_after, scale, mc, guide=guide)


class _Branches(nn.Module):
    """All branches behind one forward, so one DDP wrapper syncs them all in one backward.

    With ``return_features`` every branch also returns its blocks' outputs (feature distillation).
    """

    def __init__(self, model: ExitGenerator):
        super().__init__()
        self.branches = model.branches

    def forward(self, feats: list[torch.Tensor], cond, guide, return_features: bool = False) -> list:
        return [b(h, cond, guide, return_features=return_features) for b, h in zip(self.branches, feats)]


# Inputs the inherited initialisation scores channels on (a fixed draw of the training split).
INHERIT_INPUTS = 256
# The folder inside a run that holds its copy of the bank it was trained with (run_bank_path).
RUN_BANK = "bank"
# The layout of an exit-training run's config.json (header kind "fiancee-exits-run"; runs written before the
# header had kind "exits" and no format: format 1, read through fiancee.core.folders).
RUN_FORMAT = 1


class _Critics(nn.Module):
    """One critic per branch; forward = the summed discriminator loss (and the per-exit values)."""

    def __init__(self, critics: list[Critic]):
        super().__init__()
        self.critics = nn.ModuleList(critics)

    def forward(self, real: torch.Tensor, fakes: list[torch.Tensor], inputs) -> list[torch.Tensor]:
        return [c.d_loss(real, f.detach(), inputs) for c, f in zip(self.critics, fakes)]


class _Trunk:
    """Each step's inputs and the frozen backbone's outputs for them (``ExitGenerator.trunk``).

    Fresh inputs every step by default. With ``config.fixed_inputs = N``: N training inputs drawn once,
    taken in epochs (:meth:`_indices`, so a resumed run takes the same batches), and an input's trunk
    outputs are computed the first time a batch holds it (during the first epoch) and kept
    (the backbone is frozen and deterministic, so a resumed run recomputes exactly what it had).
    """

    def __init__(
        self, task, model: ExitGenerator, config: ExitTrainConfig, env: DistEnv, guide_fn, all_stages: bool, amp: bool
    ):
        self.task, self.model, self.config, self.env = task, model, config, env
        self.guide_fn, self.all_stages, self.amp = guide_fn, all_stages, amp
        self.pool = None
        self.kept: dict[int, tuple] = {}
        self._orders: dict[int, list[int]] = {}
        if config.fixed_inputs is not None:
            # Its own seed stream: never the per-step draws of a fresh-input run.
            self.pool = task.sample_inputs(config.fixed_inputs, seed=config.seed + 7_777_777, split="train")

    def _run(self, inputs: tuple[torch.Tensor, ...]):
        with torch.no_grad(), torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model.trunk(*inputs, guide=self.guide_fn, all_stages=self.all_stages)

    def _indices(self, step: int) -> list[int]:
        """Epochs over the pool: every input once per epoch, in an order drawn from (seed, epoch); the
        sample count so far (all ranks) says where a step's batch lies, so the first epoch computes each
        trunk once and a resumed run continues the same order."""
        n, b = self.pool[0].shape[0], self.config.batch_size
        first = (step * self.env.world_size + self.env.rank) * b
        out = []
        for g in range(first, first + b):
            epoch = g // n
            if epoch not in self._orders:
                self._orders = {
                    epoch: torch.randperm(
                        n, generator=torch.Generator().manual_seed(_step_seed(self.config.seed, epoch, 0, 1))
                    ).tolist()
                }
            out.append(self._orders[epoch][g % n])
        return out

    def batch(self, step: int):
        seed = _step_seed(self.config.seed, step, self.env.rank, self.env.world_size)
        if self.pool is None:
            inputs = tuple(
                x.to(self.env.device) for x in self.task.sample_inputs(self.config.batch_size, seed=seed, split="train")
            )
            return inputs, self._run(inputs)
        idx = self._indices(step)
        missing = [i for i in idx if i not in self.kept]
        if missing:
            feats, cond, g, real = self._run(tuple(x[missing].to(self.env.device) for x in self.pool))
            for j, i in enumerate(missing):
                self.kept[i] = (
                    [f[j] for f in feats],
                    None if cond is None else cond[j],
                    None if g is None else g[j],
                    real[j],
                )
        rows = [self.kept[i] for i in idx]
        stack = lambda xs: None if xs[0] is None else torch.stack(xs)  # noqa: E731
        feats = [torch.stack([r[0][k] for r in rows]) for k in range(len(rows[0][0]))]
        inputs = tuple(x[idx].to(self.env.device) for x in self.pool)
        return inputs, (
            feats,
            stack([r[1] for r in rows]),
            stack([r[2] for r in rows]),
            torch.stack([r[3] for r in rows]),
        )


def _step_seed(seed: int, step: int, rank: int, world: int) -> int:
    # Distinct inputs for every (step, rank): the data is split across ranks, and a resumed run
    # draws exactly the batches it would have drawn without the interruption.
    return (seed * 1_000_003 + step * world + rank) % (2**63 - 1)


def critic_kind(task, recipe: Recipe) -> str:
    """The kind of every branch's critic: the recipe's when it names one (``patch`` for MegaPortraits, or
    ``dcgan`` / ``oasis`` asked for explicitly), else the kind the task declares (``recipe.critic == "task"``).
    ``oasis`` needs the backbone's discriminator (``Task.load_discriminator``) and a label-map input."""
    kind = task.critic_kind if recipe.critic == "task" else recipe.critic
    if not isinstance(kind, str) or kind not in CRITICS:
        whose = f" (task {task.name!r} declares it)" if recipe.critic == "task" else ""
        raise ValueError(f"unknown critic {kind!r}{whose}; expected 'task' or one of {tuple(CRITICS.in_order())}")
    if kind == "oasis":
        if not any(s.kind == "label_map" for s in declared_inputs(task)):
            raise ValueError(
                f"the oasis critic segments by the label map, and task {task.name!r} declares no label_map input"
            )
        if task.load_discriminator("cpu") is None:
            raise ValueError(
                f"the oasis critic copies the backbone's own discriminator, and task {task.name!r} ships none "
                "(Task.load_discriminator returned None; a backbone trained by `fiancee train-backbone` gets one "
                "with `fiancee export-backbone RUN`)"
            )
    return kind


def build_critics(task, recipe: Recipe, count: int, seed: int = 0, device: str | torch.device = "cpu") -> list:
    """One critic per branch (:func:`critic_kind`); ``oasis`` critics start as exact copies of the backbone's
    discriminator, each drawing its own LabelMix masks."""
    kind = critic_kind(task, recipe)
    if kind != "oasis":
        return [build_critic(kind, task.image_size[0], task.image_channels) for _ in range(count)]
    disc = task.load_discriminator(device)
    label_index = next(i for i, s in enumerate(declared_inputs(task)) if s.kind == "label_map")
    return [
        build_critic(
            "oasis",
            task.image_size[0],
            task.image_channels,
            discriminator=disc,
            label_index=label_index,
            seed=seed * 1_000_003 + 7919 * (i + 1),
        )
        for i in range(count)
    ]


def train_exits(
    config: ExitTrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    warm_start: str | Path | None = None,
) -> Path:
    """Train every exit of ``config.task``; returns the run folder. ``stop_after`` ends early (tests).

    ``warm_start``: a run or an exported exits folder (``RunDir.export``) of the same task, scale, channel floor
    and exit stages, without a bank: the branches start from its last weights instead of ``config.init`` (fresh
    critics and optimizer state; the run records the weights' fingerprint in ``config.warm_start``). A resumed
    run with a checkpoint continues from its checkpoint."""
    from ..tasks.registry import resolve_task

    task = resolve_task(config.task)
    declared_inputs(task)  # a task whose declarations are wrong fails before the run folder is written
    env = init_distributed(device)
    try:
        run = RunDir(out)
        _check_before_writing(config, run, task)  # read-only, on every rank: all ranks refuse alike
        start = None
        if warm_start is not None:
            start = warm_start_branches(warm_start, config)
            config.warm_start = tensor_fingerprint(start)
        with _writer_lock(run.path, env):
            return _train(config, run, env, resume, progress, stop_after, task, start)
    finally:
        shutdown_distributed()


def warm_start_branches(folder: str | Path, config: ExitTrainConfig) -> dict[str, torch.Tensor]:
    """The last branch weights of ``folder`` (a run or an exported exits folder), checked to fit ``config``'s
    exits: same task spec, scale, channel floor and exit stages, and no bank on either side. Refused in one line."""
    src = RunDir(folder)
    if not src.config_path.is_file():
        raise ValueError(
            f"warm start: {src.path} is not an exit-training run or exported exits folder (no config.json)"
        )
    saved = read_run_config(src)
    if config.bank is not None or saved.get("bank") is not None:
        raise ValueError("warm start: runs with a feature bank start from their own bank's branches; not supported")
    want = {"task": config.task, "scale": config.scale, "min_channels": config.min_channels}
    for key, value in want.items():
        if saved.get(key) != value:
            raise ValueError(f"warm start: {src.path} has {key} {saved.get(key)!r}, this run asks {value!r}")
    ckpt = src.load_checkpoint(["branches"])
    if ckpt is None:
        raise ValueError(f"warm start: {src.path} has no checkpoint (latest.json missing)")
    return {k: v.float() if v.is_floating_point() else v for k, v in ckpt[0]["branches"].items()}


def _check_before_writing(config: ExitTrainConfig, run: RunDir, task) -> None:
    """What can be refused is refused before ``--out`` is touched: a folder of another kind, a task whose
    weights do not load, a bank built for another backbone."""
    check_replaceable(run.path, EXITS_RUN, "exit-training run")
    backbone = task.load_backbone("cpu")
    if config.bank is not None:
        from ..bank import load_bank

        load_bank(config.bank, backbone)
    critic_kind(
        task, Recipe.from_dict(config.recipe)
    )  # an oasis critic without the backbone's discriminator: refused here


@contextlib.contextmanager
def _writer_lock(path: Path, env: DistEnv):
    """Rank 0 holds the run folder's writer lock (every rank learns whether it got it, so a refusal
    does not leave the others waiting at a barrier); a folder this call created and left empty is
    removed again."""
    created = env.is_main and not path.exists()
    lock, error = None, None
    if env.is_main:
        try:
            lock = RunLock(path).acquire()
        except ValueError as e:
            error = str(e)
    if env.distributed:
        errors = [None] * env.world_size
        torch.distributed.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error is not None:
        raise ValueError(error)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
        if created and folder_kind(path) is None:
            shutil.rmtree(path, ignore_errors=True)


def _train(
    config: ExitTrainConfig, run: RunDir, env: DistEnv, resume: bool, progress: bool, stop_after, task, start=None
) -> Path:
    recipe = Recipe.from_dict(config.recipe)
    config.world_size = env.world_size
    exists = run.exists()
    if env.distributed:
        # Every rank must see the folder as it was before rank 0 writes into it.
        torch.distributed.barrier()
    if exists and not resume:
        raise ValueError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
    use_adv = recipe.adversarial > 0 or recipe.feature_matching > 0
    kind = critic_kind(task, recipe)  # critics are built (and checkpointed) even when no term uses them
    if use_adv and env.is_main and task.critic_note() is not None and kind == task.critic_kind:
        import sys

        print(task.critic_note(), file=sys.stderr)
    if resume:
        written = saved = run.read_config()  # `saved` is normalised below; `written` stays as on disk
        _check_resume_bank(run, saved, config)
        if saved.get("critic_kind", kind) != kind:
            raise ValueError(
                f"cannot resume {run.path}: its critics are {saved.get('critic_kind')!r}, this command "
                f"would build {kind!r} (the backbone folder gained or lost its discriminator?)"
            )
        saved = {"init": "random", "fixed_inputs": None, "warm_start": None, **saved}  # runs before the options
        if config.warm_start is None:  # resuming needs no --warm-start: the checkpoint holds the weights
            config.warm_start = saved["warm_start"]
        saved["recipe"] = (
            Recipe.from_dict(saved["recipe"]).to_dict()
            if isinstance(saved.get("recipe"), dict)
            else saved.get("recipe")
        )
        for key in ("task", "scale", "min_channels", "recipe", "init", "fixed_inputs", "warm_start"):
            if saved.get(key) != config.to_dict()[key]:
                raise ValueError(
                    f"cannot resume {run.path}: its {key} is {saved.get(key)!r}, "
                    f"this command asks {config.to_dict()[key]!r}"
                )
        if saved.get("steps") != config.steps and env.is_main:
            # A run continued to a new --steps must say so: its config (and the exits exported from it)
            # would otherwise name the budget it started with. Recorded before any step is taken.
            if recipe.schedule != "constant":
                import sys

                print(
                    f"resuming with --steps {config.steps} (the run was set for {saved.get('steps')}): the "
                    f"{recipe.schedule} learning-rate schedule is now spread over {config.steps} steps",
                    file=sys.stderr,
                )
            run.write_config({**written, "steps": config.steps})

    torch.manual_seed(config.seed)
    backbone = task.load_backbone(env.device)
    bank = None
    if config.bank is not None:
        from ..bank import load_bank

        bank = load_bank(config.bank, backbone)  # once: the branches' guide channels, the guide, the run's copy
    # Built before anything is written: an exit dearer than the backbone is refused with the run folder untouched.
    model = build_exits(task, backbone, config.scale, config.min_channels, bank).to(env.device)
    unguided = [k for k, g in zip(model.attach_after, model.guided) if not g]
    if bank is not None and unguided and env.is_main and not resume:
        import sys

        print(
            f"exits after stage(s) {unguided} are built without the bank's guide: with it they would cost more "
            "than the backbone (docs/bank.md)",
            file=sys.stderr,
        )
    if not resume and env.is_main:
        if bank is not None:
            # The run keeps its own copy of the bank, written before the config that names it: a run
            # folder (and the exits shipped from one) is complete by itself, and nothing it loads lies
            # outside it (docs/errors.md).
            bank.save_pretrained(run.path / RUN_BANK)
        run.write_config(
            {
                **make_header(EXITS_RUN, RUN_FORMAT),
                **config.to_dict(),
                "bank": None if bank is None else RUN_BANK,
                "attach_after": list(task.attach_after),
                "critic_kind": kind,
                "guided_attach_after": [k for k, g in zip(model.attach_after, model.guided) if g]
                if bank is not None
                else [],
            }
        )
    guide_fn = None if bank is None else bank.guide
    backbone.eval().requires_grad_(False)
    fresh = not (resume and run.latest() is not None)
    if config.init == "inherit" and fresh and start is None:
        # A fresh run starts here; a resumed one loads its checkpoint's weights instead (scoring the channels
        # would cost a backbone pass over INHERIT_INPUTS for nothing: 4.7 TMACs on upscale).
        probe = task.sample_inputs(INHERIT_INPUTS, seed=config.seed, split="train")
        model.inherit_(channel_importance(backbone, tuple(x.to(env.device) for x in probe)))
    branches = _Branches(model).train()
    if start is not None and fresh:
        try:
            missing, unexpected = branches.load_state_dict(start, strict=False)
        except RuntimeError as e:  # a tensor of another shape: the task's exits changed since that run
            raise ValueError(
                f"warm start: the branches do not fit this run's exits ({str(e).splitlines()[-1].strip()})"
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"warm start: the branches do not fit this run's exits (missing {sorted(missing)[:3]}, unexpected "
                f"{sorted(unexpected)[:3]})"
            )
    use_feat = recipe.features > 0
    if use_feat:
        branches.adapters = FeatureAdapters(model).to(env.device)
    critics = _Critics(build_critics(task, recipe, len(model.branches), config.seed, env.device)).to(env.device).train()
    loss_fn = BranchLoss(recipe).to(env.device)
    opt_g = make_optimizer(branches.parameters(), recipe)
    opt_d = make_optimizer(critics.parameters(), recipe)

    step = 0
    if resume:
        ckpt = run.load_checkpoint(
            ["branches", "critics", "opt_g", "opt_d"] + (["adapters"] if use_feat else []), device=env.device
        )
        if ckpt is not None:
            comps, state = ckpt
            branches.load_state_dict({**comps["branches"], **comps.get("adapters", {})})
            critics.load_state_dict(comps["critics"])
            load_optimizer_tensors(opt_g, comps["opt_g"], state["opt_g"])
            load_optimizer_tensors(opt_d, comps["opt_d"], state["opt_d"])
            step = int(state["step"])
            if env.is_main:
                run.truncate_stats(step)

    ddp_g: nn.Module = branches
    ddp_d: nn.Module = critics
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        ddp_g = DDP(branches, device_ids=ids)
        ddp_d = DDP(critics, device_ids=ids)

    amp = env.device.type == "cuda"
    trunk = _Trunk(task, model, config, env, guide_fn, use_feat, amp)
    bar = None
    if progress and env.is_main:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=f"train-exits {config.task}", unit="step", dynamic_ncols=True)
    to_metric = task.to_lpips_images
    n_exits = len(model.branches)
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    while step < end:
        t0 = time.perf_counter()
        lr = lr_at(recipe, step, config.steps)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        inputs, (feats, cond, g, real) = trunk.batch(step)
        exit_feats = [feats[k - 1] for k in model.attach_after] if use_feat else feats
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=amp):
            outs = ddp_g(exit_feats, cond, g, return_features=use_feat)
        fakes = [(o[0] if use_feat else o).float() for o in outs]
        real = real.float()
        record: dict[str, Any] = {"step": step + 1, "lr": lr}

        # Discriminators first (on detached fakes), then the branches against the updated critics.
        if use_adv:
            d_losses = ddp_d(real, fakes, inputs)
            opt_d.zero_grad(set_to_none=True)
            torch.stack(d_losses).sum().backward()
            opt_d.step()
            for i, d in enumerate(d_losses):
                record[f"exit{i}/d"] = d.item()

        critics.requires_grad_(False)  # the branch step must not touch the critics' weights or grads
        total = real.new_zeros(())
        for i, fake in enumerate(fakes):
            terms = loss_fn(fake, real, to_metric)
            if use_feat:
                terms["feat"] = recipe.features * branches.adapters.loss(i, outs[i][1], feats)
            if use_adv:
                adv, fm = critics.critics[i].g_loss(fake, inputs, real if recipe.feature_matching > 0 else None)
                if recipe.adversarial > 0:
                    terms["adv"] = recipe.adversarial * adv
                if recipe.feature_matching > 0:
                    terms["fm"] = recipe.feature_matching * fm
            loss_i = sum(terms.values())
            total = total + loss_i
            record[f"exit{i}/g"] = loss_i.item()
            for k, v in terms.items():
                record[f"exit{i}/{k}"] = v.item()
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        critics.requires_grad_(True)
        step += 1
        record["sec"] = round(time.perf_counter() - t0, 4)

        if env.is_main:
            run.append_stats(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({f"e{i}": f"{record[f'exit{i}/g']:.3f}" for i in range(n_exits)})
        if step % config.checkpoint_every == 0 or step == config.steps:
            _checkpoint(run, env, step, branches, critics, opt_g, opt_d)
    if bar is not None:
        bar.close()
    return run.path


def _split_branches(state: dict) -> dict:
    """The branches and, when feature distillation trains them, the adapters as their own component:
    ``branches`` stays what inference loads (and what ``RunDir.export`` keeps)."""
    out = {"branches": {k: v for k, v in state.items() if not k.startswith("adapters.")}}
    adapters = {k: v for k, v in state.items() if k.startswith("adapters.")}
    if adapters:
        out["adapters"] = adapters
    return out


def _checkpoint(run: RunDir, env: DistEnv, step: int, branches, critics, opt_g, opt_d) -> None:
    # Every rank fingerprints its replica; DDP must have kept them identical, and we check it
    # rather than trust it (a diverged replica would silently make the checkpoint rank-dependent).
    # Parameters only: BatchNorm running statistics are updated locally after DDP broadcasts rank
    # 0's buffers at every forward, so they differ by design; the checkpoint keeps rank 0's.
    fingerprint = tensor_fingerprint(dict(branches.named_parameters()))
    fingerprints = [fingerprint]
    if env.distributed:
        fingerprints = [None] * env.world_size
        torch.distributed.all_gather_object(fingerprints, fingerprint)
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"DDP replicas diverged at step {step}: branch fingerprints {fingerprints}")
    if not env.is_main:
        return
    g_t, g_meta = optimizer_tensors(opt_g)
    d_t, d_meta = optimizer_tensors(opt_d)
    run.save_checkpoint(
        step,
        {**_split_branches(branches.state_dict()), "critics": critics.state_dict(), "opt_g": g_t, "opt_d": d_t},
        {"opt_g": g_meta, "opt_d": d_meta, "replica_fingerprints": fingerprints},
    )


def load_exits(run_dir: str | Path, device: str | torch.device = "cpu", *, task=None, trust_task_code: bool = False):
    """``(task, model)`` of a finished (or interrupted) run: the backbone with its trained branches, eval mode.

    The task is ``task`` (a Task or a spec the user names) or the spec the run config stores, resolved to
    registered names and entry points; a recorded ``module:attr`` (and a bank's key function) only with
    ``trust_task_code=True`` (:func:`fiancee.tasks.registry.resolve_folder_task`). Its exit stages must be
    the ones the run recorded.
    """
    from ..specs import allow_folder_code
    from ..tasks.registry import resolve_folder_task

    run = RunDir(run_dir)
    config = read_run_config(run)
    task = resolve_folder_task(config["task"], run.config_path, task=task, trust_task_code=trust_task_code)
    if "attach_after" in config and list(config["attach_after"]) != list(task.attach_after):
        raise ValueError(
            f"{run.path} was trained with exits after stages {config['attach_after']}, but task "
            f"{config['task']!r} now declares {list(task.attach_after)}: the branches would not fit"
        )
    backbone = task.load_backbone(device)
    with allow_folder_code(every=trust_task_code):  # the run's bank's key function
        model = build_exits(task, backbone, config["scale"], config["min_channels"], run_bank_path(run.path)).to(device)
    ckpt = run.load_checkpoint(["branches"], device=device)
    if ckpt is None:
        raise ValueError(f"{run.path} has no checkpoint yet (latest.json missing): train first")
    _Branches(model).load_state_dict(ckpt[0]["branches"])
    return task, model.eval()


def read_run_config(run: RunDir) -> dict:
    """The config of an exit-training run as this release writes it (header ``fiancee-exits-run``, field
    ``attach_after``); a run written before (kind ``exits``, field ``exits``) is read through
    :func:`fiancee.core.folders.upgrade`. Anything else is refused in one line."""
    config = run.read_config()
    kind, version = header(config)
    if kind != EXITS_RUN:
        got = config.get("kind") if isinstance(config, dict) else None
        raise ValueError(f"{run.path} is not an exit-training run (config.json kind={got!r})")
    if version != RUN_FORMAT:
        raise ValueError(
            f"{run.config_path}: exit-training run format {version!r}; this fiancee reads format {RUN_FORMAT}"
        )
    config = upgrade(config)
    if "attach_after" in config:  # its type named here, not a TypeError where it is compared with the task's
        config_int_list(config, "attach_after", run.config_path, minimum=1)
    return config


def run_bank_path(run_dir: str | Path) -> Path | None:
    """The run's copy of the bank it was trained with (``RUN/bank``, its config's ``bank``), or None.

    The entry must name a folder inside the run: runs written before runs kept a copy named the user's
    bank folder instead, and are refused with the way out."""
    run = RunDir(run_dir)
    entry = run.read_config().get("bank")
    if entry is None:
        return None
    if entry != RUN_BANK:
        raise ValueError(
            f"{run.config_path}: field 'bank' must be {RUN_BANK!r} (the run's own copy of its bank); got "
            f"{entry!r}: copy that bank there (`FeatureBank.from_pretrained(...)"
            f".save_pretrained(RUN/{RUN_BANK})`) and set the field to {RUN_BANK!r}"
        )
    return resolve_inside(run.path, entry, "config.json's 'bank' entry")


def _check_resume_bank(run: RunDir, saved: dict, config: ExitTrainConfig) -> None:
    """A resumed run keeps the bank it started with: the command must pass one exactly when the run has one,
    and it must be the same bank (its manifest equals the run's copy's)."""
    has = saved.get("bank") is not None
    if has != (config.bank is not None):
        raise ValueError(
            f"cannot resume {run.path}: it was trained {'with' if has else 'without'} a bank, this command "
            f"passes {'none' if config.bank is None else '--bank ' + str(config.bank)}"
        )
    if has:
        # Compared as this release writes them: a run's copy may carry the old header (format_version).
        mine = upgrade(read_json(run_bank_path(run.path) / "manifest.json"))
        given = upgrade(read_json(Path(config.bank) / "manifest.json"))
        if mine != given:
            raise ValueError(
                f"cannot resume {run.path}: --bank {config.bank} is not the bank the run was trained with "
                f"(its copy {run.path / RUN_BANK} has another manifest)"
            )


def run_guide(run_dir: str | Path, model: ExitGenerator):
    """The guide callable of the bank an exit run was trained with (checked against the backbone), or None."""
    bank = run_bank_path(run_dir)
    if bank is None:
        return None
    from ..bank import load_bank

    return load_bank(bank, model.backbone).guide
