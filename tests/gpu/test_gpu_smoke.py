"""On a CUDA machine: build the model on the GPU (SDPA spec without Transformer Engine, TE spec
with it) and train 3 steps in bf16. Skipped where CUDA is absent."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_three_bf16_steps_on_cuda(tmp_path):
    from harness import losses, train
    from token_fixtures import byte_run_overrides, write_byte_dataset

    prefix = tmp_path / "stdlib"
    write_byte_dataset(prefix)
    run_dir = tmp_path / "run"
    # The helper's fp32 gives way to bf16: later overrides win.
    train(byte_run_overrides(prefix, steps=3, global_batch_size=8, micro_batch_size=4,
                             seq_length=256)
          + ["model.preset=llama3-small", "model.dtype=bf16", "launch.procs_per_node=1",
             "parallel.tp=1", f"logging.run_dir={run_dir}"])
    values = losses(run_dir)
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    assert values[-1] < values[0]
    # Throughput against this card's peak from the table (no MFU on a card it does not know).
    from megatron_cpt.profile.hardware import peak_for
    from megatron_cpt.run_files import read_metrics

    peak = peak_for(torch.cuda.get_device_name(), "bf16").tflops
    for record in read_metrics(run_dir):
        assert record["device"] == torch.cuda.get_device_name() and record["peak_tflops"] == peak
        assert record["tflops_per_gpu"] > 0 and record["memory_allocated_peak_gb"] > 0
        assert record["memory_reserved_peak_gb"] >= record["memory_allocated_peak_gb"]
        assert (record["mfu"] is None) == (peak is None)
