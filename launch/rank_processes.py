"""The local ranks of ``run_local``, started one of two ways behind one interface (``stderr``,
``wait``):

- ``TorchrunRanks``: torchrun (``--standalone``) starts each rank as a fresh interpreter. Used
  whenever the ranks may use a GPU: a process that has touched CUDA cannot be forked.
- ``ForkedRanks``: ranks that see no GPU (``CUDA_VISIBLE_DEVICES=""``: conversion, ``eval --cpu``,
  recipes with ``launch.accelerator: cpu``) are forked from the launcher after it has imported
  torch and megatron-core once, with the GPUs hidden before that import. Each rank then runs
  ``python -m module args`` (``runpy``) in that process. Importing torch and megatron-core costs
  about 2.6 s of CPU per process, and torchrun about 1.5 s: on a 2-rank CPU run that is 4 of its
  11 CPU-seconds. What torchrun would do for such a job is done here: the rendezvous variables
  (one node, ``MASTER_ADDR`` 127.0.0.1 and a free port), each rank in a session of its own, and
  when a rank fails, SIGTERM to the others and SIGKILL after torchrun's shutdown timeout
  (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``).

Both are started with SIGTERM blocked (``run_local``), which the ranks inherit: a SIGTERM sent to a
rank waits until the rank takes it (``process_lifetime.unblock_sigterm``). ``wait`` passes the
launcher's first SIGTERM (``StopSignal``) to each rank once, as soon as the rank exists: torchrun
starts its ranks seconds after it starts, and keeps SIGTERM blocked itself.
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import BinaryIO, Optional

from megatron_cpt.process_lifetime import die_with_parent

# What every rank imports first; imported once by the launcher before it forks.
PRELOAD = ("torch", "torch.distributed", "megatron.core.parallel_state",
           "megatron.core.pipeline_parallel", "megatron.core.optimizer",
           "megatron.core.models.gpt", "megatron.core.dist_checkpointing")
# Exit statuses that end a rank as planned: done, or stopped with a checkpoint (75).
_PLANNED_EXITS = (0, 75)
# How often ``wait`` looks for ended ranks and for a stop signal to pass on.
_POLL_S = 0.05


def ranks_see_no_gpu(env: dict[str, str]) -> bool:
    return env.get("CUDA_VISIBLE_DEVICES") == ""


class StopSignal:
    """The first SIGTERM the launcher got. Its handler (``record``) only notes it; the ranks'
    ``wait`` passes it on. Later ones are not passed on: they could cut the stop save short."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def record(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum


class TorchrunRanks:
    def __init__(self, module: str, args: list[str], nprocs: int, env: dict[str, str]):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={nprocs}", "--no-python", sys.executable, "-m", module, *args]
        self._nprocs = nprocs
        self._torchrun = subprocess.Popen(
            command, env=env, stderr=subprocess.PIPE,
            preexec_fn=functools.partial(die_with_parent, os.getpid()))
        self.stderr: BinaryIO = self._torchrun.stderr

    def wait(self, stop: StopSignal) -> int:
        """torchrun's exit status. A stop signal goes to torchrun's ranks (its children), not to
        torchrun: they save, exit, and torchrun ends with them. Ranks that torchrun has not started
        yet get it when they appear."""
        signalled: set[int] = set()
        while self._torchrun.poll() is None:
            if stop.signum is not None and len(signalled) < self._nprocs:
                self._signal_new_ranks(stop.signum, signalled)
            time.sleep(_POLL_S)
        return self._torchrun.returncode

    def _signal_new_ranks(self, signum: int, signalled: set[int]) -> None:
        import psutil

        try:
            ranks = psutil.Process(self._torchrun.pid).children()
        except psutil.NoSuchProcess:
            return
        for rank in ranks:
            if rank.pid not in signalled:
                signalled.add(rank.pid)
                _kill(rank.pid, signum)


class ForkedRanks:
    def __init__(self, module: str, args: list[str], nprocs: int, env: dict[str, str]):
        from megatron_cpt.runtime.quiet import quiet_known_warnings

        # torchrun's setting, so that one variable governs both kinds of ranks.
        self._shutdown_timeout_s = float(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
        # Before torch is imported here: the OpenMP runtime reads its thread count when it loads.
        for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"):
            os.environ[name] = env[name]
        quiet_known_warnings()
        for name in PRELOAD:
            importlib.import_module(name)
        port = free_port()
        sys.stdout.flush()  # else each rank would write what this process had buffered again
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        launcher = os.getpid()
        self.pids: list[int] = []
        for rank in range(nprocs):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank),
                        "WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
                        "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                _run_rank(module, args, rank_env, write_end, launcher)  # never returns
            self.pids.append(pid)
        os.close(write_end)
        self.stderr: BinaryIO = os.fdopen(read_end, "rb", buffering=0)

    def wait(self, stop: StopSignal) -> int:
        """0 when every rank ended as planned, else the first other status; after the first
        rank that did not, the others get SIGTERM, and SIGKILL after the shutdown timeout. A stop
        signal is passed to every rank still running."""
        running, status, kill_at, stop_passed = set(self.pids), 0, None, False
        while running:
            if stop.signum is not None and not stop_passed:
                stop_passed = True
                for pid in running:
                    _kill(pid, stop.signum)
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if kill_at is not None and time.monotonic() > kill_at:
                    for other in running:
                        _kill(other, signal.SIGKILL)
                    kill_at = None
                time.sleep(_POLL_S)
                continue
            if pid not in running:
                continue
            running.discard(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if code not in _PLANNED_EXITS and status == 0:
                status = code if code > 0 else 1
                for other in running:
                    _kill(other, signal.SIGTERM)
                kill_at = time.monotonic() + self._shutdown_timeout_s
        return status


def _run_rank(module: str, args: list[str], env: dict[str, str], stderr_fd: int,
              launcher: int) -> None:
    """In a forked child: ``python -m module args`` as rank ``env["RANK"]``, then exit without
    returning into the launcher's code. SIGTERM stays blocked until the module takes it."""
    status = 1
    try:
        die_with_parent(launcher)
        os.setsid()  # as torchrun's ranks: a terminal's Ctrl-C goes to the launcher alone
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
        os.environ.clear()
        os.environ.update(env)
        if env.get("PYTHONUNBUFFERED"):  # as it would be in a fresh interpreter
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(line_buffering=True, write_through=True)
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # in case torch came before the setting
        sys.argv = [module, *args]
        sys.modules.pop(module, None)  # run as ``python -m`` runs it: fresh, as __main__
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a bug in the rank: its traceback, as torchrun shows it
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - the reader may be gone
                pass
        os._exit(status)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
