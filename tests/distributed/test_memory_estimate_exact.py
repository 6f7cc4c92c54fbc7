"""The estimate's weight, gradient and optimizer bytes against the tensors of a CPU run, per rank:
TP2 x PP2 x DP2 (8 gloo ranks), bf16, distributed optimizer off and on."""

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import TINY_RECIPE, free_port

from megatron_cpt.config import load_recipe
from megatron_cpt.profile.memory import estimate_memory

OVERRIDES = ["parallel.tp=2", "parallel.pp=2", "launch.procs_per_node=8", "model.dtype=bf16",
             "model.attention_backend=sdpa", "train.global_batch_size=8",
             "train.micro_batch_size=1", "train.seq_length=32"]


def test_estimated_state_bytes_equal_the_real_tensors(tmp_path):
    script = Path(__file__).with_name("measure_state_bytes.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=8", f"--master-port={free_port()}", str(script),
                           str(tmp_path), *OVERRIDES],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank_*.json"))]
    assert len(ranks) == 8
    for mode, distributed in (("off", False), ("on", True)):
        recipe = load_recipe(TINY_RECIPE, ["data.paths=[unused]", *OVERRIDES,
                                           f"parallel.distributed_optimizer={distributed}"])
        stages = estimate_memory(recipe).stages
        for rank in ranks:
            real, estimate = rank[mode], stages[rank["pp_rank"]]
            assert real["parameters"] == estimate.parameters.total
            assert real["weights"] == estimate.weights
            assert real["gradients"] == estimate.gradients
            if not distributed:
                assert real["optimizer"] == estimate.optimizer
        if distributed:
            # Each DP rank holds one shard; megatron-core aligns every tensor to 64 elements in the
            # buffer it shards, so a rank's shard may hold a few elements more or less than 1/DP.
            for pp in (0, 1):
                for tp in (0, 1):
                    shards = [r["on"]["optimizer"] for r in ranks
                              if (r["pp_rank"], r["tp_rank"]) == (pp, tp)]
                    assert sum(shards) == 2 * stages[pp].optimizer
                    assert all(abs(s - stages[pp].optimizer) <= 12 * 64 for s in shards)
