"""The megatron-core line: an installed version outside the tested range is refused in one line,
before a command starts and in every rank; and the changes a later line (0.17-0.19) needs that
are harmless on 0.16: megatron-core's own background writer asked for by name, a parameter-group
mismatch on resume named. (The CUDA stream calls: test_cpu_emulation_streams.py.)"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from megatron_cpt.checkpointing import dist_io
from megatron_cpt.errors import CheckpointError, UserError
from megatron_cpt.runtime import mcore_version

REPO = Path(__file__).resolve().parents[2]


def _installed(monkeypatch, version: str | None) -> None:
    real = importlib.metadata.version

    def version_of(name):
        if name != "megatron-core":
            return real(name)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(mcore_version.importlib.metadata, "version", version_of)


@pytest.mark.parametrize("version", ["0.16.1", "0.16.2", "0.16.3rc1"])
def test_the_tested_line_is_accepted(monkeypatch, version):
    _installed(monkeypatch, version)
    mcore_version.check_megatron_core_version()


@pytest.mark.parametrize("version", ["0.17.1", "0.18.2", "0.19.2", "0.16.0", "0.15.3"])
def test_other_lines_are_refused_naming_the_version(monkeypatch, version):
    _installed(monkeypatch, version)
    with pytest.raises(UserError) as info:
        mcore_version.check_megatron_core_version()
    assert str(info.value).startswith(f"megatron-core {version} is installed")
    assert "<0.17,>=0.16.1" in str(info.value) and "\n" not in str(info.value)


def test_a_missing_megatron_core_is_named(monkeypatch):
    _installed(monkeypatch, None)
    with pytest.raises(UserError, match="^megatron-core is not installed"):
        mcore_version.check_megatron_core_version()


def test_the_cli_refuses_before_the_verb_runs(monkeypatch, capsys, tmp_path):
    from megatron_cpt.cli import main

    _installed(monkeypatch, "0.19.2")
    status = main(["train", str(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"),
                   f"logging.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("megatron-cpt train: error: megatron-core 0.19.2")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_ranks_check_it_before_joining_the_job(monkeypatch):
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.runtime.parallel import initialize_parallel

    _installed(monkeypatch, "0.18.2")
    with pytest.raises(UserError, match="^megatron-core 0.18.2 is installed"):
        initialize_parallel(ParallelConfig(), seed=1)


def test_the_installed_requirement_is_the_checked_one():
    from packaging.requirements import Requirement

    declared = [Requirement(r) for r in importlib.metadata.requires("megatron-cpt")
                if r.startswith("megatron")]
    assert declared == [Requirement(mcore_version.MEGATRON_CORE_REQUIREMENT)]


def test_background_saves_ask_for_megatron_cores_own_writer_where_there_is_a_choice():
    def save_016(sharded_state_dict, checkpoint_dir, sharded_strategy=None,
                 async_sharded_save=False):
        pass

    def save_017(sharded_state_dict, checkpoint_dir, sharded_strategy=None,
                 async_sharded_save=False, async_strategy="nvrx"):
        pass

    assert dist_io.megatron_core_writer(save_016) == {}
    assert dist_io.megatron_core_writer(save_017) == {"async_strategy": "mcore"}
    from megatron.core import dist_checkpointing

    assert dist_io.megatron_core_writer(dist_checkpointing.save) == {}  # 0.16.1, as tested


def test_a_background_save_passes_it(monkeypatch, tmp_path):
    from megatron.core import dist_checkpointing

    from megatron_cpt.checkpointing import writer_processes

    calls = []

    class Request:
        def add_finalize_fn(self, fn):
            calls.append("finalize")

    def save_017(sharded_state_dict, checkpoint_dir, sharded_strategy=None,
                 async_sharded_save=False, async_strategy="nvrx"):
        calls.append(async_strategy)
        return Request()

    monkeypatch.setattr(dist_checkpointing, "save", save_017)
    monkeypatch.setattr(writer_processes, "keep_writers_through_stop_signals", lambda: None)
    background = type("Queue", (), {"schedule_async_request": lambda self, r: calls.append("queued")})
    dist_io.save_dist_checkpoint({}, tmp_path / "step_1", {}, background=background())
    assert calls == ["mcore", "finalize", "queued"]


def test_a_parameter_group_mismatch_on_resume_is_named(tmp_path):
    from megatron_cpt.train.checkpoint import load_optimizer_state

    class Optimizer:
        def __init__(self, error):
            self.error = error

        def load_state_dict(self, state):
            raise self.error

    with pytest.raises(CheckpointError) as info:
        load_optimizer_state(Optimizer(KeyError((None, 0.001, 1e-05, 0.1))), {}, tmp_path)
    assert str(info.value).startswith(f"checkpoint '{tmp_path}': its optimizer parameter groups")
    assert "optim.lr" in str(info.value)
    with pytest.raises(KeyError):  # any other KeyError is a bug, left as it is
        load_optimizer_state(Optimizer(KeyError("exp_avg")), {}, tmp_path)
