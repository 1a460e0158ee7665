"""What sealing and the volume limits cost as the audit log grows (issue 18).

    .venv/bin/python -m bench.growth                      # 100,000 and 1,000,000 events
    .venv/bin/python -m bench.growth --sizes 2000000,10000000
    .venv/bin/python -m bench.growth --sizes 100000 --verify   # and time both verifications

For each size, in a scratch database of its own on the PostgreSQL server of
BENCH_POSTGRES_URL (trust auth, a superuser; dropped at the end), migrated with
``app.cli.upgrade_database``:

1. The log's body, ``size`` past lookups over the days up to two hours ago (at most DAILY
   a day, 30 days at least) by CLIENTS clients (each of one organisation), one of them
   (``client:long``, enquirer ``E-long``) with HISTORY of them,
   written with one ``INSERT ... SELECT generate_series`` with the queue trigger off
   (the body is sealed next, so it would only pass through the queue). Then sealed as
   the sequencer seals, in ``(occurred_at, id)`` order with the service's own hashing
   (``app.audit.sealing._chain``), the seals copied in: a chain the verifier accepts
   (``--verify`` runs it; it reads the whole log, so minutes at a million).
2. A burst of BURST lookups over the last ten minutes through the queue trigger, five
   of them in the last minute by ``client:long`` and five by ``client:fresh`` (no
   history), then ``VACUUM ANALYZE``: the statistics see a queue of BURST events.
   All but the newest BACKLOG are then sealed (as in 1): the queue the sequencer faces
   is BACKLOG events, while the statistics still say BURST ("stale").
3. Measures ``seal_pending`` (one batch of 250, rolled back, the median of five) and
   EXPLAIN (ANALYZE, BUFFERS) of each SELECT it ran; then ``VACUUM ANALYZE`` of the
   queue and the same again ("fresh").
4. Measures the three volume-limit subqueries of the lookup's statement
   (``app.lookup.limits.limit_columns``) for ``client:long`` and for ``client:fresh``:
   buffers and time of a custom plan (the values known to the planner) and of the
   generic plan (``plan_cache_mode = force_generic_plan``), as asyncpg's prepared
   statements come to run it.

Measures what the code in the working tree does: run it before and after a change.
"""

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.chain import EMPTY_HEAD, Checkpoint, CheckpointSigner
from app.audit.models import AuditEvent, AuditUnsealed
from app.audit.sealing import _chain, seal_pending
from app.audit.verify import verify_log, verify_since
from app.cli import upgrade_database
from app.config import Environment, Settings
from app.db import create_engine, create_sessionmaker
from app.lookup.limits import limit_columns, limit_parameters
from bench.custodian import (
    BIG_SHARE,
    ORGANISATIONS,
    body_columns,
    body_joins,
    measure,
    purpose_sql,
    seed_custodians,
)
from bench.custodian import RUNS as CUSTODIAN_RUNS
from bench.custodian import reads as custodian_reads

ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
# Autovacuum's interval on the log, in new events (migration 0017).
VACUUM_EVENTS = 10_000
# The small log the grown one is compared with, and the grown one (10 million: a long run).
SMALL = int(os.environ.get("GROWTH_SMALL", "20000"))
GROWTH_EVENTS = int(os.environ.get("GROWTH_EVENTS", "2000000"))
# Events a day in the body, at most: the national rate, ten million a year. A larger log
# is a longer past (2 million: 73 days; 10 million: a year), not a busier day.
DAILY = 27_400
# Members of staff who ask, nationally: with 20 (as before) every enquirer of every
# organisation made over ten not-found lookups an hour, all day: 98 not-found alerts.
ENQUIRERS = 2_000
HISTORY = 5_000  # past lookups of client:long (and of its enquirer E-long)
BURST = 20_000
BACKLOG = 2_000
BATCH = 250
RUNS = 5
# System clients, nationally: each of one organisation, as in service (client i % 400 is
# always of organisation i % 50). With 397 every client asked from all 50 organisations:
# 19,850 (organisation, client) groups for the alerts to count where there are 400.
CLIENTS = 400
assert CLIENTS % ORGANISATIONS == 0
STREAM_PARTITION = 10_000
# --verify: the incremental walk starts this many events before the head: a day's, as
# an auditor who verifies daily from the checkpoint of the day before.
SINCE_TAIL = DAILY


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Plan:
    statement: str
    milliseconds: float
    buffers: int
    nodes: list[str] = field(default_factory=list)

    @property
    def seq_scan_on_events(self) -> bool:
        return "Seq Scan on audit_events" in self.nodes


def _nodes(plan: dict[str, Any]) -> Iterator[str]:
    name = plan["Node Type"]
    if "Relation Name" in plan:
        name += f" on {plan['Relation Name']}"
    if "Index Name" in plan:
        name += f" using {plan['Index Name']}"
    yield name
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _plan(statement: str, rows: list[asyncpg.Record]) -> Plan:
    document = json.loads(rows[0][0])[0]
    root = document["Plan"]
    return Plan(
        statement=" ".join(statement.split())[:90],
        milliseconds=document["Execution Time"],
        buffers=root.get("Shared Hit Blocks", 0) + root.get("Shared Read Blocks", 0),
        nodes=list(_nodes(root)),
    )


EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
# The measured authority's enquiries, each told to it (as the notifier would have).
_NOTIFICATIONS_SQL = """
    INSERT INTO notifications (id, authority_id, event_id, dedupe_key, first_occurred_at,
        last_occurred_at, repeats, created_at)
    SELECT gen_random_uuid(), $1, id, md5(id::text), occurred_at, occurred_at, 0, now()
    FROM audit_events WHERE event_type = 'lookup' AND authority_id = $1
"""


@asynccontextmanager
async def _scratch_database(*, keep: bool = False) -> Any:
    name = f"cpr_growth_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(_dsn(ADMIN_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        if keep:
            print(f"kept: database {name}", file=sys.stderr)
        else:
            admin = await asyncpg.connect(_dsn(ADMIN_URL))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


def _events_sql(
    first: int,
    count: int,
    *,
    start: str,
    step_us: float,
    extra: str,
    custodians: dict[str, str] | None = None,
    origin: int | None = None,
) -> str:
    """``count`` lookups numbered from ``first``, the n-th at ``start + n * step``
    (n counted from ``origin``, by default ``first``; every piece of SQL is this module's
    own). With ``custodians``
    (bench.custodian.body_columns), the columns the custodians' reads look at too."""
    columns = {
        "query": "json_build_object('nhs_number', '9990000018')",
        "outcome": "CASE WHEN i % 50 = 0 THEN 'refer_to_custodian' "
        "WHEN i % 3 = 0 THEN 'on_plan' ELSE 'not_on_plan' END",
    } | (custodians or {})
    joins = body_joins() if custodians else ""
    return f"""
        INSERT INTO audit_events (id, occurred_at, event_type, request_id, principal,
            enquirer, enquirer_id, purpose, reason, source_address, {", ".join(columns)})
        SELECT gen_random_uuid(),
               {start} + ((i - {origin or first}) * {step_us}) * interval '1 microsecond',
               'lookup', md5(i::text), {extra}, '127.0.0.1', {", ".join(columns.values())}
        FROM generate_series({first}, {first + count - 1}) AS i {joins}
    """  # noqa: S608


def _caller(long_every: int) -> str:
    """principal, enquirer, enquirer_id, purpose, reason for event number i."""
    return f"""
        CASE WHEN i % {long_every} = 0 THEN 'client:long' ELSE 'client:' || (i % {CLIENTS}) END,
        json_build_object('id', 'e' || (i % {ENQUIRERS}), 'name', 'Dr A Jones',
            'role', 'registrar'),
        CASE WHEN i % {long_every} = 0 THEN 'E-long' ELSE 'e' || (i % {ENQUIRERS}) END,
        {purpose_sql()}, 'bench: the log as it grows'
    """


async def _seal_directly(engine: AsyncEngine, admin: asyncpg.Connection, count: int) -> int:
    """Seal the first ``count`` events waiting (the body: every event with no seal, in
    ``(occurred_at, id)`` order; then the queue's, in its order) as the sequencer would,
    and copy the seals in. Returns how many were sealed."""
    last = await admin.fetchrow(
        "SELECT position, chain_hash FROM audit_seals ORDER BY position DESC LIMIT 1"
    )
    position, head = (
        (last["position"], bytes.fromhex(last["chain_hash"])) if last else (0, EMPTY_HEAD)
    )
    events = AuditEvent.__table__
    queued = await admin.fetchval("SELECT count(*) FROM audit_unsealed")
    if queued:
        statement = (
            select(events)
            .join(AuditUnsealed.__table__, AuditUnsealed.event_id == events.c.id)
            .order_by(AuditUnsealed.occurred_at, AuditUnsealed.event_id)
        )
    else:
        statement = select(events).order_by(events.c.occurred_at, events.c.id)
    sealed_at = datetime.now(UTC)
    done = 0
    async with engine.connect() as connection:
        result = await connection.stream(statement.limit(count))
        async for partition in result.mappings().partitions(STREAM_PARTITION):
            seals, position, head = _chain(partition, position, head)
            await admin.copy_records_to_table(
                "audit_seals",
                records=[
                    (s["position"], s["event_id"], s["leaf_hash"], s["chain_hash"], sealed_at)
                    for s in seals
                ],
                columns=["position", "event_id", "leaf_hash", "chain_hash", "sealed_at"],
            )
            done += len(seals)
    return done


@asynccontextmanager
async def _captured(engine: AsyncEngine) -> Any:
    """The SELECTs run on ``engine`` meanwhile, with their parameters as sent."""
    statements: list[tuple[str, tuple[Any, ...]]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "audit_" in statement:
            statements.append((statement, tuple(parameters or ())))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _custodian_buffers(
    engine: AsyncEngine,
    maker: Any,
    admin: asyncpg.Connection,
    seeded: dict[str, Any],
    settings: Settings,
) -> dict[str, int]:
    """Per custodian read, the buffers EXPLAIN (ANALYZE, BUFFERS) counts over every
    SELECT it ran (the pages it touched: what the timings, on a shared machine, are
    noisy about)."""
    found = {}
    for name, read in custodian_reads(seeded, settings, datetime.now(UTC)).items():
        async with _captured(engine) as statements, maker() as session:
            await read(session, maker)
        found[name] = 0
        for sql, parameters in statements:
            found[name] += _plan(sql, await admin.fetch(EXPLAIN + sql, *parameters)).buffers
    return found


async def _measure_sealing(engine: AsyncEngine, admin: asyncpg.Connection) -> dict[str, Any]:
    sessionmaker = create_sessionmaker(engine)
    timings = []
    async with _captured(engine) as statements:
        for _ in range(RUNS):
            async with sessionmaker() as session:
                started = time.perf_counter()
                sealed = await seal_pending(session, batch_size=BATCH)
                timings.append((time.perf_counter() - started) * 1000)
                await session.rollback()
            if sealed is None or sealed.count != BATCH:
                raise RuntimeError(f"a batch of {BATCH} expected, sealed: {sealed}")
        first_run = statements[: len(statements) // RUNS]
    plans = [
        _plan(sql, await admin.fetch(EXPLAIN + sql, *parameters)) for sql, parameters in first_run
    ]
    return {"ms_per_batch": statistics.median(timings), "plans": plans}


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


async def _measure_limits(
    engine: AsyncEngine,
    admin: asyncpg.Connection,
    settings: Settings,
    principal: str,
    enquirer: str,
) -> dict[str, Plan]:
    statement = select(*limit_columns("postgresql"))
    now = await admin.fetchval("SELECT now()")
    parameters = limit_parameters(settings, principal=principal, enquirer_id=enquirer, now=now)
    async with _captured(engine) as captured, engine.connect() as connection:
        row = (await connection.execute(statement, parameters)).one()
    sql, values = captured[0]
    custom = _plan(sql, await admin.fetch(EXPLAIN + sql, *values))
    name = f"limits_{secrets.token_hex(3)}"
    async with admin.transaction():
        await admin.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await admin.execute(f"PREPARE {name} AS {sql}")
        try:
            arguments = ", ".join(_literal(value) for value in values)
            generic = _plan(sql, await admin.fetch(f"{EXPLAIN}EXECUTE {name}({arguments})"))
        finally:
            await admin.execute(f"DEALLOCATE {name}")
    custom.statement = f"{principal}: {dict(row._mapping)}"
    return {"custom": custom, "generic": generic}


async def _one_size(size: int, *, verify: str | None, keep: bool) -> dict[str, Any]:
    async with _scratch_database(keep=keep) as url:
        settings = Settings(environment=Environment.test, database_url=url)
        # Alembic runs its own event loop: in a thread of its own.
        await asyncio.to_thread(upgrade_database, settings)
        engine = create_engine(settings, owner=True)
        admin = await asyncpg.connect(_dsn(url))
        try:
            report: dict[str, Any] = {"size": size}
            started = time.perf_counter()
            seeded = await seed_custodians(engine, admin)
            custodians = body_columns(seeded["authority"], seeded["other"])
            # Statistics as ANALYZE left them when the log was a hundredth of its size
            # ("stale"), until the VACUUM ANALYZE below ("fresh"): autovacuum off.
            await admin.execute("ALTER TABLE audit_events SET (autovacuum_enabled = false)")
            await admin.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_queue")
            # At most DAILY events a day: a larger log is a longer past, not a busier day.
            days = max(30, -(-size // DAILY))
            body_start = f"now() - interval '{days} days'"
            span_us = (timedelta(days=days) - timedelta(hours=2)) / timedelta(microseconds=1)
            # The visibility map as autovacuum leaves it at worst (migration 0017): every
            # page but the newest VACUUM_EVENTS events'.
            first_part = max(size // 100, 1)
            recent = min(VACUUM_EVENTS, size - first_part)
            parts = (
                (1, first_part),
                (first_part + 1, size - first_part - recent),
                (size - recent + 1, recent),
            )
            for first, count in parts:
                if first == size - recent + 1:
                    await admin.execute("VACUUM audit_events")
                await admin.execute(
                    _events_sql(
                        first,
                        count,
                        start=body_start,
                        step_us=span_us / size,
                        extra=_caller(max(size // HISTORY, 1)),
                        custodians=custodians,
                        origin=1,
                    )
                )
                if first == 1:
                    await admin.execute("ANALYZE")
            await admin.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_queue")
            await admin.execute(_NOTIFICATIONS_SQL, seeded["authority"])
            report["seed_events_s"] = time.perf_counter() - started
            started = time.perf_counter()
            await _seal_directly(engine, admin, size)
            report["seal_body_s"] = time.perf_counter() - started
            # The custodians' reads, with the service's settings but a statement timeout
            # long enough to time the slowest (the service's is 2 s).
            reads_engine = create_engine(
                settings.model_copy(update={"database_statement_timeout_seconds": 600.0})
            )
            reads = create_sessionmaker(reads_engine)
            report["custodian_stale"] = await measure(reads_engine, reads, seeded, settings)
            report["custodian_stale_buffers"] = await _custodian_buffers(
                reads_engine, reads, admin, seeded, settings
            )
            # The burst, through the queue: ten minutes up to now.
            await admin.execute(
                _events_sql(
                    size + 1,
                    BURST,
                    start="now() - interval '10 minutes'",
                    step_us=(timedelta(minutes=10) / timedelta(microseconds=1)) / BURST / 1.01,
                    extra=_caller(10**12),
                )
            )
            for principal, enquirer in (("client:long", "E-long"), ("client:fresh", "E-fresh")):
                await admin.execute(
                    _events_sql(
                        size + BURST + 1,
                        5,
                        start="now() - interval '20 seconds'",
                        step_us=1000,
                        extra=f"'{principal}', json_build_object('id', '{enquirer}'), "
                        f"'{enquirer}', 'unscheduled_care', 'bench: in the window'",
                    )
                )
            await admin.execute("VACUUM ANALYZE")
            await _seal_directly(engine, admin, BURST + 10 - BACKLOG)
            report["queued"] = await admin.fetchval("SELECT count(*) FROM audit_unsealed")
            report["sealing_stale"] = await _measure_sealing(engine, admin)
            await admin.execute("VACUUM ANALYZE audit_unsealed")
            report["sealing_fresh"] = await _measure_sealing(engine, admin)
            report["limits"] = {
                who: await _measure_limits(engine, admin, settings, f"client:{who}", enquirer)
                for who, enquirer in (("long", "E-long"), ("fresh", "E-fresh"))
            }
            # At the limit (each has five lookups in the window): the refused lookup's count.
            at_limit = settings.model_copy(
                update={"lookup_limit_per_client": 3, "lookup_limit_per_enquirer": 3}
            )
            report["limits_reached"] = {
                who: await _measure_limits(engine, admin, at_limit, f"client:{who}", enquirer)
                for who, enquirer in (("long", "E-long"), ("fresh", "E-fresh"))
            }
            report["custodian_fresh"] = await measure(reads_engine, reads, seeded, settings)
            report["custodian_fresh_buffers"] = await _custodian_buffers(
                reads_engine, reads, admin, seeded, settings
            )
            await reads_engine.dispose()
            if verify:
                report["verify"] = await _verify(engine, admin, full=verify == "all")
            return report
        finally:
            await admin.close()
            await engine.dispose()


async def _verify(engine: AsyncEngine, admin: asyncpg.Connection, *, full: bool) -> dict[str, Any]:
    """The whole walk (if ``full``), then ``--since`` a checkpoint of the log as it was
    SINCE_TAIL events ago (signed here: the seeded log has none), timed each."""
    # Everything queued too (the backlog, and the reads' own audit.read events): nothing
    # left unsealed for the verifier to report.
    await _seal_directly(engine, admin, await admin.fetchval("SELECT count(*) FROM audit_unsealed"))
    delay = timedelta(seconds=Settings().sealing_delay_seconds)
    with tempfile.TemporaryDirectory() as directory:
        signer = CheckpointSigner.from_file(
            Path(directory) / "checkpoint.pem", "bench.growth/audit", create=True
        )
        sessionmaker = create_sessionmaker(engine)
        walked: dict[str, Any] = {"full": "not run", "full_s": None, "full_size": None}
        if full:
            async with sessionmaker() as session:
                started = time.perf_counter()
                whole = await verify_log(session, signer.verifier, sealing_delay=delay)
                walked = {
                    "full": "ok" if whole.ok else f"FAILED: {whole.findings[:3]}",
                    "full_s": time.perf_counter() - started,
                    "full_size": whole.size,
                }
        sealed = await admin.fetchval("SELECT count(*) FROM audit_seals")
        at = await admin.fetchrow(
            "SELECT position, chain_hash FROM audit_seals ORDER BY position DESC OFFSET $1 LIMIT 1",
            min(SINCE_TAIL, sealed - 1),
        )
        note = signer.sign(
            Checkpoint(
                "bench.growth/audit",
                at["position"],
                bytes.fromhex(at["chain_hash"]),
                int(time.time()),
            )
        )
        async with sessionmaker() as session:
            started = time.perf_counter()
            since = await verify_since(session, signer.verifier, note, sealing_delay=delay)
            since_s = time.perf_counter() - started
    return walked | {
        "sealed": sealed,
        "since": "ok" if since.ok else f"FAILED: {since.findings[:3]}",
        "since_s": since_s,
        "since_events": since.size - since.since,
    }


def _print(reports: list[dict[str, Any]]) -> None:
    print("\n## Sealing: one batch of 250 (seal_pending, median of 5, rolled back)\n")
    print("| events | queue | statistics | ms per batch | buffers | seq scan on audit_events |")
    print("|---:|---:|---|---:|---:|---|")
    for report in reports:
        for state in ("stale", "fresh"):
            sealing = report[f"sealing_{state}"]
            buffers = sum(plan.buffers for plan in sealing["plans"])
            seq = any(plan.seq_scan_on_events for plan in sealing["plans"])
            print(
                f"| {report['size']:,} | {report['queued']:,} | {state} | "
                f"{sealing['ms_per_batch']:.1f} | {buffers:,} | {'yes' if seq else 'no'} |"
            )
    print("\nPlans (smallest and largest size, fresh statistics):")
    for report in [reports[0]] + ([reports[-1]] if len(reports) > 1 else []):
        for plan in report["sealing_fresh"]["plans"]:
            print(f"  {report['size']:,}: {plan.statement}")
            print(f"      {plan.milliseconds:.2f} ms, {plan.buffers} buffers: {plan.nodes}")
    print("\n## Volume limits: the three subqueries of the lookup's statement\n")
    print("| events | client | custom plan buffers | ms | generic plan buffers | ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for report in reports:
        for who in ("long", "fresh"):
            plans = report["limits"][who]
            print(
                f"| {report['size']:,} | {who} | {plans['custom'].buffers} | "
                f"{plans['custom'].milliseconds:.3f} | {plans['generic'].buffers} | "
                f"{plans['generic'].milliseconds:.3f} |"
            )
    print("\nAt the limit (client and enquirer limits of 3, five lookups in the window):\n")
    print("| events | client | custom plan buffers | ms | generic plan buffers | ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for report in reports:
        for who in ("long", "fresh"):
            plans = report["limits_reached"][who]
            print(
                f"| {report['size']:,} | {who} | {plans['custom'].buffers} | "
                f"{plans['custom'].milliseconds:.3f} | {plans['generic'].buffers} | "
                f"{plans['generic'].milliseconds:.3f} |"
            )
    print("\nRatios:")
    first, last = reports[0], reports[-1]
    for state in ("stale", "fresh"):
        a = first[f"sealing_{state}"]["ms_per_batch"]
        b = last[f"sealing_{state}"]["ms_per_batch"]
        print(f"  sealing ({state}) {last['size']:,} / {first['size']:,} events: {b / a:.2f}x")
    for report in reports:
        for plan_kind in ("custom", "generic"):
            long = report["limits"]["long"][plan_kind].buffers
            fresh = report["limits"]["fresh"][plan_kind].buffers
            print(
                f"  limits ({plan_kind}) at {report['size']:,}: long-history / fresh client "
                f"buffers {long} / {fresh} = {long / max(fresh, 1):.2f}x"
            )
    for report in reports:
        print(f"  {report['size']:,}: limit answers {report['limits']['long']['custom'].statement}")
        print(
            f"  {report['size']:,}: seeded in {report['seed_events_s']:.1f} s, "
            f"body sealed in {report['seal_body_s']:.1f} s"
        )
    if any("verify" in report for report in reports):
        print("\n## Verification: the whole log, and --since a checkpoint\n")
        print("| events sealed | full: s | µs an event | since: events | s | result |")
        print("|---:|---:|---:|---:|---:|---|")
    for report in reports:
        if "verify" in report:
            v = report["verify"]
            walk = (
                f"{v['full_s']:.1f} | {v['full_s'] / max(v['full_size'], 1) * 1e6:.0f}"
                if v["full_s"] is not None
                else "not run | "
            )
            print(
                f"| {v['sealed']:,} | {walk} | {v['since_events']:,} | "
                f"{v['since_s']:.3f} | full {v['full']}, since {v['since']} |"
            )
    for report in reports:
        for who in ("long",):
            for kind in ("custom", "generic"):
                print(f"  {report['size']:,} {who} {kind}: {report['limits'][who][kind].nodes}")


def _print_custodians(reports: list[dict[str, Any]]) -> None:
    first, last = reports[0], reports[-1]
    print(
        f"\n## Custodian reads (bench/custodian.py; the measured authority has one on-plan "
        f"answer in {BIG_SHARE * 3} of the log; {CUSTODIAN_RUNS} runs each, ms)\n"
    )
    header = "| read | " + " | ".join(
        f"{r['size']:,} {state} p50 | p99 | buffers"
        for r in reports
        for state in ("stale", "fresh")
    )
    print(header + f" | p99 {last['size']:,} / {first['size']:,} (fresh) | rows |")
    print("|---|" + "---:|" * (6 * len(reports) + 2))
    for name in first["custodian_fresh"]:
        cells = []
        for report in reports:
            for state in ("stale", "fresh"):
                timing = report[f"custodian_{state}"][name]
                buffers = report[f"custodian_{state}_buffers"][name]
                cells += [f"{timing['p50']:.1f}", f"{timing['p99']:.1f}", f"{buffers:,}"]
        ratio = last["custodian_fresh"][name]["p99"] / max(
            first["custodian_fresh"][name]["p99"], 0.01
        )
        rows = last["custodian_fresh"][name]["rows"]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x | {rows} |")
    budget = [
        (report["size"], state, name, timing["p99"])
        for report in reports
        for state in ("stale", "fresh")
        for name, timing in report[f"custodian_{state}"].items()
        if timing["p99"] >= 100
    ]
    print(f"\nOver the 100 ms p99 budget: {budget or 'none'}")


async def _main(sizes: list[int], verify: str | None, keep: bool) -> None:
    reports = []
    for size in sizes:
        started = time.perf_counter()
        reports.append(await _one_size(size, verify=verify, keep=keep))
        print(f"{size:,} events: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    _print(reports)
    _print_custodians(reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default=f"{SMALL},{GROWTH_EVENTS}",
        help="events in the log's body, the small log first (GROWTH_SMALL, GROWTH_EVENTS)",
    )
    parser.add_argument(
        "--verify",
        nargs="?",
        const="all",
        choices=["all", "since"],
        help="time the verifier: the whole walk (slow: ~2 min a million events) and --since"
        " a day's events; --verify since: only the latter",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each scratch database (named on stderr)"
    )
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    asyncio.run(_main(sizes, arguments.verify, arguments.keep))


if __name__ == "__main__":
    main()
