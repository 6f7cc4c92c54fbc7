"""The ALMR x learning-rate grid: one run directory per point and seed with its resolved recipe, a
manifest, and a runner that skips finished runs and resumes unfinished ones.

    tree = apply_overrides(read_yaml("examples/demo_llama3_tiny_cpt_2xcpu.yaml"), overrides)
    plan = plan_runs(tree, almrs=[0.1, 0.2, 0.33, 0.5], lrs=[1e-3, 3e-3, 1e-2],
                     sweep_dir="runs/almr_demo", tokens=1_000_000, seeds=3)
    write_plan(plan)
    run_sweep(plan, LocalLauncher())

Every point trains the same number of steps of the same batch and sequence length, so the token
budget is equal and points differ only in ``data.mixture.almr`` and ``optim.lr`` (``optim.min_lr``
and ``optim.schedule.init_lr`` keep their ratio to ``optim.lr``). With ``seeds`` R > 1 each point
runs R times, with ``train.seed`` = the recipe's seed + 0 .. R-1: the seed orders the training
samples (the demo models have no dropout, and their initial weights come from the checkpoint);
``data.valid_seed`` stays the recipe's, so every run evaluates the same validation batches. One
more run, ``reference``, evaluates the initial weights (``checkpoint.pretrained``) on those
validation sets: the losses before CPT that the constrained objective compares with.

    SWEEP_DIR/sweep.json                 the manifest (grid, budget, languages, runs)
    SWEEP_DIR/<run>/recipe.yaml          the resolved recipe of each run
    SWEEP_DIR/<run>/metrics.jsonl ...    what `megatron-cpt train` writes there
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Protocol, Sequence

import yaml

from megatron_cpt.config.checkpoint import CheckpointConfig
from megatron_cpt.config.loader import set_dotted
from megatron_cpt.config.recipe import recipe_from_dict
from megatron_cpt.errors import ConfigError, UserError
from megatron_cpt.files import write_atomic
from megatron_cpt.run_files import LANGUAGE_LOSS, read_metrics, read_starts

MANIFEST = "sweep.json"
RECIPE = "recipe.yaml"
REFERENCE = "reference"
FORMAT = 1


@dataclass(frozen=True)
class PlannedRun:
    name: str  # also its directory under the sweep directory
    kind: Literal["train", "reference"]
    almr: Optional[float]  # None for the reference
    lr: Optional[float]
    recipe: dict  # the resolved recipe (Recipe.to_dict())
    seed: Optional[int] = None  # train.seed of a training run; None for the reference

    @property
    def worker_module(self) -> str:
        """The module every rank runs (``python -m MODULE RECIPE``)."""
        return "megatron_cpt.train.worker" if self.kind == "train" else "megatron_cpt.almr.reference"

    def local_command(self, recipe_path: Path) -> list[str]:
        """Arguments after ``python`` that start this run's ranks on this machine."""
        if self.kind == "train":
            return ["-m", "megatron_cpt", "train", str(recipe_path)]
        return ["-m", "megatron_cpt", "almr", "reference", str(recipe_path)]


@dataclass(frozen=True)
class SweepPlan:
    sweep_dir: str
    recipe_source: str  # where the base recipe came from, for the manifest
    almrs: tuple[float, ...]
    lrs: tuple[float, ...]
    steps: int
    tokens_per_step: int
    additional_language: str
    languages: tuple[str, ...]
    runs: tuple[PlannedRun, ...]  # the reference first, then the grid by LR, then ALMR, then seed
    seeds: tuple[int, ...] = ()  # train.seed of each replicate; the first is the recipe's

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def run_dir(self, run: PlannedRun) -> Path:
        return Path(self.sweep_dir) / run.name

    def final_step(self, run: PlannedRun) -> int:
        """The step of the evaluation a finished run has recorded (the reference records step 0)."""
        return self.steps if run.kind == "train" else 0

    def manifest(self) -> dict:
        return {"format": FORMAT, "recipe": self.recipe_source, "almrs": list(self.almrs),
                "lrs": list(self.lrs), "steps": self.steps,
                "tokens_per_step": self.tokens_per_step, "tokens": self.tokens,
                "additional_language": self.additional_language,
                "languages": list(self.languages), "seeds": list(self.seeds),
                "runs": [{"name": r.name, "kind": r.kind, "almr": r.almr, "lr": r.lr,
                          "seed": r.seed} for r in self.runs]}


def run_name(almr: float, lr: float, seed: Optional[int] = None) -> str:
    """``almr0.3_lr0.003``; a replicate with another seed than the recipe's: ``..._seed1235``."""
    return f"almr{almr:g}_lr{lr:g}" + ("" if seed is None else f"_seed{seed}")


def _check_values(values: Sequence[float], option: str, valid, expected: str) -> tuple:
    if not values:
        raise UserError(f"{option}: give at least one value")
    for value in values:
        if not (math.isfinite(value) and valid(value)):
            raise UserError(f"{option}: every value must be {expected}, got {value:g}")
    names = [f"{v:g}" for v in values]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{option}: {', '.join(repeated)} given more than once")
    return tuple(sorted(float(v) for v in values))


def require_initial_weights(checkpoint: CheckpointConfig) -> None:
    """A sweep (and its reference) starts from ``checkpoint.pretrained``: from random weights the
    reference losses are those of noise, and the constrained objective compares with them."""
    if not checkpoint.pretrained:
        raise ConfigError("checkpoint.pretrained: the ALMR sweep continues pre-training from initial "
                          "weights and compares with their losses (the reference run); set "
                          "checkpoint.pretrained=CKPT")


def plan_runs(base: dict, almrs: Sequence[float], lrs: Sequence[float], sweep_dir: str,
              tokens: Optional[int] = None, recipe_source: str = "", seeds: int = 1) -> SweepPlan:
    """Resolve and validate the recipe of every run (nothing is written).

    ``base``: the recipe tree with the user's overrides applied; ``tokens``: the training tokens
    of every run (rounded up to whole steps), default ``train.steps`` of the recipe; ``seeds``:
    runs per point, each with its own ``train.seed``.
    """
    recipe = recipe_from_dict(copy.deepcopy(base)).validate()
    mixture = recipe.data.mixture
    if mixture is None:
        raise ConfigError("data.mixture: the ALMR sweep varies data.mixture.almr, but the recipe "
                          "names its data with data.paths")
    require_initial_weights(recipe.checkpoint)
    if recipe.checkpoint.dir is not None:
        raise ConfigError("checkpoint.dir: each sweep run keeps its checkpoints in its own run "
                          "directory; leave checkpoint.dir unset (override: checkpoint.dir=null)")
    if recipe.train.stop_at_step is not None:
        raise ConfigError("train.stop_at_step: every sweep run trains to train.steps; remove it")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds: runs per grid point, a whole number >= 1, got {seeds}")
    almrs = _check_values(almrs, "--almr", lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
    lrs = _check_values(lrs, "--lr", lambda v: v > 0, "positive")
    tokens_per_step = recipe.train.global_batch_size * recipe.train.seq_length
    steps = recipe.train.steps
    if tokens is not None:
        if tokens < tokens_per_step:
            raise UserError(f"--tokens: {tokens} is less than one step ({tokens_per_step} tokens "
                            f"= train.global_batch_size x train.seq_length)")
        steps = -(-tokens // tokens_per_step)
    interval = recipe.train.eval_interval
    if interval <= 0 or steps % interval:
        raise ConfigError(f"train.eval_interval: {interval} must divide the sweep's train.steps "
                          f"{steps} so that the last step is evaluated (e.g. "
                          f"train.eval_interval={steps})")
    if recipe.eval.interval and steps % recipe.eval.interval:
        raise ConfigError(f"eval.interval: {recipe.eval.interval} must divide the sweep's "
                          f"train.steps {steps} so that the last step's accuracy is recorded")

    optim = recipe.optim
    first_seed = recipe.train.seed
    valid_seed = first_seed if recipe.data.valid_seed is None else recipe.data.valid_seed
    replicate_seeds = tuple(first_seed + i for i in range(seeds))

    def resolve(kind: str, almr: float, lr: float, seed: int) -> PlannedRun:
        name = REFERENCE if kind == "reference" else run_name(
            almr, lr, None if seed == first_seed else seed)
        tree = copy.deepcopy(base)
        # The ratio to optim.lr, never above lr itself (rounding would break min_lr == lr).
        changes = [("data.mixture.almr", almr), ("optim.lr", lr),
                   ("optim.min_lr", min(lr, optim.min_lr / optim.lr * lr)),
                   ("optim.schedule.init_lr", min(lr, optim.schedule.init_lr / optim.lr * lr)),
                   ("train.steps", steps), ("logging.run_dir", str(Path(sweep_dir) / name))]
        if seed != first_seed:  # another order of training samples, the same validation batches
            changes += [("train.seed", seed), ("data.valid_seed", valid_seed)]
        for key, value in changes:
            set_dotted(tree, key, value)
        try:
            resolved = recipe_from_dict(tree).validate()
        except ConfigError as exc:
            raise ConfigError(f"{exc} (sweep run {name})") from None
        reference = kind == "reference"
        return PlannedRun(name=name, kind=kind, almr=None if reference else almr,
                          lr=None if reference else lr, recipe=resolved.to_dict(),
                          seed=None if reference else seed)

    runs = [resolve("reference", mixture.almr, optim.lr, first_seed)]
    runs += [resolve("train", a, lr, seed) for lr in lrs for a in almrs for seed in replicate_seeds]
    languages = tuple(dict.fromkeys(s.language for s in mixture.sources))
    return SweepPlan(sweep_dir=str(sweep_dir), recipe_source=recipe_source, almrs=almrs, lrs=lrs,
                     steps=steps, tokens_per_step=tokens_per_step,
                     additional_language=mixture.additional_language, languages=languages,
                     runs=tuple(runs), seeds=replicate_seeds)


def _recipe_text(run: PlannedRun) -> str:
    return yaml.safe_dump(run.recipe, sort_keys=False)


GROWING = ("almrs", "lrs", "seeds", "runs")  # a rerun may add to these, never drop from them


def write_plan(plan: SweepPlan) -> None:
    """Write the manifest and each run's recipe. An existing sweep directory must hold this plan
    (a rerun resumes it) or a part of it: a grid widened by more ALMRs or learning rates gets the
    new runs and a new manifest; the recipes of existing runs are never rewritten."""
    sweep_dir = Path(plan.sweep_dir)
    manifest_path = sweep_dir / MANIFEST
    planned = plan.manifest()
    existing = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if existing is not None:
        # The recipe's path may be spelled differently; its content is compared run by run below.
        fixed = sorted(k for k in set(existing) | set(planned) if k not in ("recipe", *GROWING)
                       and existing.get(k) != planned.get(k))
        dropped = [k for k in GROWING if any(v not in planned[k] for v in existing.get(k, []))]
        if fixed or dropped:
            raise UserError(f"{manifest_path}: holds a different sweep ({', '.join(fixed + dropped)}"
                            f" differ; a rerun may only add ALMRs, learning rates or seeds); use a "
                            f"new sweep directory")
    for run in plan.runs:
        path = plan.run_dir(run) / RECIPE
        if path.is_file() and path.read_text() != _recipe_text(run):
            raise UserError(f"{path}: differs from the recipe this sweep would run now; use a new "
                            f"sweep directory")
    for run in plan.runs:
        plan.run_dir(run).mkdir(parents=True, exist_ok=True)
        path = plan.run_dir(run) / RECIPE
        if not path.is_file():
            write_atomic(path, _recipe_text(run))
    if existing is None or any(existing.get(k) != planned[k] for k in GROWING):
        write_atomic(manifest_path, json.dumps(planned, indent=2) + "\n")


def read_plan(sweep_dir: str | Path) -> SweepPlan:
    """The plan of an existing sweep directory (its manifest and run recipes)."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{sweep_dir}: not a sweep directory (no {MANIFEST}; `megatron-cpt almr "
                        f"sweep` creates one)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    runs = []
    for entry in manifest["runs"]:
        recipe_path = sweep_dir / entry["name"] / RECIPE
        if not recipe_path.is_file():
            raise UserError(f"{recipe_path}: missing (the sweep directory is incomplete)")
        recipe = yaml.safe_load(recipe_path.read_text())
        # Sweeps written before seed replicates: one run per point, the recipe's seed.
        seed = entry.get("seed", recipe["train"]["seed"] if entry["kind"] == "train" else None)
        runs.append(PlannedRun(name=entry["name"], kind=entry["kind"], almr=entry["almr"],
                               lr=entry["lr"], recipe=recipe, seed=seed))
    seeds = manifest.get("seeds") or sorted({r.seed for r in runs if r.seed is not None})
    return SweepPlan(sweep_dir=str(sweep_dir), recipe_source=manifest["recipe"],
                     almrs=tuple(manifest["almrs"]), lrs=tuple(manifest["lrs"]),
                     steps=manifest["steps"], tokens_per_step=manifest["tokens_per_step"],
                     additional_language=manifest["additional_language"],
                     languages=tuple(manifest["languages"]), runs=tuple(runs), seeds=tuple(seeds))


@dataclass(frozen=True)
class RunState:
    status: Literal["done", "diverged", "partial", "pending"]
    step: int  # the last step recorded in metrics.jsonl
    final: Optional[dict]  # the final evaluation record when done

    @property
    def finished(self) -> bool:
        return self.status in ("done", "diverged")


def run_state(run_dir: Path, final_step: int) -> RunState:
    """``done`` (the final evaluation is recorded), ``diverged`` (its last start ended on a
    non-finite loss, ``progress.jsonl``: rerunning it would diverge again), ``partial``
    (resumable) or ``pending``."""
    starts = read_starts(run_dir)
    if starts and starts[-1].ended == "nonfinite":
        return RunState("diverged", starts[-1].last_step, None)
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return RunState("pending", 0, None)
    records = read_metrics(run_dir)
    for record in reversed(records):
        if record.get("step") == final_step and any(k.startswith(LANGUAGE_LOSS) for k in record):
            return RunState("done", final_step, record)
    return RunState("partial", records[-1].get("step", 0) if records else 0, None)


@dataclass(frozen=True)
class LaunchResult:
    run: str
    status: Literal["finished", "failed", "submitted", "written", "skipped"]
    detail: str  # a log path, a job id, or why


class Launcher(Protocol):
    """Starts runs of a plan: the local one runs them in turn and returns when they end; a batch
    system's submits them and returns at once (their state is read back from the run dirs)."""

    def launch(self, plan: SweepPlan, runs: Sequence[PlannedRun]) -> list[LaunchResult]: ...


def run_sweep(plan: SweepPlan, launcher: Launcher) -> list[LaunchResult]:
    """Write the plan, then launch every run that has not finished (an unfinished one resumes
    from its latest checkpoint: ``checkpoint.resume``)."""
    write_plan(plan)
    results, todo = [], []
    for run in plan.runs:
        state = run_state(plan.run_dir(run), plan.final_step(run))
        if state.finished:
            results.append(LaunchResult(run.name, "skipped", f"{state.status} before"))
        else:
            todo.append(run)
    return results + (launcher.launch(plan, todo) if todo else [])
