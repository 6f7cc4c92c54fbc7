"""A real single-node Slurm cluster on localhost (munged, slurmctld, slurmd) for the tests.

Needs Debian's ``slurmctld slurmd slurm-client munge`` and root (``.ci/run`` installs them).
Everything it writes lives under one directory; ``stop()`` ends the daemons. Slurm's ports
(6817/6818) are fixed, so one cluster runs per machine at a time. The node declares 8 GPUs as a
GRES without devices, and at least 8 CPUs, so that ``sbatch --test-only`` can check scripts that
ask for GPUs, with one task per GPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")

SLURM_CONF = """\
ClusterName=megatron-cpt-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
GresTypes=gpu
KillWait=30
MinJobAge=600
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
# slurmd counts a GPU GRES by its device files; empty files stand in for /dev/nvidia0-7.
GRES_CONF = "AutoDetect=off\nNodeName=localhost Name=gpu File={root}/fake_gpu[0-7]\n"


def binaries_present() -> bool:
    return all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol"))


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 60) -> "SlurmCluster":
        root = self.root
        for sub in ("state", "spool", "munge", "munge_key"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o755)  # munged refuses a socket dir others cannot reach
        os.chmod(root / "munge_key", 0o700)
        key = root / "munge_key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        memory_mb = int(_mem_total_kb() / 1024 * 0.9)
        # At least a core per declared GPU, as on a GPU node, so that a script with one task per
        # GPU fits (config_overrides: slurmd takes the declared count over the machine's).
        cpus = max(os.cpu_count() or 1, 8)
        self.conf.write_text(SLURM_CONF.format(root=root, cpus=cpus, memory_mb=memory_mb))
        for index in range(8):
            (root / f"fake_gpu{index}").touch()
        (root / "gres.conf").write_text(GRES_CONF.format(root=root))
        self._run(["munged", f"--socket={root}/munge/munge.socket.2", f"--key-file={key}",
                   f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                   f"--seed-file={root}/munge.seed"])
        self._run(["slurmctld", "-c"])  # -c: a clean start, no state of an earlier cluster
        self._run(["slurmd", "-N", "localhost"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.scontrol_state()
            if state.startswith("idle"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"slurm node did not become idle (state '{state}'); logs in {root}")

    def _run(self, command: list[str]) -> None:
        proc = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {proc.stderr or proc.stdout}")

    def scontrol_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], env=self.env,
                              capture_output=True, text=True, timeout=60)
        return proc.stdout.strip()

    def job_field(self, job_id: str, field: str) -> str:
        """One ``Key=Value`` field of ``scontrol show job`` (kept MinJobAge s after the end)."""
        out = subprocess.run(["scontrol", "show", "job", job_id], env=self.env,
                             capture_output=True, text=True, timeout=60).stdout
        for word in out.split():
            if word.startswith(field + "="):
                return word.split("=", 1)[1]
        return ""

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True,
                       timeout=60)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)


def _mem_total_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise RuntimeError("no MemTotal in /proc/meminfo")
