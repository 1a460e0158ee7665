"""What each run measured, and the tables `make bench` prints and writes."""

import contextlib
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.load import WrkResult
from bench.seed import SeededRegister

# Transactions other databases of the PostgreSQL server may run during a run before
# the run is flagged: their CPU is counted as PostgreSQL's (another project's tests,
# say, sharing the server).
DISTURBED_XACTS = 200
SEALING_ON, SEALING_OFF = "lookup, sealing on", "lookup, sealing off"
# The same service with the volume limits counted without their locks
# (CPR_LOOKUP_LIMITS_SERIALISED=false): what exact limits cost (issue 12).
LIMITS_UNLOCKED = "lookup, limits not serialised"
HEALTHZ, CEILING = "GET /healthz (floor)", "ceiling (raw driver)"
# The figure issue 11 compares against: PostgreSQL, lookups with sealing on at 32
# connections, before the service ran in production's role set-up.
PREVIOUS_CONNECTIONS, PREVIOUS_LOOKUPS_PER_SECOND, PREVIOUS_DATE = 32, 1444, "2026-12-01"


@dataclass(frozen=True)
class Run:
    scenario: str
    connections: int
    result: WrkResult
    server_cpu_seconds: float  # the uvicorn workers (on SQLite, the database's work too)
    database_cpu_seconds: float | None  # PostgreSQL's processes; None on SQLite
    sessions_opened: int | None  # PostgreSQL connections opened (pool growth and churn)
    sealing: str | None  # the sealing backlog when the load stopped (sealing on)
    other_cores: float  # cores kept busy by other processes during the run
    # transactions in other databases of the same PostgreSQL server during the run (their
    # work is counted as PostgreSQL's CPU above); None on SQLite
    other_database_xacts: int | None = None

    def cpu_ms_per_request(self, seconds: float | None) -> str:
        if seconds is None or not self.result.requests:
            return ""
        return f"{1000 * seconds / self.result.requests:.2f}"


@dataclass(frozen=True)
class AuditCheck:
    """Lookup events an instance wrote, against the 200s wrk received from it."""

    instance: str
    audited: int
    answered: int
    unanswered: int  # sent but never answered (in flight when wrk stopped)
    outcomes: dict[str, int]

    @property
    def verdict(self) -> str:
        # Each event commits before its answer leaves, so every 200 has one; a request
        # in flight when wrk stopped may have its event without wrk seeing the answer.
        if self.audited == self.answered:
            return "MATCH"
        if self.answered < self.audited <= self.answered + self.unanswered:
            return "MATCH (allowing for requests in flight when wrk stopped)"
        return "MISMATCH"

    def describe(self) -> str:
        extra = self.audited - self.answered
        in_flight = (
            f" + {extra} of the {self.unanswered} requests in flight when wrk stopped"
            if extra > 0
            else ""
        )
        mix = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"{self.verdict}: {self.instance}: {self.audited} lookup events for "
            f"{self.answered} 200 responses{in_flight} ({mix})"
        )


@dataclass
class BackendReport:
    backend: str
    seeded: SeededRegister | None = None
    setup: str = ""  # who the service and the bench connect as
    runs: list[Run] = field(default_factory=list)
    audit: list[AuditCheck] = field(default_factory=list)
    memory: dict[str, list[float]] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)
    import_timing: str = ""

    def add(self, run: Run) -> None:
        self.runs.append(run)
        print(f"  {_row(run, None)}", flush=True)

    def run(self, scenario: str, connections: int) -> Run | None:
        for run in self.runs:
            if run.scenario == scenario and run.connections == connections:
                return run
        return None

    def result(self, scenario: str, connections: int) -> WrkResult | None:
        run = self.run(scenario, connections)
        return run.result if run is not None else None


# A run during which other processes kept this much of the machine busy is flagged.
DISTURBED_CORES = 0.2
HEADER = (
    "| scenario | conns | req/s | p50 ms | p95 ms | p99 ms | errors | vs ceiling "
    "| server CPU ms/req | PostgreSQL CPU ms/req |"
)
RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _ms(microseconds: int) -> str:
    return f"{microseconds / 1000:.1f}"


def _share(part: WrkResult, whole: WrkResult) -> float | None:
    """``part``'s throughput as a share of ``whole``'s; None when ``whole`` answered
    nothing (a run that failed says so in its row, not with a ZeroDivisionError)."""
    if not whole.requests_per_second:
        return None
    return part.requests_per_second / whole.requests_per_second


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _row(run: Run, ceiling: WrkResult | None) -> str:
    result, share = run.result, ""
    if ceiling is not None and run.scenario in (SEALING_ON, SEALING_OFF):
        share = _percent(_share(result, ceiling))
    return (
        f"| {run.scenario} | {run.connections} | {result.requests_per_second:.0f} | "
        f"{_ms(result.p50_us)} | {_ms(result.p95_us)} | {_ms(result.p99_us)} | "
        f"{result.errors} | {share} | {run.cpu_ms_per_request(run.server_cpu_seconds)} | "
        f"{run.cpu_ms_per_request(run.database_cpu_seconds)} |"
    )


def seeded_line(seeded: SeededRegister) -> str:
    return (
        f"seeded {seeded.entries} entries in {seeded.seconds:.1f} s "
        f"({len(seeded.on_plan)} NHS numbers on a live plan, "
        f"{len(seeded.not_on_plan)} valid ones without)"
    )


def backend_markdown(report: BackendReport, connections: tuple[int, ...]) -> list[str]:
    lines = [f"## {report.backend}", ""]
    if report.setup:
        lines += [report.setup, ""]
    if report.seeded is not None:
        lines += [seeded_line(report.seeded) + ".", ""]
    lines += [HEADER, RULE]
    order = [SEALING_ON, SEALING_OFF, LIMITS_UNLOCKED, HEALTHZ, CEILING]
    for scenario in order:
        for count in connections:
            run = report.run(scenario, count)
            if run is not None:
                lines.append(_row(run, report.result(CEILING, count)))
    for heading, other in (
        ("Sealing on / off (lookup req/s):", SEALING_OFF),
        ("Exact volume limits: serialised / not (lookup req/s, sealing on):", LIMITS_UNLOCKED),
    ):
        lines += ["", heading, ""]
        for count in connections:
            on, off = report.result(SEALING_ON, count), report.result(other, count)
            if on and off:
                lines.append(
                    f"- {count} connections: {on.requests_per_second:.0f} / "
                    f"{off.requests_per_second:.0f} = {_percent(_share(on, off))}; "
                    f"p99 {_ms(on.p99_us)} / {_ms(off.p99_us)} ms"
                )
    opened = [run for run in report.runs if run.sessions_opened is not None]
    if opened:
        lines += ["", "PostgreSQL connections opened during each run (pool growth and churn):", ""]
        for scenario in (SEALING_ON, SEALING_OFF, CEILING):
            counts = [
                f"{r.sessions_opened} at {r.connections}" for r in opened if r.scenario == scenario
            ]
            if counts:
                lines.append(f"- {scenario}: " + ", ".join(counts))
    disturbed = [
        run
        for run in report.runs
        if run.other_cores >= DISTURBED_CORES or (run.other_database_xacts or 0) >= DISTURBED_XACTS
    ]
    lines += ["", "Other load on the machine during the runs:", ""]
    if disturbed:
        lines += [
            f"- {run.scenario} at {run.connections}: {run.other_cores:.1f} cores busy elsewhere"
            + (
                f"; {run.other_database_xacts} transactions in other PostgreSQL databases"
                if run.other_database_xacts
                else ""
            )
            for run in disturbed
        ]
    else:
        worst = max((run.other_cores for run in report.runs), default=0.0)
        lines.append(f"- none worth noting (at most {worst:.2f} cores busy elsewhere)")
    lines += ["", "Sealing backlog (sealing on):", ""]
    lines += [
        f"- {run.connections} connections: {run.sealing}" for run in report.runs if run.sealing
    ]
    lines += ["", "Audit events against 200 responses:", ""]
    lines += [f"- {check.describe()}" for check in report.audit]
    lines += ["", "Resident memory per worker after the load:", ""]
    for scenario, sizes in report.memory.items():
        lines.append(f"- {scenario}: " + ", ".join(f"{size:.0f} MiB" for size in sizes))
    lines += ["", report.import_timing, ""]
    if report.profile:
        lines += ["Profile of one worker under the highest load (py-spy):", "", "```"]
        lines += [*report.profile, "```", ""]
    return lines


def against_previous(report: BackendReport) -> str:
    """Lookups/s at PREVIOUS_CONNECTIONS (sealing on) beside the previous figure."""
    previous = f"{PREVIOUS_LOOKUPS_PER_SECOND:,}/s on {PREVIOUS_DATE}"
    on = report.result(SEALING_ON, PREVIOUS_CONNECTIONS)
    if on is None:
        return f"not measured (no run at {PREVIOUS_CONNECTIONS} connections); previously {previous}"
    ratio = on.requests_per_second / PREVIOUS_LOOKUPS_PER_SECOND
    return f"{on.requests_per_second:,.0f}/s vs {previous} = {ratio:.2f}x"


def targets_markdown(reports: list[BackendReport], connections: tuple[int, ...]) -> list[str]:
    """The issue's targets, read off the PostgreSQL runs at the highest concurrency."""
    postgres = next((r for r in reports if r.backend == "postgresql"), None)
    top = max(connections)
    lines = [f"## Targets (PostgreSQL, {top} connections)", ""]
    if postgres is None:
        return [*lines, "- not measured: no PostgreSQL run", ""]
    lines.append(
        f"- lookups/s at {PREVIOUS_CONNECTIONS} connections (sealing on; the service as "
        f"production runs it, docs/audit-log.md): {against_previous(postgres)}"
    )
    on, off = postgres.result(SEALING_ON, top), postgres.result(SEALING_OFF, top)
    ceiling = postgres.result(CEILING, top)
    if on is None or off is None or ceiling is None:
        return [*lines, "- not measured", ""]
    share, kept = _share(on, ceiling), _share(on, off)
    cost = None if kept is None else 1 - kept

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines += [
        f"- audited lookup >= 60 % of the ceiling: {_percent(share)} "
        f"({met(share is not None and share >= 0.6)})",
        f"- lookup p99 <= 25 ms: {_ms(on.p99_us)} ms ({met(on.p99_us <= 25_000)})",
        f"- sealing costs <= 10 %: {_percent(cost)} ({met(cost is not None and cost <= 0.10)})",
        f"- exact volume limits cost <= 5 %: {_limits_cost(postgres, top)}",
        f"- 50k import < 30 s: {postgres.import_timing}",
        "",
    ]
    return lines


def _limits_cost(report: BackendReport, connections: int) -> str:
    on = report.result(SEALING_ON, connections)
    unlocked = report.result(LIMITS_UNLOCKED, connections)
    kept = None if on is None or unlocked is None else _share(on, unlocked)
    if kept is None:
        return "not measured"
    cost = 1 - kept
    return f"{_percent(cost)} ({'met' if cost <= 0.05 else 'NOT met'})"


def machine_line() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{os.cpu_count()} cores ({model}){memory}, {python}"


def write_results(
    reports: list[BackendReport], connections: tuple[int, ...], conditions: str, path: Path
) -> None:
    """The tables, preceded by the machine and the run's ``conditions``, to ``path``
    and to stdout."""
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    lines = ["# cp-register benchmark", "", f"{when}; {machine_line()}; {conditions}", ""]
    for report in reports:
        lines += backend_markdown(report, connections)
    lines += targets_markdown(reports, connections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print("\n" + "\n".join(lines))
