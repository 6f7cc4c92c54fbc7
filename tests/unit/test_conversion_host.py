"""Conversion is host work: the convert commands hide the GPUs from their own process and from
every rank they start, so that on a GPU node they run on CPU ranks over gloo, as on a laptop."""

from __future__ import annotations

import argparse
import os

import pytest

from conversion_fixtures import make_hf_llama
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.conversion import hf_to_mcore, verify
from megatron_cpt.conversion.host import HOST_ENV
from megatron_cpt.launch import local


@pytest.fixture
def launches(monkeypatch):
    """Record run_local calls instead of starting ranks, with CUDA_VISIBLE_DEVICES unset (the
    suite's conftest.py restores it afterwards)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    calls = []
    monkeypatch.setattr(local, "run_local",
                        lambda module, args, nprocs, env=None: calls.append((module, nprocs, env)) or 0)
    return calls


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_hf_to_mcore_ranks_see_no_gpu(tmp_path, launches):
    hf = make_hf_llama(tmp_path / "hf")
    args = _parse(hf_to_mcore, ["--hf-dir", str(hf), "--out-dir", str(tmp_path / "ckpt"),
                                "--tp", "2", "--pp", "2"])
    assert hf_to_mcore.run_hf_to_mcore(args) == 0
    assert launches == [(hf_to_mcore.WORKER_MODULE, 4, HOST_ENV)]
    assert HOST_ENV == {"CUDA_VISIBLE_DEVICES": ""}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # and the command's own process


def test_verify_ranks_see_no_gpu(monkeypatch, launches):
    cfg = ModelConfig(num_layers=4, num_attention_heads=4, num_query_groups=2)
    monkeypatch.setattr(verify, "prepare", lambda args: (cfg, ParallelConfig(tp=2, pp=4)))
    args = _parse(verify, ["--hf-dir", "HF", "--ckpt-dir", "CKPT", "--tp", "2", "--pp", "4"])
    assert verify.run_verify(args) == 0
    # TP x PP = 8 ranks, whatever the number of local GPUs.
    assert launches == [(verify.WORKER_MODULE, 8, HOST_ENV)]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
