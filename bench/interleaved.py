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
on), both up throughout, each warmed up first. Then ``--rounds`` rounds, each one wrk
run of BENCH_DURATION seconds at BENCH_CONNECTIONS (the largest given) against each
service, in the order small, grown | grown, small | ...: a drift in the machine's load
(other tenants of a shared machine) falls on both alike. Each run has new clients
(``new_client_tokens``), as in ``make bench``.

Printed and written to var/bench/results-interleaved.md: every run; each log's median
lookups/s and p99; the grown log's ratio of the small's, round by round and the median
of those; the noise, as the spread of the small log's own runs (slowest / fastest); and
whether the median ratios are within 10 %. Every 200 must have its audit event, in
both databases.
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

from bench.load import WrkResult
from bench.report import SEALING_ON
from bench.run import (
    NEVER_REGISTERED,
    OUTPUT_DIR,
    ROOT,
    BenchConfig,
    BenchDatabase,
    Engines,
    admin_engine,
    lookup_outcomes,
    measured_run,
    new_client_tokens,
    postgres_unreachable,
    prepare_database,
    production_database,
    seeding_engine,
    service_env,
    service_settings,
    write_bodies,
)
from bench.seed import analyse, seed_audit_history, seed_register
from bench.servers import Server

BUDGET = 0.10
ROUNDS = 4


@dataclass
class Log:
    """One log size: its database, service and runs."""

    size: int
    database: BenchDatabase
    engines: Engines
    server: Server
    key_dir: Path
    bodies: Path
    runs: list[WrkResult] = field(default_factory=list)
    warmed: int = 0  # the warm-up's 200s: audited too
    outcomes_before: dict[str, int] = field(default_factory=dict)

    @property
    def rates(self) -> list[float]:
        return [run.requests_per_second for run in self.runs]

    @property
    def p99s(self) -> list[float]:
        return [run.p99_us / 1000 for run in self.runs]


@contextlib.asynccontextmanager
async def grown_log(config: BenchConfig, size: int, tmp: Path) -> AsyncIterator[Log]:
    """A production-like database with ``size`` sealed past lookups and a service over it."""
    async with production_database(config.postgres_url) as database:
        env = service_env(database, tmp)
        prepare_database(database, env, tmp)
        engines = Engines(writer=seeding_engine(env), admin=admin_engine(database))
        try:
            seeded = await seed_register(
                engines.writer, entries=config.entries, never_registered=NEVER_REGISTERED
            )
            took = await seed_audit_history(engines.writer, service_settings(env), events=size)
            await analyse(engines.admin)
            print(f"  {size:,} past lookups seeded and sealed in {took:.0f} s", flush=True)
            bodies = tmp / "bodies.jsonl"
            write_bodies(bodies, seeded)
            log_path = OUTPUT_DIR / f"interleaved-{size}.log"
            async with Server(
                ["app.main:create_app", "--factory"],
                workers=config.workers,
                env=env,
                ready_path="/readyz",
                log_path=log_path,
            ) as server:
                log = Log(size, database, engines, server, Path(env["CPR_KEY_DIR"]), bodies)
                log.outcomes_before = await lookup_outcomes(engines.admin)
                yield log
        finally:
            await engines.writer.dispose()
            await engines.admin.dispose()


async def one_run(log: Log, config: BenchConfig, name: str, duration: float) -> WrkResult:
    tokens = await new_client_tokens(
        log.engines.writer, log.key_dir, name, config.clients, log.bodies.with_name("tokens.txt")
    )
    run = await measured_run(
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
    return run.result


def _ratio(values: list[float]) -> float:
    return max(values) / min(values)


def report(small: Log, grown: Log, config: BenchConfig, audited: list[str]) -> str:
    rate_ratios = [b / a for a, b in zip(small.rates, grown.rates, strict=True)]
    p99_ratios = [b / a for a, b in zip(small.p99s, grown.p99s, strict=True)]
    rate = statistics.median(rate_ratios)
    p99 = statistics.median(p99_ratios)
    within = rate >= 1 - BUDGET and p99 <= 1 + BUDGET
    lines = [
        f"## Lookups with sealing on: {grown.size:,} past events beside {small.size:,}",
        "",
        f"PostgreSQL as in production; {config.workers} uvicorn workers per service; "
        f"wrk {config.duration:g} s per run at {max(config.connections)} connections; "
        f"{config.clients} new system clients per run; {len(small.runs)} rounds, "
        "interleaved (small, grown | grown, small | ...).",
        "",
        "| round | req/s small | req/s grown | ratio | p99 ms small | p99 ms grown | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, (a, b, c, d) in enumerate(
        zip(small.rates, grown.rates, small.p99s, grown.p99s, strict=True), start=1
    ):
        lines.append(
            f"| {n} | {a:.0f} | {b:.0f} | {b / a:.2f}x | {c:.1f} | {d:.1f} | {d / c:.2f}x |"
        )
    lines += [
        f"| median | {statistics.median(small.rates):.0f} | {statistics.median(grown.rates):.0f} "
        f"| {rate:.2f}x | {statistics.median(small.p99s):.1f} "
        f"| {statistics.median(grown.p99s):.1f} | {p99:.2f}x |",
        "",
        f"Noise, the small log's own runs, slowest to fastest: req/s {_ratio(small.rates):.2f}x, "
        f"p99 {_ratio(small.p99s):.2f}x (the grown log's: {_ratio(grown.rates):.2f}x, "
        f"{_ratio(grown.p99s):.2f}x).",
        f"Round by round, the grown log's req/s {min(rate_ratios):.2f}-{max(rate_ratios):.2f}x "
        f"of the small's, p99 {min(p99_ratios):.2f}-{max(p99_ratios):.2f}x.",
        "",
        *audited,
        "",
        f"Median ratios within {BUDGET:.0%} of the small log: {'yes' if within else 'no'}",
    ]
    return "\n".join(lines) + "\n"


async def audit_line(log: Log) -> tuple[str, bool]:
    """Every 200 wrk saw has its audit event (the warm-ups' included)."""
    after = await lookup_outcomes(log.engines.admin)
    events = sum(after.values()) - sum(log.outcomes_before.values())
    answered = sum(run.ok for run in log.runs) + log.warmed
    ok = events >= answered
    verdict = "ok" if ok else "MISMATCH"
    return (
        f"Audit, {log.size:,} past events: {events:,} events for {answered:,} 200s: {verdict}.",
        ok,
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
            grown_log(config, sizes[0], Path(a)) as small,
            grown_log(config, sizes[1], Path(b)) as grown,
        ):
            for log in (small, grown):
                warm = await one_run(log, config, f"interleaved warm-up {log.size}", config.warmup)
                log.warmed = warm.ok
            for n in range(rounds):
                order = (small, grown) if n % 2 == 0 else (grown, small)
                for log in order:
                    result = await one_run(
                        log, config, f"interleaved {n} {log.size}", config.duration
                    )
                    log.runs.append(result)
                    print(
                        f"  round {n + 1}, {log.size:,} past events: "
                        f"{result.requests_per_second:.0f} req/s, "
                        f"p99 {result.p99_us / 1000:.1f} ms",
                        flush=True,
                    )
            checks = [await audit_line(log) for log in (small, grown)]
    text = report(small, grown, config, [line for line, _ in checks])
    path = OUTPUT_DIR / "results-interleaved.md"
    path.write_text(text)
    print("\n" + text + f"\nwritten to {path.relative_to(ROOT)}")
    return 0 if all(ok for _, ok in checks) else 1


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,2000000", help="past events: small,grown")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    if len(sizes) != 2:
        parser.error("--sizes takes two sizes: the small log's and the grown one's")
    sys.exit(asyncio.run(main(sizes, arguments.rounds)))


if __name__ == "__main__":
    cli()
