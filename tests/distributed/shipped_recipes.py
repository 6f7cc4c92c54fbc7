"""Shrink a shipped H100 recipe to a 2-core machine, changing only what must change.

What shrinks: the model (the tiny preset; FP8 dropped, it needs Transformer Engine), the sequence
length, the step axis (steps, intervals, warm-up and decay lengths, kept in the same order: several
interval saves, so that ``keep_last`` prunes), the world and the layout, scaled down keeping their
kinds (TP stays TP with sequence parallelism, PP stays PP, VPP stays VPP, DP stays DP when the
world allows), and where the data and checkpoints live. Everything else stays as the recipe
writes it: precision, recompute, distributed optimizer, overlap flags, async saves, keep_last, the
schedule's kind, the ALMR mixture and its split, batch digests, TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from token_fixtures import EOD_ID, write_byte_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE_INTERVAL = 12, 3
MAX_RANKS = 4


def shipped_h100_recipes() -> list[Path]:
    """The continual pre-training recipes for H100s. (The fine-tuning ones read packed chat data,
    which tests/distributed/test_sft_train.py prepares and trains through a stop and a resume.)"""
    return sorted((REPO / "examples").glob("*_cpt_*h100*.yaml"))


def shrink(recipe: Path, out_dir: Path, data_dir: Path, initial_weights: Path) -> Path:
    """Write the shrunk recipe (a YAML file under ``out_dir``) and the data it reads."""
    tree = yaml.safe_load(recipe.read_text())
    model, parallel = tree["model"], tree.setdefault("parallel", {})
    model["preset"] = "llama3-tiny"
    model.pop("fp8", None)

    tp, pp = min(parallel.get("tp", 1), 2), min(parallel.get("pp", 1), 2)
    parallel.update(tp=tp, pp=pp)
    if parallel.get("vpp"):
        parallel["vpp"] = 2  # 4 layers = 2 stages x 2 virtual stages
    dp_of_recipe = tree["launch"]["nodes"] * tree["launch"]["procs_per_node"] // (
        tree["parallel"].get("tp", 1) * tree["parallel"].get("pp", 1))
    dp = 2 if dp_of_recipe > 1 and tp * pp * 2 <= MAX_RANKS else 1
    tree["launch"].update(nodes=1, procs_per_node=tp * pp * dp, accelerator="cpu")

    train = tree["train"]
    micro = train.get("micro_batch_size", 1)
    train.update(steps=STEPS, seq_length=64, global_batch_size=micro * dp * 2 * pp)
    if train.get("eval_interval"):
        train.update(eval_interval=STEPS // 2, eval_steps=1)
    schedule = tree.setdefault("optim", {}).setdefault("schedule", {})
    schedule["warmup_steps"] = 2
    if "wsd_decay_steps" in schedule:
        schedule["wsd_decay_steps"] = 4

    data = tree["data"]
    data["eod_token_id"] = EOD_ID
    for source in data.get("mixture", {}).get("sources", []):
        prefix = data_dir / source["name"]
        if not Path(f"{prefix}.idx").is_file():
            data_dir.mkdir(parents=True, exist_ok=True)
            # Documents small enough for the recipes' 1% validation split to hold some.
            write_byte_dataset(prefix, limit_bytes=200_000, doc_bytes=1000)
        source["prefix"] = str(prefix)

    checkpoint = tree["checkpoint"]
    checkpoint.update(pretrained=str(initial_weights), dir=str(out_dir / "checkpoints"),
                      save_interval=SAVE_INTERVAL)
    tree.setdefault("logging", {})["run_dir"] = str(out_dir / "run")
    path = out_dir / recipe.name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path
