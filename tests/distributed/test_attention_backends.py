"""SDPAttention (the non-TE spec's core attention) computes what megatron-core's own
DotProductAttention computes, with grouped-query attention."""

import os
import subprocess
import sys
from pathlib import Path

from harness import free_port


def test_sdpa_matches_megatron_dot_product_attention():
    script = Path(__file__).with_name("compare_attention_backends.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("max_abs_diff"))
    diff, scale = float(line.split()[1]), float(line.split()[3])
    assert scale > 0.1  # the logits are not trivially zero
    assert diff < 1e-5, line
