"""Reading CPU time off /proc: the server's workers, PostgreSQL, everything else."""

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from bench.servers import Server


@dataclass(frozen=True)
class CpuSnapshot:
    server: float  # the server's workers
    database: float  # PostgreSQL's processes
    # User-mode CPU of every other process: the machine's, less the server's,
    # PostgreSQL's, this process's and its finished children's (wrk). Kernel time is
    # left out: loopback networking and fsync run partly in kernel threads that no
    # process is charged for.
    others_user: float

    @classmethod
    def take(cls, server: Server) -> "CpuSnapshot":
        known = (
            server.cpu_seconds(user_only=True)
            + postgres_cpu_seconds(user_only=True)
            + own_user_seconds()
        )
        return cls(server.cpu_seconds(), postgres_cpu_seconds(), machine_user_seconds() - known)


def machine_user_seconds() -> float:
    """User-mode CPU time of all cores (user and nice), from /proc/stat."""
    user, nice = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:3]
    return (int(user) + int(nice)) / os.sysconf("SC_CLK_TCK")


def own_user_seconds() -> float:
    """User-mode CPU time of this process and of its finished children (wrk, once exited)."""
    return sum(
        resource.getrusage(who).ru_utime for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )


def postgres_cpu_seconds(*, user_only: bool = False) -> float:
    """CPU time of the PostgreSQL server's processes on this machine, including the
    backends that have exited (the postmaster's reaped children)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            name, _, fields = stat.read_text().rpartition(")")
            if name.endswith("(postgres"):
                # utime, stime, cutime, cstime: fields 14-17 of proc(5)
                utime, stime, cutime, cstime = (int(v) for v in fields.split()[11:15])
                ticks += utime + cutime if user_only else utime + stime + cutime + cstime
    return ticks / os.sysconf("SC_CLK_TCK")
