"""Lookups over a small and a grown log, interleaved (issue 18): whether lookups/s and
p99 with sealing on over millions of past events stay within 10 % of a small log's,
measured so that the machine's own noise is seen beside the difference.

    .venv/bin/python -m bench.interleaved                       # 20,000 and 2,000,000
    .venv/bin/python -m bench.interleaved --sizes 20000,10000000 --rounds 6

Two throwaway PostgreSQL databases set up as production (bench/run.py: the owner
migrates, the service logs in NOINHERIT acting as ``cpr_app``, CPR_ENVIRONMENT=
production), each with the same register (BENCH_ENTRIES) and a history of past lookups
sealed by the service's sequencer (bench/seed.py ``seed_audit_history``): the small
log's size and the grown one's. One service over each (BENCH_WORKERS workers, sealing
on), both up throughout; a CHECKPOINT after the seeds, then a warm-up of each. Then
``--rounds`` rounds, each one wrk run of BENCH_DURATION seconds at BENCH_CONNECTIONS
(the largest given) against each service, in the order small, grown | grown, small |
...: a drift in the machine's load (other tenants of a shared machine) falls on both
alike. Each run has new clients
(``new_client_tokens``), as in ``make bench``.

Printed and written to var/bench/results-interleaved.md: every run, with the log's size
before it (each run adds its lookups: the small log ends several times its seed) and
what it cannot be read without (errors, other processes' load, sealing not caught up);
each log's median lookups/s and p99; the grown log's ratio of the small's, round by
round and the median of those ratios; the noise, as the spread of the small log's own
runs (slowest / fastest); and whether the median ratios are within 10 % with no errors.
Every 200 must have its audit event, and no request more than one (``AuditCheck``, as
``make bench`` checks), in both databases.
"""

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from app.audit.models import AuditEvent
from bench.report import DISTURBED_CORES, SEALING_ON, AuditCheck, Run
from bench.run import (
    OUTPUT_DIR,
    ROOT,
    BenchConfig,
    Engines,
    admin_engine,
    lookup_outcomes,
    measured_run,
    new_client_tokens,
    postgres_unreachable,
    prepare_database,
    production_database,
    seed_for_lookups,
    seeding_engine,
    service_env,
    service_server,
)
from bench.servers import Server

BUDGET = 0.10
ROUNDS = 6


@dataclass
class Log:
    """One log size: its service, the engines into its database, and its runs."""

    name: str  # "small" or "grown"
    size: int  # past lookups seeded before the runs
    engines: Engines
    server: Server
    key_dir: Path
    bodies: Path
    runs: list[Run] = field(default_factory=list)
    events: list[int] = field(default_factory=list)  # the log's events before each run
    # The warm-up's answers, audited with the runs'.
    warm_answered: int = 0
    warm_unanswered: int = 0
    outcomes_before: dict[str, int] = field(default_factory=dict)

    @property
    def rates(self) -> list[float]:
        return [run.result.requests_per_second for run in self.runs]

    @property
    def p99s(self) -> list[float]:
        return [run.result.p99_us / 1000 for run in self.runs]


@contextlib.asynccontextmanager
async def grown_log(config: BenchConfig, name: str, size: int, tmp: Path) -> AsyncIterator[Log]:
    """A production-like database with ``size`` sealed past lookups and a service over it."""
    async with production_database(config.postgres_url) as database:
        env = service_env(database, tmp)
        prepare_database(database, env, tmp)
        engines = Engines(writer=seeding_engine(env), admin=admin_engine(database))
        try:
            _, bodies = await seed_for_lookups(engines, config, env, tmp, history=size)
            async with service_server(
                config, env, OUTPUT_DIR / f"interleaved-{name}.log"
            ) as server:
                log = Log(name, size, engines, server, Path(env["CPR_KEY_DIR"]), bodies)
                log.outcomes_before = await lookup_outcomes(engines.admin)
                yield log
        finally:
            await engines.writer.dispose()
            await engines.admin.dispose()


async def one_run(log: Log, config: BenchConfig, label: str, duration: float) -> Run:
    """One wrk run against ``log``'s service with new clients, as ``make bench`` runs
    one (``measured_run``: the CPU spent, other load, sealing caught up after)."""
    tokens = await new_client_tokens(
        log.engines.writer, log.key_dir, label, config.clients, log.bodies.with_name("tokens.txt")
    )
    return await measured_run(
        SEALING_ON,
        max(config.connections),
        log.server,
        log.engines.admin,
        f"{log.server.base_url}/v1/lookups",
        duration=duration,
        bodies=log.bodies,
        tokens=tokens,
        watch_sealing=True,
    )


async def event_count(log: Log) -> int:
    async with log.engines.admin.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _spread(values: list[float]) -> float:
    """Slowest to fastest (or largest to smallest): the noise of single runs."""
    return max(values) / min(values)


def _flags(run: Run) -> str:
    """What a run's numbers cannot be read without: errors, other load, sealing left."""
    notes = []
    if run.result.errors:
        notes.append(f"{run.result.errors} errors")
    if run.other_cores >= DISTURBED_CORES:
        notes.append(f"{run.other_cores:.1f} cores busy elsewhere")
    if run.sealing and "still unsealed" in run.sealing:
        notes.append(run.sealing)
    return "; ".join(notes)


def report(small: Log, grown: Log, config: BenchConfig, audits: list[AuditCheck]) -> str:
    """The runs side by side, the medians, the ratios and the noise, as markdown."""
    rate_ratios = [b / a for a, b in zip(small.rates, grown.rates, strict=True)]
    p99_ratios = [b / a for a, b in zip(small.p99s, grown.p99s, strict=True)]
    rate = statistics.median(rate_ratios)
    p99 = statistics.median(p99_ratios)
    errors = sum(run.result.errors for run in (*small.runs, *grown.runs))
    within = rate >= 1 - BUDGET and p99 <= 1 + BUDGET and errors == 0
    lines = [
        f"## Lookups with sealing on: {grown.size:,} past events beside {small.size:,}",
        "",
        f"PostgreSQL as in production; {config.workers} uvicorn workers per service; "
        f"wrk {config.duration:g} s per run at {max(config.connections)} connections; "
        f"{config.clients} new system clients per run; {len(small.runs)} rounds, "
        "interleaved (small, grown | grown, small | ...). Each run adds its lookups to "
        "its log: the events column is the log before the run.",
        "",
        "| round | events small | req/s | p99 ms | events grown | req/s | p99 ms "
        "| req/s ratio | p99 ratio | notes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in range(len(small.runs)):
        a, b = small.runs[n], grown.runs[n]
        notes = "; ".join(
            f"{log.name}: {flags}"
            for log, run in ((small, a), (grown, b))
            if (flags := _flags(run))
        )
        lines.append(
            f"| {n + 1} | {small.events[n]:,} | {small.rates[n]:.0f} | {small.p99s[n]:.1f} "
            f"| {grown.events[n]:,} | {grown.rates[n]:.0f} | {grown.p99s[n]:.1f} "
            f"| {rate_ratios[n]:.2f}x | {p99_ratios[n]:.2f}x | {notes} |"
        )
    lines += [
        f"| median | | {statistics.median(small.rates):.0f} | {statistics.median(small.p99s):.1f} "
        f"| | {statistics.median(grown.rates):.0f} | {statistics.median(grown.p99s):.1f} "
        f"| {rate:.2f}x | {p99:.2f}x | the median of the rounds' ratios |",
        "",
        f"Noise, the small log's own runs, slowest to fastest: req/s {_spread(small.rates):.2f}x, "
        f"p99 {_spread(small.p99s):.2f}x (the grown log's: {_spread(grown.rates):.2f}x, "
        f"{_spread(grown.p99s):.2f}x). Round by round, the grown log's req/s "
        f"{min(rate_ratios):.2f}-{max(rate_ratios):.2f}x of the small's, p99 "
        f"{min(p99_ratios):.2f}-{max(p99_ratios):.2f}x.",
        "",
        *(f"- Audit: {check.describe()}" for check in audits),
        f"- Errors (answers other than 200, socket errors): {errors}.",
        "",
        f"Median ratios within {BUDGET:.0%} of the small log, no errors: "
        f"{'yes' if within else 'no'}",
    ]
    return "\n".join(lines) + "\n"


async def audit_check(log: Log) -> AuditCheck:
    """Every 200 wrk saw has its audit event, and no more events than requests sent."""
    after = await lookup_outcomes(log.engines.admin)
    outcomes = {k: after.get(k, 0) - log.outcomes_before.get(k, 0) for k in after}
    return AuditCheck(
        f"{log.name} log ({log.size:,} past events)",
        sum(outcomes.values()),
        sum(run.result.ok for run in log.runs) + log.warm_answered,
        sum(run.result.unanswered for run in log.runs) + log.warm_unanswered,
        outcomes,
    )


async def main(sizes: list[int], rounds: int) -> int:
    config = BenchConfig.from_environment()
    if problem := await postgres_unreachable(config):
        print(f"PostgreSQL at {config.postgres_url} is unreachable ({problem})")
        return 1
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="cpr-small-") as a,
        tempfile.TemporaryDirectory(prefix="cpr-grown-") as b,
    ):
        async with (
            grown_log(config, "small", sizes[0], Path(a)) as small,
            grown_log(config, "grown", sizes[1], Path(b)) as grown,
        ):
            for log in (small, grown):
                # The seed's dirty pages written out now, not during the first rounds.
                async with log.engines.admin.connect() as connection:
                    await connection.exec_driver_sql("CHECKPOINT")
                if config.warmup > 0:
                    warm = await one_run(
                        log, config, f"interleaved warm-up {log.name}", config.warmup
                    )
                    log.warm_answered, log.warm_unanswered = warm.result.ok, warm.result.unanswered
            for n in range(rounds):
                for log in (small, grown) if n % 2 == 0 else (grown, small):
                    log.events.append(await event_count(log))
                    run = await one_run(log, config, f"interleaved {n} {log.name}", config.duration)
                    log.runs.append(run)
                    print(
                        f"  round {n + 1}, {log.name} ({log.events[-1]:,} events): "
                        f"{run.result.requests_per_second:.0f} req/s, "
                        f"p99 {run.result.p99_us / 1000:.1f} ms {_flags(run)}",
                        flush=True,
                    )
            audits = [await audit_check(log) for log in (small, grown)]
    text = report(small, grown, config, audits)
    path = OUTPUT_DIR / "results-interleaved.md"
    path.write_text(text)
    print("\n" + text + f"\nwritten to {path.relative_to(ROOT)}")
    return 1 if any(check.verdict == "MISMATCH" for check in audits) else 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,2000000", help="past events: small,grown")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
        parser.error("--sizes takes two sizes, the small log's and then the larger grown one's")
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    sys.exit(asyncio.run(main(sizes, arguments.rounds)))


if __name__ == "__main__":
    cli()
