"""The custodians' reads over a grown log (issue 18 item 3), for bench/growth.py.

``seed_custodians`` writes, before the log's body, what the reads need: CUSTODIANS
authorities (``bench:authority:0`` is the one measured, BIG_SHARE of all on-plan
answers, a large authority), ORGANISATIONS enquiring organisations, and ENTRIES register
entries of the measured authority (``bench/seed.py``'s rows), which its on-plan answers
name (their NHS numbers in the event's ``query``). ``body_columns`` gives the SQL of the
columns the body's ``INSERT ... SELECT`` fills from them.

``measure`` (``reads``) times each read the way the routes make it (the functions of
app/audit/review.py, app/audit/alerts.py and app/notifications/routes.py, each with a
session of its own, the review's own ``audit.read`` event written as in service) RUNS
times, and returns p50/p99 per read; and EXPLAIN (ANALYZE, BUFFERS) of the page's
statement where there is one. Measures whatever the working tree's code does.
"""

import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request

from app.audit.alerts import AlertQuery, alert_report
from app.audit.review import (
    EnquiryExport,
    EnquiryListQuery,
    EnquirySearch,
    PageQuery,
    entry_page,
    export_csv,
    list_page,
    search_page,
)
from app.auth.principals import Principal
from app.config import Settings
from app.heap import settle_heap
from app.identity.models import Organisation, OrganisationKind
from app.notifications.service import NotificationQuery, notification_page
from app.register.models import RegisterEntry, RegisterEntryVersion
from bench.seed import _entry_rows, nhs_numbers

CUSTODIANS = 20
ORGANISATIONS = 50
ENTRIES = 5_000
BIG_SHARE = 10  # one on-plan answer in BIG_SHARE is about the measured authority's child
# Each read's p99 is over RUNS runs: with 40 it was the slowest single run, a commit's
# fsync on a shared disk as often as the read.
RUNS = 200
PURPOSES = ("unscheduled_care", "safeguarding_concern", "police_investigation")


async def seed_custodians(engine: AsyncEngine, admin: asyncpg.Connection) -> dict[str, Any]:
    """Organisations and the measured authority's entries; a numbered copy of both in
    two scratch tables the body's INSERT joins (``bench_orgs``, ``bench_entries``)."""
    custodians = [uuid.uuid4() for _ in range(CUSTODIANS)]
    enquirers = [uuid.uuid4() for _ in range(ORGANISATIONS)]
    rows = [
        {
            "id": organisation_id,
            "kind": kind.value,
            "name": f"bench:{label}:{n}",
            "contact_name": "Duty desk",
            "contact_phone": "0100 000 0000",
        }
        for kind, label, ids in (
            (OrganisationKind.local_authority, "authority", custodians),
            (OrganisationKind.emergency_department, "hospital", enquirers),
        )
        for n, organisation_id in enumerate(ids)
    ]
    rng = random.Random(18)
    numbers = nhs_numbers(999_500_000)
    entries = []
    versions = []
    while len(entries) < ENTRIES:
        row, entry_versions, _ = _entry_rows(rng, custodians[0], next(numbers), date.today())
        if row["subject_nhs_number"] is None:
            continue
        entries.append(row)
        versions.extend(entry_versions)
    async with engine.begin() as connection:
        await connection.execute(insert(Organisation), rows)
        for start in range(0, ENTRIES, 1_000):
            await connection.execute(insert(RegisterEntry), entries[start : start + 1_000])
        await connection.execute(insert(RegisterEntryVersion), versions)
    await admin.execute("CREATE TABLE bench_orgs (n int PRIMARY KEY, id uuid, custodian uuid)")
    await admin.executemany(
        "INSERT INTO bench_orgs VALUES ($1, $2, $3)",
        [
            (n, enquirers[n], custodians[n % CUSTODIANS] if n % CUSTODIANS else custodians[1])
            for n in range(ORGANISATIONS)
        ],
    )
    await admin.execute("CREATE TABLE bench_entries (n int PRIMARY KEY, id uuid, nhs text)")
    await admin.executemany(
        "INSERT INTO bench_entries VALUES ($1, $2, $3)",
        [(n, row["id"], row["subject_nhs_number"]) for n, row in enumerate(entries)],
    )
    return {
        "authority": custodians[0],
        "other": custodians[1],
        # Numbers the body's on-plan answers about the measured authority use.
        "entry": entries[10]["id"],
        "nhs_number": entries[10]["subject_nhs_number"],
        "organisation": enquirers[20],
    }


def purpose_sql() -> str:
    """The body's purposes, in turn."""
    purposes = ", ".join(f"'{p}'" for p in PURPOSES)
    return f"(ARRAY[{purposes}])[1 + i % {len(PURPOSES)}]"


def body_joins() -> str:
    """The joins of the body's SELECT (``i`` the event's number)."""
    return f"""
        JOIN bench_orgs o ON o.n = i % {ORGANISATIONS}
        LEFT JOIN bench_entries e ON e.n = (i / 3) % {ENTRIES}
    """


def body_columns(custodian: uuid.UUID, other: uuid.UUID) -> dict[str, str]:
    """SQL for each column the custodians' reads look at, from ``i``, ``o`` and ``e``:
    one answer in three on plan (one in BIG_SHARE of those about the measured
    authority's entries, the others about another authority's child), one in 50
    referred (one in four of those matching entries of two authorities: the link row's
    trigger writes audit_event_authorities), the rest not found."""
    big = f"(i % 3 = 0 AND (i / 3) % {BIG_SHARE} = 0)"
    refer = "(i % 50 = 25)"
    several = "(i % 5000 = 25)"
    matched = (
        f"json_build_object('matched', json_build_array("
        f"json_build_object('entry_id', e.id, 'version', 1, 'authority_id', '{custodian}'),"
        f"json_build_object('entry_id', gen_random_uuid(), 'version', 1, "
        f"'authority_id', '{other}')))"
    )
    return {
        "organisation_id": "o.id",
        "query": f"json_build_object('nhs_number', CASE WHEN {big} OR {refer} THEN e.nhs "
        "ELSE '9' || lpad((i % 900000000)::text, 9, '0') END, "
        "'given_name', 'amelia', 'family_name', 'hughes', 'date_of_birth', '2015-04-01')",
        "outcome": f"CASE WHEN {refer} THEN 'refer_to_custodian' WHEN i % 3 = 0 "
        "THEN 'on_plan' ELSE 'not_on_plan' END",
        "entry_id": f"CASE WHEN {refer} THEN NULL WHEN {big} THEN e.id "
        "WHEN i % 3 = 0 THEN gen_random_uuid() END",
        "entry_version": f"CASE WHEN i % 3 = 0 AND NOT {refer} THEN 1 END",
        "authority_id": f"CASE WHEN {several} THEN NULL WHEN {big} OR {refer} "
        f"THEN '{custodian}'::uuid WHEN i % 3 = 0 THEN o.custodian END",
        "disclosed": "json_build_object('status', CASE WHEN i % 3 = 0 THEN 'on_plan' "
        "ELSE 'not_on_plan' END, 'contact', json_build_object('name', 'Duty desk', "
        "'phone', '0100 000 0000'))",
        "detail": f"CASE WHEN {several} THEN {matched} END",
    }


def _request(sessionmaker: async_sessionmaker[AsyncSession], path: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 40000),
            "path": path,
            "query_string": b"",
            "headers": [],
            "app": SimpleNamespace(state=SimpleNamespace(sessionmaker=sessionmaker)),
        }
    )


def reviewer_for(authority: uuid.UUID) -> Principal:
    return Principal(
        kind="user",
        id=str(uuid.uuid4()),
        display_name="bench custodian",
        role="custodian",
        organisation_id=authority,
        organisation_kind=OrganisationKind.local_authority,
        organisation_name="bench:authority:0",
        scopes=frozenset(),
    )


def reads(
    seeded: dict[str, Any], settings: Settings, now: datetime
) -> dict[str, Callable[[AsyncSession, async_sessionmaker[AsyncSession]], Awaitable[int]]]:
    """Each custodian read, as a function of a session returning the rows it read."""
    reviewer = reviewer_for(seeded["authority"])
    day = (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)

    def page(query: Any, run: Callable[..., Awaitable[Any]], path: str) -> Any:
        async def read(session: AsyncSession, maker: async_sessionmaker[AsyncSession]) -> int:
            result = await run(session, _request(maker, path), reviewer, query)
            return len(result.items)

        return read

    async def entry(session: AsyncSession, maker: async_sessionmaker[AsyncSession]) -> int:
        path = f"/v1/audit/entries/{seeded['entry']}/events"
        result = await entry_page(
            session, _request(maker, path), reviewer, seeded["entry"], PageQuery()
        )
        return len(result.items)

    async def export(session: AsyncSession, maker: async_sessionmaker[AsyncSession]) -> int:
        query = EnquiryExport.model_validate({"from": day, "to": day + timedelta(days=1)})
        chunks, _ = await export_csv(session, _request(maker, "/v1/audit/export"), reviewer, query)
        return sum(chunk.count("\n") for chunk in [c async for c in chunks]) - 1

    async def alerts(session: AsyncSession, _: async_sessionmaker[AsyncSession]) -> int:
        report = await alert_report(session, settings, reviewer, AlertQuery())
        return len(report.alerts)

    async def notifications(session: AsyncSession, _: async_sessionmaker[AsyncSession]) -> int:
        result = await notification_page(session, reviewer, NotificationQuery())
        return len(result.items)

    listed = "/v1/audit/events"
    searched = "/v1/audit/events/search"
    return {
        "list (newest 100)": page(EnquiryListQuery(), list_page, listed),
        "filter: enquirer": page(EnquiryListQuery(enquirer_id="E10"), list_page, listed),
        "filter: purpose": page(
            EnquiryListQuery(purpose="safeguarding_concern"), list_page, listed
        ),
        "filter: organisation": page(
            EnquiryListQuery(organisation_id=seeded["organisation"]), list_page, listed
        ),
        "filter: outcome referred": page(
            EnquiryListQuery(outcome="refer_to_custodian"), list_page, listed
        ),
        "filter: one hour, a week ago": page(
            EnquiryListQuery.model_validate(
                {"from": now - timedelta(days=7), "to": now - timedelta(days=7, hours=-1)}
            ),
            list_page,
            listed,
        ),
        "search: NHS number": page(
            EnquirySearch(nhs_number=seeded["nhs_number"]), search_page, searched
        ),
        "entry's enquiries": entry,
        "export: one day (CSV)": export,
        "alerts (last 24 h)": alerts,
        "notifications list": notifications,
    }


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    seeded: dict[str, Any],
    settings: Settings,
    *,
    runs: int = RUNS,
    timeout_s: float = 60.0,
) -> dict[str, dict[str, float]]:
    """p50 and p99 in ms of each read (a read slower than ``timeout_s`` once is run
    once: its single time is reported)."""
    now = datetime.now(UTC)
    results = {}
    # Not the seed's dirty pages: written out before, as a service in use has them.
    async with engine.connect() as connection:
        await connection.exec_driver_sql("CHECKPOINT")
    # As the service's processes run (app.heap.settle_heap): without it a gen-2 collection
    # of the bench's own heap (60-90 ms here) lands in a few runs of 200: each read's p99.
    settle_heap()
    for name, read in reads(seeded, settings, now).items():
        times: list[float] = []
        rows = 0
        for _ in range(runs):
            async with sessionmaker() as session:
                started = time.perf_counter()
                rows = await read(session, sessionmaker)
                times.append((time.perf_counter() - started) * 1000)
            # A read of over a second (before issue 18, at millions of events) is run
            # three times, one of over ``timeout_s`` once: its times are what is reported.
            if times[-1] > timeout_s * 1000 or (len(times) >= 3 and times[0] > 1000):
                break
        results[name] = {
            "p50": statistics.median(times),
            "p99": _percentile(times, 0.99),
            "runs": len(times),
            "rows": rows,
        }
    return results
