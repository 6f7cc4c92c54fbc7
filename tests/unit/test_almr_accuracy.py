"""``almr fit --accuracy TASK``: the additional language scored by a benchmark's accuracy (higher
is better) instead of its validation loss, with the bootstrap resampling the task's items.

Stand-in sweep: ALMR 0.1-0.9 x LR 1e-3, 3e-3, 1e-2, 200 items; at each LR the accuracy is
0.6 - (ALMR - peak)^2 with the peak at 0.7, 0.5 and 0.3 (more of the new language helps, until
the replay it displaces matters more); an item is right in a run when it is among the first
accuracy x 200 (so runs share their easy items, as real runs do). With a tolerance that no
original language reaches, the best ALMR at each LR is the peak.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_cpt.almr.fit import collect, fit, format_fit
from megatron_cpt.almr.objective import Objective
from megatron_cpt.almr.plots import write_plots
from megatron_cpt.almr.sweep import plan_runs, write_plan
from megatron_cpt.errors import UserError
from test_almr_sweep import RecordingLauncher, _base

ITEMS = 200
PEAK = {1e-3: 0.7, 3e-3: 0.5, 1e-2: 0.3}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("almr_accuracy")
    plan = plan_runs(_base(), [0.1, 0.3, 0.5, 0.7, 0.9], list(PEAK), str(root / "sweep"),
                     tokens=10 * 1024)
    write_plan(plan)
    RecordingLauncher().launch(plan, plan.runs)
    for run in plan.runs:
        if run.kind == "reference":
            continue  # evaluated before CPT without the task: no pre-CPT accuracy
        path = plan.run_dir(run) / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        right = round(ITEMS * (0.6 - (run.almr - PEAK[run.lr]) ** 2))
        records[-1].update({"eval_acc/zh_mc": right / ITEMS,
                            "eval_item_correct/zh_mc": [1] * right + [0] * (ITEMS - right)})
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return plan.sweep_dir


def test_the_best_almr_is_the_accuracy_peak_with_a_bootstrap_over_items(sweep, tmp_path):
    results = collect(sweep, accuracy_task="zh_mc")
    peak_run = next(r for r in results.runs if (r.almr, r.lr) == (0.5, 3e-3))
    assert peak_run.losses["zh"] == pytest.approx(0.4)  # the error, 1 - 0.6
    assert np.isnan(results.reference.losses["zh"])
    result = fit(results, Objective("constrained", tolerance=0.9), bootstrap=100)
    assert [o.almr for o in result.optima] == [pytest.approx(PEAK[lr], abs=0.01) for lr in PEAK]
    assert all(o.std is not None and o.std < 0.1 for o in result.optima)
    assert (result.accuracy_items, result.validation_batches, result.replicates) == (ITEMS, 2, 100)
    assert result.objective_text == ("highest zh_mc accuracy with each of en, code at most "
                                     "90.0% above its pre-CPT loss")
    assert "bootstrap 100 replicates over 2 validation batches and 200 zh_mc items" in format_fit(result)
    names = sorted(p.name for p in write_plots(result, tmp_path))
    assert names == ["curves.png", "heatmap_code.png", "heatmap_en.png", "heatmap_zh.png",
                     "relation.png"]


def test_a_task_the_runs_did_not_record_is_named(sweep):
    with pytest.raises(UserError, match=r"metrics.jsonl: no eval_acc/cmmlu at step 10 \(the final "
                                        r"step must be evaluated"):
        collect(sweep, accuracy_task="cmmlu")
