"""`megatron-cpt almr status` and `almr fit` on a finished sweep directory (runs written by a
stand-in launcher): the fit writes its JSON and PNGs, bad input is one line with exit status 2 and
writes nothing."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint_fixtures import write_checkpoint_stub
from megatron_cpt.almr.sweep import plan_runs, write_plan
from megatron_cpt.config.loader import apply_overrides, read_yaml
from megatron_cpt.config.recipe import load_recipe
from mixture_fixtures import mixture_overrides, write_two_language_mixture
from test_almr_sweep import RecordingLauncher, _base


REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_cpt", "almr", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("almr_cli")
    plan = plan_runs(_base(), [0.1, 0.2, 0.33, 0.5], [1e-3, 3e-3], str(root / "sweep"),
                     tokens=10 * 1024)
    write_plan(plan)
    RecordingLauncher().launch(plan, plan.runs)
    return Path(plan.sweep_dir)


@pytest.mark.parametrize("source", ["megatron_cpt/almr/cli.py", "docs/ALMR.md"])
def test_the_documented_demo_sweep_plans(source):
    from megatron_cpt.almr import cli
    from megatron_cpt.cli import build_parser

    text = cli.__doc__ if source.endswith(".py") else (REPO / source).read_text()
    joined = re.sub(r"\\\s*\n\s*", " ", text)  # continuation lines
    [command] = [line.split("megatron-cpt ", 1)[1] for line in joined.splitlines()
                 if "megatron-cpt almr sweep examples/demo_" in line]
    args = build_parser("almr").parse_args(shlex.split(command))
    base = apply_overrides(read_yaml(REPO / args.recipe), args.overrides)
    plan = plan_runs(base, args.almr, args.lr, args.out, tokens=args.tokens)
    assert plan.steps == 100 and plan.tokens == args.tokens


def test_status_lists_every_run(sweep_dir):
    proc = _cli("status", str(sweep_dir))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("4 ALMR x 2 LR x 1 seed(s) (1234), 10 steps x 1,024 tokens = "
                             "10,240 tokens per run")
    assert lines[-1] == "done 9 (of 9)"
    assert any(line.split()[:5] == ["almr0.33_lr0.003", "0.33", "0.003", "1234", "done"]
               for line in lines)


def test_fit_writes_json_and_plots(sweep_dir, tmp_path):
    out = tmp_path / "fit"
    proc = _cli("fit", str(sweep_dir), "--objective", "weighted", "--bootstrap", "20",
                "--target-lr", "2e-3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "recommended: ALMR 0.2" in proc.stdout
    result = json.loads((out / "almr_fit.json").read_text())
    # weighted 0.5 of the stand-in losses: optimum 0.2 at 1e-3 and 0.3 at 3e-3.
    assert [o["almr"] for o in result["optima"]] == [pytest.approx(0.2, abs=0.01),
                                                     pytest.approx(0.3, abs=0.01)]
    assert {r["model"] for r in result["relations"]} == {"log-linear", "power-law"}
    assert result["recommendation"]["lr"] == 2e-3 and result["replicates"] == 20
    names = sorted(p.name for p in out.iterdir())
    assert names == ["almr_fit.json", "curves.png", "heatmap_code.png", "heatmap_en.png",
                     "heatmap_zh.png", "relation.png"]
    assert all((out / n).read_bytes()[:4] == b"\x89PNG" for n in names if n.endswith(".png"))


@pytest.mark.parametrize("args, message", [
    (["fit", "{sweep}", "--objective", "constrained", "--tolerance", "1.5"],
     "megatron-cpt almr: error: --tolerance: must be in [0, 1), got 1.5"),
    (["fit", "{sweep}/missing"],
     "megatron-cpt almr: error: {sweep}/missing: not a sweep directory (no sweep.json; "
     "`megatron-cpt almr sweep` creates one)"),
    (["fit", "{sweep}", "--original", "fr"],
     "megatron-cpt almr: error: --original: expected languages of the sweep other than zh "
     "(zh, en, code), got fr"),
])
def test_bad_input_is_one_line_and_writes_nothing(sweep_dir, tmp_path, args, message):
    out = tmp_path / "fit"
    proc = _cli(*[a.format(sweep=sweep_dir) for a in args], "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == message.format(sweep=sweep_dir)
    assert not out.exists()


def test_sweep_refuses_a_recipe_without_a_mixture(tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "examples" / "llama3_tiny_cpt_2xcpu.yaml"
    proc = _cli("sweep", str(recipe), "train.eval_interval=10", "--almr", "0.1,0.2,0.3",
                "--lr", "1e-3,2e-3", "--out", str(tmp_path / "sweep"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("megatron-cpt almr: error: data.mixture: the ALMR sweep varies "
                                   "data.mixture.almr, but the recipe names its data with data.paths")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("launcher", [[], ["--slurm", "--partition", "cpu", "--time", "01:00:00"]])
def test_sweep_checks_data_and_initial_weights_once_before_writing(tmp_path, capsys, launcher):
    from megatron_cpt.cli import main

    mixture = write_two_language_mixture(tmp_path)
    recipe = Path(__file__).resolve().parents[2] / "examples" / "llama3_tiny_cpt_2xcpu.yaml"
    init = write_checkpoint_stub(tmp_path / "init", load_recipe(recipe).model)
    sweep = tmp_path / "sweep"

    def sweep_error(*overrides: str) -> str:
        args = ["almr", "sweep", str(recipe), *mixture_overrides(mixture, [
            "train.eval_interval=10", "data.split=80,20,0", *overrides]), "--almr", "0.1,0.3,0.5",
                "--lr", "1e-3,3e-3", "--tokens", "10240", "--out", str(sweep), *launcher]
        assert main(args) == 2
        assert not sweep.exists()
        [line] = capsys.readouterr().err.splitlines()
        return line

    assert sweep_error() == (
        "megatron-cpt almr: error: checkpoint.pretrained: the ALMR sweep continues pre-training "
        "from initial weights and compares with their losses (the reference run); set "
        "checkpoint.pretrained=CKPT")
    assert sweep_error(f"checkpoint.pretrained={tmp_path}/missing") == (
        f"megatron-cpt almr: error: checkpoint '{tmp_path}/missing': no such directory")
    (tmp_path / "en_a.bin").unlink()
    assert sweep_error(f"checkpoint.pretrained={init}").startswith(
        f"megatron-cpt almr: error: data.mixture.sources[1].prefix: '{tmp_path}/en_a.bin' does "
        f"not exist")


def test_parallel_local_runs_may_not_share_a_data_cache(tmp_path, capsys):
    from megatron_cpt.cli import main

    mixture = write_two_language_mixture(tmp_path)
    recipe = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"
    init = write_checkpoint_stub(tmp_path / "init", load_recipe(recipe).model)
    sweep = tmp_path / "sweep"
    args = ["almr", "sweep", str(recipe), *mixture_overrides(mixture, [
        "train.eval_interval=10", "data.split=80,20,0", f"checkpoint.pretrained={init}",
        f"data.cache_dir={tmp_path}/cache"]), "--almr", "0.1,0.3,0.5", "--lr", "1e-3,3e-3",
        "--seeds", "2", "--tokens", "10240", "--out", str(sweep), "--parallel", "2"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"megatron-cpt almr: error: data.cache_dir: {tmp_path}/cache would be written by 2 runs "
        f"at once (--parallel); leave it unset, so that each run keeps its cache in its run "
        f"directory")
    assert main([*args, "--slurm", "--partition", "cpu", "--time", "01:00:00"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "megatron-cpt almr: error: --parallel: only with --local (Slurm: --max-parallel)")
    assert not sweep.exists()
