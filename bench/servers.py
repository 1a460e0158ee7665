"""Starting and stopping uvicorn the way it is deployed, and reading its workers."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

BIN = Path(sys.executable).parent
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``uvicorn APP --workers N`` on a free loopback port, in a process group of its own;
    or, with ``port_env``, the command ``app`` itself, told its port in that variable.

    Entering waits until ``ready_path`` answers 200; leaving sends SIGTERM to the
    uvicorn master (which stops its workers gracefully) and, only if the group
    outlives the timeout, SIGKILL to that group.
    """

    def __init__(
        self,
        app: list[str],
        *,
        workers: int = 1,
        env: dict[str, str],
        ready_path: str,
        log_path: Path,
        port_env: str | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        if port_env is not None:
            self._command = app
            env = env | {port_env: str(self.port)}
        else:
            self._command = [
                str(BIN / "uvicorn"),
                *app,
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--workers={workers}",
                "--no-access-log",
                "--log-level=warning",
            ]
        self._env = env
        self._ready_path = ready_path
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Self:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: ASYNC220 (started once, not awaited)
                self._command,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        await self._wait_ready()
        return self

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    break
                try:
                    if (await client.get(self._ready_path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        await self.stop()
        tail = self._log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(self._command)} did not become ready:\n{tail}")

    @property
    def pid(self) -> int:
        """The uvicorn master's pid (also its process group: it leads a session of its own)."""
        assert self._process is not None
        return self._process.pid

    def send_signal(self, signum: int, *, group: bool = False) -> None:
        """Signal the master, or with ``group`` the master and every worker."""
        if group:
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)

    async def wait(self, seconds: float) -> int | None:
        """The master's exit status once it has exited, or None if it outlives ``seconds``."""
        assert self._process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self._process.wait, seconds)
        return None

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the master, spawned by multiprocessing)."""
        assert self._process is not None
        # -ww: never cut the command line to $COLUMNS (pytest sets it), or the resource
        # tracker's would lose the words that tell it from a worker's
        children = subprocess.run(
            ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(self._process.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [
            int(line.split(None, 1)[0])
            for line in children.splitlines()
            if "multiprocessing" in line and "resource_tracker" not in line
        ]

    def cpu_seconds(self, *, user_only: bool = False) -> float:
        """CPU time of the workers so far (user and system, or user only)."""
        ticks = 0
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                utime, stime = int(fields[11]), int(fields[12])  # fields 14, 15 of proc(5)
                ticks += utime if user_only else utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def worker_rss_mib(self) -> list[float]:
        """Resident memory of each worker, in MiB."""
        sizes = []
        for pid in self.worker_pids():
            rss_kib = subprocess.run(
                ["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, check=False
            ).stdout.strip()
            if rss_kib:
                sizes.append(int(rss_kib) / 1024)
        return sizes

    async def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is not None:
            # the master is gone (killed); workers it left behind must not outlive it
            if _group_alive(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            return
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_SECONDS)
        if process.poll() is None or _group_alive(process.pid):
            # the master or one of its workers outlived a graceful stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
