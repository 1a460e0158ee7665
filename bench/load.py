"""Driving load with wrk (bench/lookup.lua) and reading what it measured."""

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("lookup.lua")
RESULT_PREFIX = "BENCH_RESULT "
# wrk's default of 2 s would count slow answers as errors and drop their latency.
REQUEST_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class WrkResult:
    duration_us: int
    requests: int  # answered, whatever the status
    ok: int  # answered 200
    other_status: int  # answered with another status
    unanswered: int  # sent but not answered: in flight when wrk stopped, or a socket error
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    p50_us: int
    p90_us: int
    p95_us: int
    p99_us: int
    max_us: int
    mean_us: float

    @property
    def seconds(self) -> float:
        return self.duration_us / 1_000_000

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        """Answers other than 200, and socket errors (connect, read, write, timeout)."""
        sockets = self.connect_errors + self.read_errors + self.write_errors + self.timeouts
        return self.other_status + sockets


async def run_wrk(
    url: str,
    *,
    connections: int,
    duration_seconds: float,
    bodies: Path | None = None,
    tokens: Path | None = None,
) -> WrkResult:
    """One wrk run: POST the bodies (cycled) to ``url`` with the bearer tokens in the
    file ``tokens`` (cycled), or GET it when there are no bodies."""
    threads = min(connections, 2)
    script_args = (
        ["post", str(bodies), str(tokens) if tokens else "-"] if bodies is not None else ["get"]
    )
    process = await asyncio.create_subprocess_exec(
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration_seconds:g}s",
        f"--timeout={REQUEST_TIMEOUT_SECONDS}s",
        "--latency",
        f"--script={LUA_SCRIPT}",
        url,
        "--",
        *script_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    output = stdout.decode()
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            return WrkResult(**json.loads(line.removeprefix(RESULT_PREFIX)))
    raise RuntimeError(
        f"wrk exited {process.returncode} without a result:\n{output}\n{stderr.decode()}"
    )
