"""Training checkpoints: model, optimizer, LR scheduler, RNG and data position. Each is a
``step_N`` directory of the run's checkpoint directory (``checkpointing/run_checkpoints.py``: what
is whole, what ``latest`` names, what is pruned). A process killed while writing leaves only
``step_N.tmp`` behind, which is never read; ``latest`` still names the previous checkpoint.

Saves are megatron-core's fully parallel ones over the data-parallel group, and so are loads of
the default format. The model loads at any TP/PP/VPP/DP; the distributed optimizer's state at any
DP, and at another TP/PP/VPP only from a checkpoint saved with ``checkpoint.reshardable``
(``OPTIMIZER_FORMATS``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_cpt.checkpointing.dist_io import (apply_model_state, load_dist_checkpoint,
                                               model_sharded_state_dict, pause_for_test, read_meta,
                                               save_dist_checkpoint)
from megatron_cpt.checkpointing.run_checkpoints import (LATEST, prune, shortage_of_space,
                                                        step_dir_name)
from megatron_cpt.checkpointing.start_checks import (DP_RESHARDABLE, FULLY_RESHARDABLE,
                                                     check_model_matches, check_optimizer_layout,
                                                     saved_optimizer_format)
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.errors import CheckpointError
from megatron_cpt.runtime.mcore_compat import materialize_adam_state
from megatron_cpt.runtime.parallel import sync_parameters

# The distributed optimizer's state in a checkpoint, as megatron-core lays it out (named in
# megatron_cpt.json as "optimizer_format"; 0.16's default flattened format cannot be saved at all):
# - dp_reshardable (Megatron-LM's default): each rank writes its own buckets as they are, with no
#   gather, in parallel with the others; it loads where the buckets are the same: the same
#   TP/PP/VPP and overlap_grad_reduce, any DP.
# - fully_reshardable: per model parameter, like the model, so it loads at any layout; a save
#   gathers the DP group's state over gloo in DP rank 0's host memory (the memory-efficient
#   variant; the other all-gathers it on every rank), and a load reads the whole TP shard's state
#   on every rank (bench/optimizer_checkpoint_bench.py).
OPTIMIZER_FORMATS = {
    DP_RESHARDABLE: {"distrib_optim_sharding_type": DP_RESHARDABLE},
    FULLY_RESHARDABLE: {"distrib_optim_sharding_type": FULLY_RESHARDABLE,
                        "distrib_optim_fully_reshardable_mem_efficient": True},
}


@dataclass
class TrainingProgress:
    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0


def _rng_sharded_object() -> ShardedObject:
    """This rank's RNG states, one object per (PP, TP) position; DP replicas hold copies."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state["tracker"] = get_cuda_rng_tracker().get_states()
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", state, (pp_size, tp_size), (pp, tp),
                         replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True))


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    get_cuda_rng_tracker().set_states(state["tracker"])


def data_parallel_group():
    """The ranks that hold copies of the same model shard: a save spreads their writes over them,
    a load their reads."""
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def training_state(model_chunks, optimizer, optimizer_format: str, include_rng: bool,
                   is_loading: bool) -> dict:
    """The sharded state of model and optimizer (and this rank's RNG) that a checkpoint holds."""
    if is_loading:
        materialize_adam_state(optimizer)
    state = model_sharded_state_dict(model_chunks)
    state["optimizer"] = optimizer.sharded_state_dict(
        dict(state), is_loading=is_loading, metadata=OPTIMIZER_FORMATS[optimizer_format])
    if include_rng:
        state["rng_state"] = _rng_sharded_object()
    return state


def save_training_checkpoint(ckpt_dir: str | Path, model_chunks, optimizer, scheduler,
                             progress: TrainingProgress, model: ModelConfig,
                             parallel: ParallelConfig, keep_last: int = 0,
                             background=None, reshardable: bool = False,
                             extra_meta: Optional[dict] = None) -> Path:
    """Collective. Writes step_N, then points ``latest`` at it, then prunes old checkpoints.
    ``extra_meta`` goes into ``megatron_cpt.json`` too (a chat run's chat format).

    With ``background`` (megatron-core's ``AsyncCallsQueue``) the shards are written by a
    background process; the rename, ``latest`` and pruning follow when the queue finalises it.
    ``reshardable``: the optimizer in the fully_reshardable format (``checkpoint.reshardable``).
    """
    ckpt_dir = Path(ckpt_dir)
    sync_parameters(model_chunks)  # the weights of this step, also with overlap_param_gather
    optimizer_format = FULLY_RESHARDABLE if reshardable else DP_RESHARDABLE
    state = training_state(model_chunks, optimizer, optimizer_format, include_rng=True,
                           is_loading=False)
    # Objects that are the same on every rank go into dist_checkpointing's common state.
    state["scheduler"] = scheduler.state_dict()
    state["progress"] = dataclasses.asdict(progress)
    meta = {"kind": "training", "step": progress.step, "model": dataclasses.asdict(model),
            "parallel": {"tp": parallel.tp, "pp": parallel.pp, "vpp": parallel.vpp,
                         "cp": parallel.cp, "distributed_optimizer": parallel.distributed_optimizer,
                         "overlap_grad_reduce": parallel.overlap_grad_reduce},
            "optimizer_format": optimizer_format, "world_size": dist.get_world_size(),
            **(extra_meta or {})}
    name = step_dir_name(progress.step)

    def point_latest_at_it() -> None:
        if dist.get_rank() == 0:
            tmp_marker = ckpt_dir / (LATEST + ".tmp")
            tmp_marker.write_text(name + "\n")
            pause_for_test("latest", ckpt_dir)
            os.replace(tmp_marker, ckpt_dir / LATEST)
            if keep_last:
                prune(ckpt_dir, keep_last)
        dist.barrier()

    return save_dist_checkpoint(state, ckpt_dir / name, meta, background, point_latest_at_it,
                                parallel_group=data_parallel_group())


def room_for_next_checkpoint(ckpt_dir: Path, pending_writes: int) -> Optional[str]:
    """Collective: why the next checkpoint would not fit (as any rank sees its file system), or
    None. Checked before each save, so that a full disk stops the run cleanly rather than
    failing inside the writer."""
    shortage = shortage_of_space(ckpt_dir, pending_writes) if ckpt_dir.is_dir() else None
    flag = torch.tensor([int(shortage is not None)], dtype=torch.int32,
                        device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    return shortage or f"no room for the next checkpoint in '{ckpt_dir}' on another rank"


def load_optimizer_state(optimizer, state: dict, path: Path) -> None:
    # megatron-core 0.16 loads the dp_reshardable format by copying into the main parameters
    # outside no_grad; with fp32 weights those are views of the model's own, which autograd refuses.
    try:
        with torch.no_grad():
            optimizer.load_state_dict(state)
    except KeyError as exc:
        # megatron-core 0.19 pairs the saved parameter groups with the current ones by their
        # settings (learning rates, weight decay) and fails on a tuple of them that it lacks.
        if not (exc.args and isinstance(exc.args[0], tuple)):
            raise
        raise CheckpointError(
            f"checkpoint '{path}': its optimizer parameter groups do not match this run's "
            f"(megatron-core pairs them by their settings {exc.args[0]!r}): resume with the "
            f"optim.lr, optim.min_lr and optim.weight_decay it was saved with, or start a new run "
            f"from it with checkpoint.pretrained") from None


def load_training_checkpoint(path: Path, model_chunks, optimizer, scheduler, model: ModelConfig,
                             parallel: ParallelConfig) -> TrainingProgress:
    """Collective. Restores everything; RNG only when the TP/PP layout is the one saved."""
    meta = read_meta(path)
    check_model_matches(meta, model, f"checkpoint '{path}'")
    check_optimizer_layout(meta, parallel, f"checkpoint '{path}'")
    saved = meta.get("parallel", {})
    same_layout = (saved.get("tp"), saved.get("pp"), saved.get("vpp")) == (
        parallel.tp, parallel.pp, parallel.vpp) and meta.get("world_size") == dist.get_world_size()
    optimizer_format = saved_optimizer_format(meta)
    request = training_state(model_chunks, optimizer, optimizer_format, include_rng=same_layout,
                             is_loading=True)
    # fully_reshardable: every rank asks for its whole TP shard's optimizer state, so spreading
    # the reads over DP only adds the exchange on top of it (+2.3 GiB instead of +1.6 GiB per rank
    # in bench/optimizer_checkpoint_bench.py): each rank reads its own.
    group = data_parallel_group() if optimizer_format == DP_RESHARDABLE else None
    loaded = load_dist_checkpoint(request, path, parallel_group=group)
    apply_model_state(model_chunks, loaded)
    load_optimizer_state(optimizer, loaded["optimizer"], path)
    scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        _restore_rng(loaded["rng_state"])
    return TrainingProgress(**loaded["progress"])
