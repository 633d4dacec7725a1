"""A real SLURM cluster on localhost (one node, or several emulated by one slurmd each), started by hand, so the sbatch scripts run as on a cluster.

Why by hand: CI containers have no systemd and may already run (or lack) a system munge, so this starts
its own munged (own key and socket), slurmctld and slurmd, with every config, state, spool, log and
socket file in one temp dir and free TCP ports, and stops each daemon by its PID. Client commands
find the cluster through SLURM_CONF in `env`. Needs root (slurmd launches jobs as the submitting user,
munged runs as the munge user) and tests/slurm/install_slurm.sh.

Job ids start at a random FirstJobId: MPICH names its shared-memory segment after the PMI kvs name,
which under srun is "<job id>.<step>", so a segment leaked by an aborted job of an earlier cluster that
also counted from 1 would be reused and hang MPI_Init (seen here). stop() removes this cluster's own.

The node declares CPUs=4 whatever the machine has (SlurmdParameters=config_overrides, task/none: no
binding), so a 3-rank job fits on a 2-core machine; ranks idle by backing off, so that is cheap.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"
TOOLS = ("sbatch", "sinfo", "squeue", "scancel", "slurmctld", "slurmd", "munged")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here: missing tools or daemons that did not start (the message says which)."""


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports free right now (so a system SLURM on 6817/6818 is left alone)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


SLURM_CONF = """\
ClusterName=dsitest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool{node_suffix}
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd{node_suffix}.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd{node_suffix}.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
KillWait=5
# sbatch --wait polls every 2 s only while MinJobAge < 6 (else 2, 8, 32 s); 5 s still outlives a poll
MinJobAge=5
FirstJobId={first_job_id}
{node_lines}
PartitionName=test Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    def __init__(self, cpus: int = 4, nodes: int = 1):
        """`nodes` > 1: that many SLURM nodes n1..nN on this one machine, one slurmd each (own port,
        spool, pid and log via %n), each with `cpus` CPUs, so multi-node scripts run for real."""
        self.cpus = cpus
        self.nodes = nodes
        self.dir = Path(tempfile.mkdtemp(prefix="dsi-slurm-", dir="/tmp"))
        self.dir.chmod(0o755)  # munged (user munge) must reach its socket dir inside
        self.conf = self.dir / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopped = False
        self.first_job_id = random.randint(100_000, 60_000_000)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env.update(SLURM_CONF=str(self.conf), PATH=SBIN_PATH)

    # --- start -----------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        missing = [t for t in TOOLS if not shutil.which(t, path=SBIN_PATH)]
        if missing:
            raise SlurmUnavailable(f"missing {', '.join(missing)}: run tests/slurm/install_slurm.sh")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local SLURM cluster needs root (slurmd and munged)")
        munge_socket = self._start_munged()
        host = socket.gethostname().split(".")[0]
        (self.dir / "state").mkdir()
        (self.dir / "spool").mkdir()
        ctld_port, slurmd_port, *node_ports = _free_ports(2 + (self.nodes if self.nodes > 1 else 0))
        if self.nodes > 1:
            names = [f"n{i + 1}" for i in range(self.nodes)]
            node_lines = "\n".join(
                f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus} "
                "RealMemory=16000 State=UNKNOWN"
                for n, port in zip(names, node_ports)
            )
            node_names, node_suffix = ",".join(names), "-%n"
            for n in names:
                (self.dir / f"spool-{n}").mkdir()
        else:
            names = [host]
            node_lines = f"NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=16000 State=UNKNOWN"
            node_names, node_suffix = host, ""
        self.conf.write_text(
            SLURM_CONF.format(
                host=host,
                dir=self.dir,
                cpus=self.cpus,
                munge_socket=munge_socket,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                first_job_id=self.first_job_id,
                node_lines=node_lines,
                node_names=node_names,
                node_suffix=node_suffix,
            )
        )
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        if self.nodes > 1:
            for n in names:
                self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
        else:
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait_idle(timeout)

    def _start_munged(self) -> str:
        """Own key and socket: independent of (and harmless to) any munged the machine already runs."""
        try:
            munge = pwd.getpwnam("munge")
        except KeyError:
            raise SlurmUnavailable("no munge user: is the munge package installed?") from None
        mdir = self.dir / "munge"
        mdir.mkdir()
        mdir.chmod(0o755)  # munged insists that everyone may reach its socket
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (mdir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        sock = mdir / "munge.socket"
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={mdir / 'munged.pid'}",
                f"--log-file={mdir / 'munged.log'}",
                f"--seed-file={mdir / 'munged.seed'}",
            ],
            user=munge.pw_uid,
            group=munge.pw_gid,
        )
        deadline = time.monotonic() + 10
        while not sock.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"munged made no socket in 10 s:\n{self.logs()}")
            time.sleep(0.05)
        return str(sock)

    def _spawn(self, name: str, argv: list[str], **kwargs) -> None:
        log = open(self.dir / f"{name}.stderr", "wb")
        self.procs[name] = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with status {proc.returncode}:\n{self.logs()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.client(["sinfo", "-h", "-o", "%T %D"], timeout=10).stdout.strip()
            if state == f"idle {self.nodes}":
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"node not idle after {timeout:.0f} s (sinfo: {state!r}):\n{self.logs()}")

    # --- use -------------------------------------------------------------------------------------
    def client(
        self, argv: list[str], timeout: float = 30, cwd=None, env: dict | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run a client command against this cluster in its own process group; kill the group on timeout."""
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(self.env, **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise TimeoutError(f"timed out after {timeout} s: {' '.join(argv)}\n{out[-2000:]}\n{err[-2000:]}") from None
        except BaseException:  # e.g. pytest-timeout or Ctrl-C: never leave a client (sbatch --wait) behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {err.strip()}")
        return result

    def logs(self) -> str:
        files = sorted(self.dir.glob("*.stderr")) + sorted(self.dir.glob("*.log")) + [self.dir / "munge" / "munged.log"]
        return "\n".join(f"--- {f.name}:\n{_tail(f)}" for f in files if f.exists())

    # --- stop ------------------------------------------------------------------------------------
    def stop(self) -> list[int]:
        """Cancel jobs, stop the daemons by PID, kill any job process left; return the PIDs killed late.
        Safe to call twice, and after a failed start."""
        if self.stopped:
            return []
        self.stopped = True
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.client(["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name], timeout=10)
                deadline = time.monotonic() + 10
                while self.client(["squeue", "-h", "-t", "PD,R,CG"], timeout=10).stdout.strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            except (TimeoutError, OSError):
                pass
        daemons = [n for n in self.procs if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in daemons:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        leftovers = self._job_processes()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        _remove_mpich_segments(self.first_job_id)
        return leftovers

    def _job_processes(self) -> list[int]:
        """PIDs of processes of this cluster (slurmstepd, job scripts, ranks): they carry our SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids


def _fnv1a(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def _remove_mpich_segments(first_job_id: int, jobs: int = 500, steps: int = 4) -> None:
    """Unlink /dev/shm segments that MPICH leaked for this cluster's job steps (named mpich_{shm,vci}_
    <FNV-1a of "<job>.<step>">_<node>), unless some process still maps them."""
    shm = Path("/dev/shm")
    names = {
        f"{_fnv1a(f'{job}.{step}'):x}" for job in range(first_job_id, first_job_id + jobs) for step in range(steps)
    }
    ours = [p for p in shm.glob("mpich_*_*_*") if p.name.split("_")[2] in names]
    if not ours:
        return
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(p.name for p in ours if p.name in maps.read_text())
        except OSError:
            continue
    for path in ours:
        if path.name not in mapped:
            path.unlink(missing_ok=True)
