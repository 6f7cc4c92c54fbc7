"""The per-node command of the Slurm script, started twice on this machine as two nodes (c10d
rendezvous, 2 ranks each), trains TP2 x DP2 with the same losses as the same layout on one node."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from harness import TINY_RECIPE, free_port, kill_tree, losses, train
from token_fixtures import byte_run_overrides

from megatron_cpt.config import load_recipe
from megatron_cpt.launch.slurm import torchrun_command


def test_two_nodes_match_one_node(tmp_path, byte_data):
    common = byte_run_overrides(byte_data, steps=6, warmup_steps=2) + [
        "parallel.tp=2", "checkpoint.save_at_end=false"]
    one_node = tmp_path / "one_node"
    train(common + ["launch.procs_per_node=4", f"logging.run_dir={one_node}"])

    two_nodes = tmp_path / "two_nodes"
    recipe = load_recipe(TINY_RECIPE, common + ["launch.nodes=2", "launch.procs_per_node=2",
                                                f"logging.run_dir={two_nodes}"])
    recipe_path = tmp_path / "job.recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    command = torchrun_command(sys.executable, nodes=2, procs_per_node=2,
                               endpoint=f"127.0.0.1:{free_port()}", rdzv_id="two-nodes",
                               join_timeout_s=120, recipe_path=str(recipe_path))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    logs = [tmp_path / f"node_{node}.log" for node in range(2)]
    nodes = []
    try:
        for log_path in logs:
            with open(log_path, "w") as log:
                nodes.append(subprocess.Popen(command, env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        for node in nodes:
            node.wait(timeout=600)
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_tree(node.pid)
                node.wait()
    for node, log_path in zip(nodes, logs):
        assert node.returncode == 0, log_path.read_text()[-6000:]
    assert len(losses(two_nodes)) == 6
    assert losses(two_nodes) == losses(one_node)

