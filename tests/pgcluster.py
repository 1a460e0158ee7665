"""A private PostgreSQL 15 cluster for fault tests: made, broken and removed by the test.

The fault tests stop, kill and freeze the database under the service. They must
never do that to the shared server on 127.0.0.1:5432, so each run makes a
cluster of its own: ``initdb`` in a fresh directory owned by the machine's
``postgres`` user (run through ``runuser``), trust authentication, listening on
127.0.0.1 only, on a free port, with its Unix socket in that directory.
``fsync`` stays on (the durability the audit promise relies on); shared_buffers
is small, so that the cluster starts in a fraction of a second.

Needs root (for ``runuser``) and the binaries in ``/usr/lib/postgresql/15/bin``
(``CPR_TEST_PG_BINDIR`` to point elsewhere). Without them the tests that use it
skip, saying why; under ``CI=true`` they fail instead.
"""

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BINDIR = Path(os.environ.get("CPR_TEST_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
SHARED_PORT = 5432  # the shared server: never ours to stop
COMMAND_TIMEOUT_SECONDS = 60


class ClusterError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not running as root (runuser is needed to run initdb as the postgres user)"
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BINDIR / tool).is_file():
            return f"{BINDIR / tool} is missing (PostgreSQL 15 server binaries)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"there is no {OS_USER!r} user on this machine"
    return None


def require_private_cluster() -> None:
    """Skip (or, under CI=true, fail) when a private cluster cannot be made."""
    reason = unavailable_reason()
    if reason is None:
        return
    message = f"a private PostgreSQL cluster cannot be created: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; under CI the production fault tests must run")
    pytest.skip(message + "; production fault tests skipped")


def _free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != SHARED_PORT:
            return port


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (PostgreSQL backends are the postmaster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # the command name may hold spaces and parentheses: split after the last ')'
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class PgCluster:
    """One private cluster. Use as ``with PgCluster.create() as cluster:``; leaving
    always thaws it, stops it (immediate, then SIGKILL) and removes its directory."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgresql.log"
        self.port = port
        self.frozen: list[int] = []

    # --- life cycle -------------------------------------------------------------------

    @classmethod
    @contextmanager
    def create(
        cls, *, shared_buffers: str = "16MB", max_connections: int = 200
    ) -> Iterator["PgCluster"]:
        require_private_cluster()
        root = Path(tempfile.mkdtemp(prefix="cpr-pgcluster-"))
        postgres = pwd.getpwnam(OS_USER)
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
        root.chmod(0o700)
        cluster = cls(root, _free_port())
        try:
            cluster._run(
                "initdb",
                f"--pgdata={cluster.data}",
                "--auth=trust",
                f"--username={OS_USER}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(cluster.port),
                "unix_socket_directories": f"'{root}'",
                "fsync": "on",
                "synchronous_commit": "on",
                "shared_buffers": f"'{shared_buffers}'",
                "max_connections": str(max_connections),
                "log_min_messages": "warning",
                "log_line_prefix": "'%m [%p] %u@%d '",
            }
            with (cluster.data / "postgresql.auto.conf").open("a") as conf:
                for name, value in settings.items():
                    conf.write(f"{name} = {value}\n")
            cluster.start()
            yield cluster
        finally:
            cluster.destroy()

    def _run(self, tool: str, *args: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
        command = ["runuser", "-u", OS_USER, "--", str(BINDIR / tool), *args]
        try:
            done = subprocess.run(  # noqa: S603 (our own, fixed command)
                command,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                cwd=self.root,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(command)} did not finish in {timeout} s") from exc
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                f"\n--- server log ---\n{self.log_tail()}"
            )
        return done.stdout

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    @property
    def admin_url(self) -> str:
        """The bootstrap superuser, for setting up roles and for checking what was written."""
        return f"postgresql+asyncpg://{OS_USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run(
            "pg_ctl",
            f"--pgdata={self.data}",
            f"--log={self.log}",
            "--wait",
            "--timeout=30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast|immediate`` (a frozen cluster is thawed first)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(mode)
        self.thaw()
        if self.postmaster_pid() is None:
            return
        self._run(
            "pg_ctl", f"--pgdata={self.data}", f"--mode={mode}", "--wait", "--timeout=30", "stop"
        )

    def destroy(self) -> None:
        """Thaw, stop, and remove everything; kills what does not stop. Never raises."""
        with contextlib.suppress(Exception):
            self.thaw()
        with contextlib.suppress(Exception):
            self.stop("immediate")
        pid = self.postmaster_pid()
        if pid is not None:
            for process in [*_children(pid), pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- processes --------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid), or None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid) else None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state != "Z"

    def processes(self) -> list[int]:
        """The postmaster and all its children (backends and auxiliary processes)."""
        pid = self.postmaster_pid()
        return [] if pid is None else [pid, *_children(pid)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every child: a hung server, or a partition.

        The kernel still completes TCP handshakes on the listening socket, so
        clients connect and then hear nothing, as from a host that hangs.
        The postmaster is stopped first so that it forks no child meanwhile.
        """
        pid = self.postmaster_pid()
        if pid is None:
            raise ClusterError("cannot freeze: the cluster is not running")
        os.kill(pid, signal.SIGSTOP)
        self.frozen = [pid]
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                self.frozen.append(child)

    def thaw(self) -> None:
        """SIGCONT what freeze() stopped, and any child of the postmaster."""
        pid = self.postmaster_pid()
        targets = set(self.frozen) | ({pid, *_children(pid)} if pid is not None else set())
        for process in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGCONT)
        self.frozen = []
