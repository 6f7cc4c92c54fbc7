"""Write and read megatron-core ``dist_checkpointing`` directories atomically.

A checkpoint directory holds the torch_dist shards plus ``megatron_cpt.json`` (what model and layout
wrote it). It is written under ``<name>.tmp`` and renamed only when every rank has finished, so a
process killed mid-write leaves no directory that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch.distributed as dist

from megatron_cpt.checkpointing.run_checkpoints import META_FILE, PARTIAL_SUFFIX, is_complete
from megatron_cpt.errors import CheckpointError

FORMAT_VERSION = 1
# Transformer Engine layers (and FP8 state) save an ``_extra_state`` object next to their weights.
EXTRA_STATE_SUFFIX = "_extra_state"
PAUSE_ENV = "MEGATRON_CPT_TEST_PAUSE"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def model_sharded_state_dict(chunks) -> dict:
    """The model part of a checkpoint: ``model`` (or ``model0``, ``model1``... per virtual stage).

    megatron-core keys every tensor globally (layers stacked along a leading axis), so a checkpoint
    saved with one TP/PP/VPP layout loads into any other.
    """
    modules = [getattr(c, "module", c) for c in chunks]
    if len(modules) == 1:
        return {"model": modules[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(modules)}


def read_meta(directory: str | Path) -> dict:
    """``megatron_cpt.json`` of a complete checkpoint whose shard files are all there and whole."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint '{directory}': no such directory")
    if not is_complete(directory):
        raise CheckpointError(
            f"checkpoint '{directory}': incomplete or not a megatron-cpt checkpoint "
            f"(no {META_FILE} or metadata.json)")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{directory}': {META_FILE} is not valid JSON ({exc})") from None
    check_shard_files(directory)
    return meta


def check_shard_files(directory: Path) -> None:
    """Every shard file the checkpoint's index (``.metadata``) names exists and is long enough for
    the byte ranges the index records: a copy cut short or a full disk is found before any rank
    starts reading."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        index = FileSystemReader(str(directory)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable index, whatever the cause
        raise CheckpointError(f"checkpoint '{directory}': its index .metadata cannot be read "
                              f"({type(exc).__name__})") from None
    needed: dict[str, int] = {}
    for info in index.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{directory}': shard file {name} is missing")
        if path.stat().st_size < size:
            raise CheckpointError(f"checkpoint '{directory}': shard file {name} is truncated "
                                  f"({path.stat().st_size:,} of {size:,} bytes)")


@contextlib.contextmanager
def reading_checkpoint(directory: str | Path):
    """Report a dist-checkpointing read that fails on the files' content as a CheckpointError."""
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as exc:  # torch's, raised for any rank's failure (a BaseException)
        cause = next(iter(exc.failures.values()), (exc, None))[0]
        raise CheckpointError(f"checkpoint '{directory}': cannot be read ({_describe(cause)})") from None
    except (CheckpointingException, pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointError(f"checkpoint '{directory}': cannot be read ({_describe(exc)})") from None
    except (IndexError, ValueError, KeyError) as exc:
        # torch's weights-only unpickler fails this way on a corrupt file, not with an
        # UnpicklingError; the same errors raised anywhere else are bugs and keep their traceback.
        if not _raised_while_unpickling(exc):
            raise
        raise CheckpointError(f"checkpoint '{directory}': cannot be read (a file is corrupt: "
                              f"{type(exc).__name__} while unpickling)") from None


def _raised_while_unpickling(exc: BaseException) -> bool:
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    name = frame.tb_frame.f_code.co_filename if frame is not None else ""
    return name.endswith(("_weights_only_unpickler.py", "serialization.py", "pickle.py"))


try:
    from torch.distributed.checkpoint.api import CheckpointException
except ImportError:  # an older torch
    CheckpointException = Exception


@contextlib.contextmanager
def writing_checkpoint(directory: str | Path):
    """Name a full file system as the cause of a failed checkpoint write. torch's writer reports
    it as a zip-writer position mismatch from a helper process, without the errno, so the file
    system is asked instead: nearly no space left after a failed write is the cause."""
    try:
        yield
    except (Exception, CheckpointException) as exc:  # torch's CheckpointException: BaseException
        target = Path(directory)
        while not target.exists() and target != target.parent:
            target = target.parent
        usage = shutil.disk_usage(target)
        if usage.free < min(16 << 20, usage.total // 20):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory)) from exc
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (pickle.UnpicklingError, EOFError)):
        return f"a file is corrupt or cut short: {type(exc).__name__}"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else 'no message'}"


def save_dist_checkpoint(sharded_state: dict, directory: str | Path, meta: dict[str, Any],
                         background=None, after_commit: Optional[Callable[[], None]] = None,
                         parallel_group=None) -> Path:
    """Collective: every rank calls it. Returns the final directory, complete once all ranks are
    done (then ``after_commit`` runs on every rank).

    With ``background`` (megatron-core's ``AsyncCallsQueue``) the shards are written by a
    background process and this returns at once; the queue commits the checkpoint (metadata,
    rename, ``after_commit``) when it finalises the write on every rank.

    With ``parallel_group`` (the data-parallel group, whose ranks hold copies of the same tensors),
    megatron-core's fully parallel save spreads the writing of each replicated tensor over the
    group's ranks instead of leaving all of it to the first replica.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelSaveStrategyWrapper)

    from megatron_cpt.checkpointing.writer_processes import keep_writers_through_stop_signals

    keep_writers_through_stop_signals()
    final = Path(directory)
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()

    def commit() -> None:
        _barrier()
        if _rank() == 0:
            with open(tmp / META_FILE, "w") as handle:
                json.dump({"format_version": FORMAT_VERSION, **meta}, handle, indent=2,
                          sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            pause_for_test("rename", final.parent)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        _barrier()
        if after_commit is not None:
            after_commit()

    strategy = None
    if parallel_group is not None:
        strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(),
                                                    parallel_group)
    if background is None:
        with writing_checkpoint(tmp):
            dist_checkpointing.save(sharded_state, str(tmp), strategy)
            commit()
    else:
        with writing_checkpoint(tmp):
            request = dist_checkpointing.save(sharded_state, str(tmp), strategy,
                                              async_sharded_save=True,
                                              **megatron_core_writer(dist_checkpointing.save))
        request.add_finalize_fn(commit)
        background.schedule_async_request(request)
    return final


def megatron_core_writer(save: Callable) -> dict:
    """megatron-core 0.17+ writes background saves with nvidia-resiliency-ext's writer unless told
    otherwise (``async_strategy``); its own writer, the only one before 0.17, is the one whose
    helper processes ``writer_processes`` keeps alive through a stop signal."""
    if "async_strategy" in inspect.signature(save).parameters:
        return {"async_strategy": "mcore"}
    return {}


def pause_for_test(point: str, directory: Path) -> None:
    """Lets the kill tests stop a save at an exact point (``rename``: written, not yet renamed;
    ``latest``: renamed, ``latest`` not yet replaced). With ``MEGATRON_CPT_TEST_PAUSE=point``,
    rank 0 leaves ``directory/paused-at-<point>`` and waits there to be killed."""
    if os.environ.get(PAUSE_ENV) == point:
        (directory / f"paused-at-{point}").touch()
        while True:
            time.sleep(1)


def load_dist_checkpoint(sharded_state: dict, directory: str | Path, parallel_group=None) -> dict:
    """Collective: load the tensors that ``sharded_state`` asks for, in this rank's layout.

    With ``parallel_group`` (the data-parallel group), megatron-core's fully parallel load reads
    each tensor that the group's ranks all ask for once, on one of them, and passes it to the
    others, instead of every rank reading all of it.

    A requested ``_extra_state`` object that the checkpoint lacks is left out: a checkpoint written
    without Transformer Engine (initial weights converted on a CPU node) loads into TE layers, which
    then keep their freshly initialised FP8 state (``apply_model_state``). The reverse needs
    nothing: extra state on disk that the model does not ask for is not read. Any other requested
    key the checkpoint lacks is a CheckpointError.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper)
    from megatron.core.dist_checkpointing.validation import StrictHandling

    read_meta(directory)
    strategy = None
    if parallel_group is not None:
        strategy = FullyParallelLoadStrategyWrapper(
            get_default_load_sharded_strategy(str(directory)), parallel_group)
    # megatron-core calls requested-but-absent keys "unexpected"; this mode drops them from the
    # request and returns them instead of failing inside the load.
    with reading_checkpoint(directory):
        loaded, _, absent = dist_checkpointing.load(sharded_state, str(directory), strategy,
                                                    strict=StrictHandling.RETURN_UNEXPECTED)
    needed = sorted(key for key in absent if not key.endswith(EXTRA_STATE_SUFFIX))
    if needed:
        raise CheckpointError(
            f"checkpoint '{directory}': lacks {len(needed)} tensor(s) this model needs, "
            f"e.g. '{needed[0]}' (written for a different model?)")
    return loaded


def apply_model_state(chunks, loaded: dict) -> None:
    """Copy the model part of a loaded checkpoint (see ``model_sharded_state_dict``) into chunks.

    Modules whose ``_extra_state`` the checkpoint did not hold are left as they are (fresh FP8
    state); every other entry must be present.
    """
    modules = [getattr(c, "module", c) for c in chunks]
    for index, module in enumerate(modules):
        result = module.load_state_dict(loaded["model" if len(modules) == 1 else f"model{index}"],
                                        strict=False)
        wrong = [k for k in result.missing_keys if not k.endswith(EXTRA_STATE_SUFFIX)]
        wrong += list(result.unexpected_keys)
        if wrong:
            raise CheckpointError(f"checkpoint state does not fit the model: {wrong[0]}")


def load_model_weights(chunks, directory: str | Path, parallel_group=None) -> None:
    """Load model tensors only (initial weights); optimizer state, if present, is ignored."""
    apply_model_state(chunks, load_dist_checkpoint(model_sharded_state_dict(chunks), directory,
                                                   parallel_group))

