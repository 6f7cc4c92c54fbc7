"""flops.py against torch's FlopCounterMode on the tiny megatron-core Llama, forward + backward."""

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import free_port


def test_flops_match_flop_counter_mode_up_to_the_masked_half_of_attention():
    script = Path(__file__).with_name("count_model_flops.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tokens = result["tokens"]
    # Only matrix products are counted on both sides (norms, RoPE, softmax, loss are not).
    assert set(result["by_op"]) <= {"aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm"}
    # The math kernel computes the whole s x s score matrix; flops.py counts the causal half (the
    # Megatron-LM convention). That half is the only difference, to the FLOP.
    assert result["counted"] == tokens * (result["model_per_token"] + result["scores_per_token"])
