"""Test helpers live beside the tests. What several test files need is made once per session: the
byte-token dataset, the tiny recipe's initial weights, and the uninterrupted runs that interrupted
or rearranged runs are compared with (a run is a pure function of its recipe and overrides, so
the same overrides give the same run whichever test asks first)."""

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "distributed"))  # harness: run the CLI


@pytest.fixture(scope="session")
def byte_data(tmp_path_factory) -> Path:
    """The prefix of the standard library's source as byte tokens (``token_fixtures``)."""
    from token_fixtures import write_byte_dataset

    prefix = tmp_path_factory.mktemp("byte_data") / "stdlib"
    write_byte_dataset(prefix)
    return prefix


@pytest.fixture(scope="session")
def tiny_initial_weights(tmp_path_factory) -> Path:
    """The tiny recipe's model in fp32 (its own vocabulary), randomly initialised from its seed,
    as initial weights (``checkpoint.pretrained``)."""
    from harness import write_initial_weights

    return write_initial_weights(tmp_path_factory.mktemp("tiny_init") / "init", ["model.dtype=fp32"])


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """``reference_run(overrides, recipe=TINY_RECIPE)``: the run directory of an uninterrupted
    ``megatron-cpt train`` run, trained once per session for each distinct recipe and overrides.
    Tests read it and never write into it."""
    from harness import TINY_RECIPE, train

    runs: dict[tuple, Path] = {}

    def run(overrides: list[str], recipe: Path = TINY_RECIPE) -> Path:
        key = (str(recipe), tuple(overrides))
        if key not in runs:
            run_dir = tmp_path_factory.mktemp("reference") / "run"
            train([*overrides, f"logging.run_dir={run_dir}"], recipe=recipe)
            runs[key] = run_dir
        return runs[key]

    return run


@pytest.fixture(autouse=True)
def _gpu_visibility_restored():
    """The convert and eval commands hide the GPUs from their own process
    (``CUDA_VISIBLE_DEVICES=""``). Run in-process by a test, they would leave it so for the tests
    after it on the same worker, whose local launches would then fork their ranks instead of
    starting torchrun."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    if before is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = before


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``make test`` runs 2 workers), a module's tests stay on one worker, so
    that its module fixtures are built once, and so do all the Slurm tests (one cluster at a time:
    its ports are fixed)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/slurm" if nodeid.startswith("tests/slurm/") else nodeid.split("::")[0]

    return ByModule(config, log)


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(tmp_path_factory):
    """(HF directory with a chat template, its megatron-core checkpoint): ``serve_fixtures``."""
    from serve_fixtures import make_chat_checkpoint

    return make_chat_checkpoint(tmp_path_factory.mktemp("chat_model"))
