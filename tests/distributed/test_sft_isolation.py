"""Packed conversations do not see each other: the logits and per-token losses of a conversation
packed with others equal those of the same conversation alone (fp32, within 1e-5) at TP1, at TP2
with sequence parallelism and at PP2; replacing the other conversations of its pack changes none of
them; without the boundaries they would differ. The SFT loss over 2 micro-batches on each of 2 DP
ranks equals the mean NLL over the trained tokens, each conversation run alone without packing."""

import os
import subprocess
import sys
from pathlib import Path

from harness import free_port


def test_packed_conversations_are_isolated_and_the_loss_is_the_mean_nll():
    script = Path(__file__).with_name("check_packed_isolation.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script)], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-6000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("layout ")]
    assert {fields[1] for fields in lines} == {"tp1", "tp2_sp", "pp2"}, proc.stdout
    for fields in lines:
        values = dict(zip(fields[4::2], map(float, fields[5::2])))
        assert values["logits"] <= 1e-5 and values["losses"] <= 1e-5, fields
        assert values["other_changed"] <= 1e-5, fields
        assert values["unpacked"] > 1e-3, fields  # the check would see a leak
    [loss_line] = [line.split() for line in proc.stdout.splitlines() if line.startswith("loss ")]
    sft, direct, tokens = float(loss_line[1]), float(loss_line[2]), int(loss_line[3])
    assert tokens == 70  # sum of n - n // 2 over the lengths: the trained halves, less no first token
    assert abs(sft - direct) <= 1e-5 * abs(direct), loss_line
