"""The ALMR sweep plan: one resolved recipe per grid point that differs from the others only in the
ALMR and the learning rate (equal token budget), a manifest, resumption through run states, and
one-line errors for a missing or unfinished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_cpt.almr.fit import collect, fit
from megatron_cpt.almr.objective import Objective
from megatron_cpt.almr.sweep import (LaunchResult, RunState, plan_runs, read_plan, run_state,
                                     run_sweep, write_plan)
from megatron_cpt.config.loader import apply_overrides, read_yaml
from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.errors import ConfigError, UserError
from megatron_cpt.run_files import record_end, record_start

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo_llama3_tiny_cpt_2xcpu.yaml"
ALMRS, LRS = [0.5, 0.1, 0.33], [3e-3, 1e-3]


def _base(*overrides: str) -> dict:
    # The initial weights are only named: nothing here starts a run.
    return apply_overrides(read_yaml(DEMO), ["train.eval_interval=10",
                                             "checkpoint.pretrained=/checkpoints/base", *overrides])


def _plan(tmp_path: Path, base: dict | None = None, **kwargs):
    kwargs.setdefault("tokens", 50 * 1024 - 100)
    return plan_runs(base or _base(), ALMRS, LRS, str(tmp_path / "sweep"), **kwargs)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_point_differs_only_in_almr_and_lr_with_an_equal_token_budget(tmp_path):
    plan = _plan(tmp_path)
    # 51,100 tokens at 8 x 128 tokens per step: rounded up to 50 steps.
    assert plan.steps == 50
    assert plan.tokens_per_step == 1024 and plan.tokens == plan.steps * 1024
    assert plan.almrs == (0.1, 0.33, 0.5) and plan.lrs == (1e-3, 3e-3)
    assert [r.name for r in plan.runs] == ["reference"] + [
        f"almr{a:g}_lr{lr:g}" for lr in (1e-3, 3e-3) for a in (0.1, 0.33, 0.5)]
    base = _flatten(plan.runs[1].recipe)
    for run in plan.runs[1:]:
        flat = _flatten(run.recipe)
        assert flat["data.mixture.almr"] == run.almr and flat["optim.lr"] == run.lr
        assert flat["optim.min_lr"] == pytest.approx(run.lr / 10)  # the demo's ratio
        assert flat["train.steps"] == plan.steps
        assert flat["logging.run_dir"] == str(tmp_path / "sweep" / run.name)
        differs = {k for k in flat if flat[k] != base[k]}
        assert differs <= {"data.mixture.almr", "optim.lr", "optim.min_lr", "logging.run_dir"}


def test_a_constant_schedule_keeps_min_lr_and_init_lr_equal_to_each_lr(tmp_path):
    # 2e-5 * (7e-4 / 2e-5) rounds to 7.000000000000001e-4, above the lr itself.
    base = _base("optim.lr=2e-5", "optim.min_lr=2e-5", "optim.schedule.init_lr=2e-5",
                 "optim.schedule.decay_style=constant")
    plan = plan_runs(base, ALMRS, [7e-4, 3e-3], str(tmp_path / "sweep"), tokens=10 * 1024)
    for run in plan.runs[1:]:
        optim = run.recipe["optim"]
        assert optim["min_lr"] == optim["schedule"]["init_lr"] == optim["lr"] == run.lr


def test_tokens_must_give_an_evaluated_last_step(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.eval_interval: 10 must divide the sweep's "
                                          r"train.steps 49 .*train.eval_interval=49\)$"):
        _plan(tmp_path, tokens=49 * 1024)
    assert _plan(tmp_path, tokens=49 * 1024 + 1).steps == 50
    with pytest.raises(UserError, match=r"^--tokens: 100 is less than one step \(1024 tokens"):
        _plan(tmp_path, tokens=100)


@pytest.mark.parametrize("override, message", [
    ("checkpoint.dir=/tmp/shared", "^checkpoint.dir: each sweep run keeps its checkpoints"),
    ("train.stop_at_step=5", "^train.stop_at_step: every sweep run trains to train.steps"),
    ("checkpoint.pretrained=null", r"^checkpoint.pretrained: the ALMR sweep continues pre-training "
                                   r"from initial weights .*; set checkpoint.pretrained=CKPT$"),
    ("optim.lr=-1", r"^optim.lr: must be positive, got -1.0$"),
])
def test_recipe_errors_name_the_field(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, _base(override))


def test_grid_values_are_checked(tmp_path):
    with pytest.raises(UserError, match=r"^--almr: every value must be in \[0, 1\], got 1.5$"):
        plan_runs(_base(), [0.1, 1.5], LRS, str(tmp_path))
    with pytest.raises(UserError, match=r"^--lr: every value must be positive, got 0$"):
        plan_runs(_base(), ALMRS, [0.0], str(tmp_path))
    with pytest.raises(UserError, match=r"^--almr: 0.1 given more than once$"):
        plan_runs(_base(), [0.1, 0.1], LRS, str(tmp_path))


def test_written_recipes_load_back_and_a_different_rerun_is_refused(tmp_path):
    plan = _plan(tmp_path)
    write_plan(plan)
    write_plan(plan)  # the same plan again: a resume, nothing rewritten
    for run in plan.runs:
        path = plan.run_dir(run) / "recipe.yaml"
        assert load_recipe(path).to_dict() == run.recipe
    assert read_plan(plan.sweep_dir) == plan
    other = plan_runs(_base(), [0.1, 0.2, 0.33], LRS, plan.sweep_dir, tokens=50 * 1024)
    with pytest.raises(UserError, match=r"sweep.json: holds a different sweep \(almrs, runs differ; "
                                        r"a rerun may only add ALMRs, learning rates or seeds\)"):
        write_plan(other)
    longer = plan_runs(_base(), ALMRS, LRS, plan.sweep_dir, tokens=60 * 1024)
    with pytest.raises(UserError, match=r"holds a different sweep \(steps, tokens differ; "):
        write_plan(longer)
    changed = plan_runs(_base("optim.adam_beta2=0.99"), ALMRS, LRS, plan.sweep_dir,
                        tokens=50 * 1024)
    with pytest.raises(UserError, match=r"reference/recipe.yaml: differs from the recipe"):
        write_plan(changed)
    reseeded = plan_runs(_base("train.seed=7"), ALMRS, LRS, plan.sweep_dir, tokens=50 * 1024)
    with pytest.raises(UserError, match=r"holds a different sweep \(seeds, runs differ; "):
        write_plan(reseeded)
    with pytest.raises(UserError, match=r"^\S+/nowhere: not a sweep directory \(no sweep.json"):
        read_plan(tmp_path / "nowhere")


def _finish(run_dir: Path, step: int, losses: dict[str, float], partial: bool = False) -> None:
    """What a run writes: metrics.jsonl with the final evaluation record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = [{"step": s, "loss": 5.0} for s in range(1, step)]
    final = {"step": step, "loss": 5.0}
    if not partial:
        for lang, value in losses.items():
            final[f"val_loss_by_language/{lang}"] = value
            final[f"val_batch_loss_by_language/{lang}"] = [value - 0.01, value + 0.01]
    with open(run_dir / "metrics.jsonl", "w") as out:
        for record in records + [final]:
            out.write(json.dumps(record) + "\n")


def _losses(almr: float, lr: float) -> dict[str, float]:
    """Monotone in the ALMR; 0.5 x zh + 0.5 x mean(en, code) is lowest at 0.2 (lr < 2e-3) or 0.3."""
    best = 0.2 if lr < 2e-3 else 0.3
    original = 5.0 + 4.0 * (1.0 - best) * almr
    return {"zh": 7.0 + 2.0 * (1.0 - almr) ** 2, "en": original, "code": original}


class RecordingLauncher:
    """Stands in for the local one: finishes each run it is given by writing its metrics."""

    def __init__(self):
        self.launched: list[str] = []

    def launch(self, plan, runs):
        for run in runs:
            self.launched.append(run.name)
            step = plan.final_step(run)
            losses = ({"zh": 8.0, "en": 5.0, "code": 5.0} if run.kind == "reference"
                      else _losses(run.almr, run.lr))
            _finish(plan.run_dir(run), step, losses)
        return [LaunchResult(run.name, "finished", "") for run in runs]


def test_run_sweep_skips_finished_points_and_resumes_the_rest(tmp_path):
    plan = _plan(tmp_path, tokens=10 * 1024)
    write_plan(plan)
    first, unfinished = plan.runs[1], plan.runs[2]
    _finish(plan.run_dir(first), plan.steps, _losses(first.almr, first.lr))
    _finish(plan.run_dir(unfinished), 6, {}, partial=True)
    assert run_state(plan.run_dir(first), plan.steps).status == "done"
    assert run_state(plan.run_dir(unfinished), plan.steps).step == 6
    launcher = RecordingLauncher()
    results = run_sweep(plan, launcher)
    assert launcher.launched == [r.name for r in plan.runs if r.name != first.name]
    assert [r.status for r in results].count("skipped") == 1
    again = RecordingLauncher()
    run_sweep(plan, again)
    assert again.launched == []

    result = fit(collect(plan.sweep_dir), Objective("weighted", weight=0.5), bootstrap=50)
    assert result.original_languages == ("en", "code")
    assert result.validation_batches == 2 and result.replicates == 50
    assert result.reference == {"zh": 8.0, "en": 5.0, "code": 5.0}


def test_a_widened_grid_keeps_the_finished_runs_and_runs_only_the_new_points(tmp_path):
    plan = _plan(tmp_path, tokens=10 * 1024)
    run_sweep(plan, RecordingLauncher())
    wider = plan_runs(_base(), [0.05, *ALMRS, 0.7], [*LRS, 1e-2], plan.sweep_dir,
                      tokens=10 * 1024)
    launcher = RecordingLauncher()
    results = run_sweep(wider, launcher)
    old = {r.name for r in plan.runs}
    assert launcher.launched == [r.name for r in wider.runs if r.name not in old]
    assert len(launcher.launched) == 5 * 3 - 3 * 2
    assert sorted(r.run for r in results if r.status == "skipped") == sorted(old)
    assert read_plan(plan.sweep_dir) == wider
    assert fit(collect(plan.sweep_dir), Objective("weighted"), bootstrap=0).almrs == wider.almrs
    # Back to the smaller grid: refused, the manifest kept.
    with pytest.raises(UserError, match=r"holds a different sweep \(almrs, lrs, runs differ; "):
        write_plan(plan)
    assert read_plan(plan.sweep_dir) == wider


def test_collect_names_a_missing_or_unfinished_run(tmp_path):
    plan = _plan(tmp_path, tokens=10 * 1024)
    write_plan(plan)
    RecordingLauncher().launch(plan, plan.runs)
    target = plan.runs[3]
    metrics = plan.run_dir(target) / "metrics.jsonl"
    metrics.unlink()
    with pytest.raises(UserError, match=rf"^{plan.run_dir(target)}: not run yet \(no "
                                        rf"metrics.jsonl\); run `megatron-cpt almr sweep` again"):
        collect(plan.sweep_dir)
    _finish(plan.run_dir(target), 4, {}, partial=True)
    with pytest.raises(UserError, match=rf"^{plan.run_dir(target)}: unfinished \(step 4 of 10\); "
                                        rf"run `megatron-cpt almr sweep` again to resume it$"):
        collect(plan.sweep_dir)
    (plan.run_dir(plan.runs[0]) / "recipe.yaml").unlink()
    with pytest.raises(UserError, match=r"reference/recipe.yaml: missing"):
        collect(plan.sweep_dir)


def test_a_diverged_run_is_not_rerun_and_is_left_out_of_the_fit(tmp_path):
    plan = plan_runs(_base(), [0.1, 0.2, 0.33, 0.5], LRS, str(tmp_path / "sweep"), tokens=10 * 1024)
    write_plan(plan)
    diverged = next(r for r in plan.runs if r.almr == 0.1 and r.lr == 3e-3)
    run_dir = plan.run_dir(diverged)
    with open(run_dir / "metrics.jsonl", "w") as out:
        out.write(json.dumps({"step": 1, "loss": 5.0}) + "\n")
        out.write(json.dumps({"step": 2, "loss": None, "skipped": True}) + "\n")
    # Killed after a skipped step (train.nonfinite_loss=skip): it resumes.
    record_start(run_dir, 0, plan.steps)
    assert run_state(run_dir, plan.steps) == RunState("partial", 2, None)
    record_end(run_dir, 2, "nonfinite", None)  # what the run writes when it stops on one
    assert run_state(run_dir, plan.steps) == RunState("diverged", 2, None)
    launcher = RecordingLauncher()
    run_sweep(plan, launcher)
    assert diverged.name not in launcher.launched and len(launcher.launched) == len(plan.runs) - 1
    results = collect(plan.sweep_dir)
    nan_runs = [r.name for r in results.runs if r.losses["zh"] != r.losses["zh"]]
    assert nan_runs == [diverged.name]
    result = fit(results, Objective("weighted"), bootstrap=20)
    assert [o.almr for o in result.optima] == [pytest.approx(0.2, abs=0.01),
                                               pytest.approx(0.3, abs=0.01)]
    assert result.replicates == 20 and all(o.std is not None for o in result.optima)


def test_seed_replicates_differ_only_in_the_training_seed(tmp_path):
    plan = _plan(tmp_path, seeds=3)
    assert plan.seeds == (1234, 1235, 1236)
    point = [r for r in plan.runs if r.almr == 0.33 and r.lr == 1e-3]
    assert [(r.name, r.seed) for r in point] == [
        ("almr0.33_lr0.001", 1234), ("almr0.33_lr0.001_seed1235", 1235),
        ("almr0.33_lr0.001_seed1236", 1236)]
    assert len(plan.runs) == 1 + 3 * 2 * 3
    first = _flatten(point[0].recipe)
    assert first["data.valid_seed"] is None  # the recipe's seed: the run of a 1-seed sweep
    assert point[0].recipe == _plan(tmp_path).runs[LRS[::-1].index(1e-3) * 3 + 2].recipe
    for run in point[1:]:
        flat = _flatten(run.recipe)
        assert flat["train.seed"] == run.seed and flat["data.valid_seed"] == 1234
        assert {k for k in flat if flat[k] != first[k]} == {"train.seed", "data.valid_seed",
                                                             "logging.run_dir"}
    with pytest.raises(UserError, match=r"^--seeds: runs per grid point, a whole number >= 1, "
                                        r"got 0$"):
        _plan(tmp_path, seeds=0)


def test_more_seeds_keep_the_finished_runs(tmp_path):
    plan = _plan(tmp_path, tokens=10 * 1024)
    run_sweep(plan, RecordingLauncher())
    more = _plan(tmp_path, tokens=10 * 1024, seeds=2)
    launcher = RecordingLauncher()
    run_sweep(more, launcher)
    assert launcher.launched == [r.name for r in more.runs if r.seed == 1235]
    assert read_plan(plan.sweep_dir) == more
    results = collect(plan.sweep_dir)
    assert sorted({r.seed for r in results.runs}) == [1234, 1235]
    with pytest.raises(UserError, match=r"holds a different sweep \(seeds, runs differ; "):
        write_plan(plan)


def test_replicates_train_on_other_samples_and_validate_on_the_same(tmp_path):
    from megatron_cpt.data.datasets import build_training_data
    from megatron_cpt.data.inspect_mix import single_process_group
    from mixture_fixtures import mixture_overrides, write_two_language_mixture

    mixture = write_two_language_mixture(tmp_path)
    recipe = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"

    def samples(*overrides):
        cfg = load_recipe(recipe, mixture_overrides(mixture, ["data.split=80,20,0",
                                                              "train.seq_length=32", *overrides]))
        with single_process_group(str(tmp_path)):
            data = build_training_data(cfg.data, cfg.train, cfg.model.vocab_size, 16, 8,
                                       cache_dir=str(tmp_path / "cache"))
            tokens = lambda ds: [ds[i]["tokens"].tolist() for i in range(8)]  # noqa: E731
            return (tokens(data.train), tokens(data.valid),
                    {name: tokens(ds) for name, ds in data.valid_by_source.items()})

    train, valid, by_source = samples()
    other_train, other_valid, other_by_source = samples("train.seed=1235", "data.valid_seed=1234")
    assert other_train != train
    assert (other_valid, other_by_source) == (valid, by_source)
    unpinned = samples("train.seed=1235")
    assert unpinned[2] != by_source  # without data.valid_seed the seed moves validation too
