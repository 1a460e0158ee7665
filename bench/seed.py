"""A realistic register of many entries, written fast, and the NHS numbers to look up.

Rows are built the way ``app.register.service.create_entry`` / ``end_entry`` build
them (same ``subject_*`` normalisation, 18th birthday, first review, version
snapshots) but inserted with SQLAlchemy Core executemany in batches: the ORM
path with one audit event per entry would take minutes for 50,000 entries.
The register's seed writes no audit events; ``seed_audit_history`` writes past
lookups, as the service writes them, and seals them.
"""

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.chain import CheckpointSigner
from app.audit.sealing import Sequencer
from app.audit.service import INSERT_EVENT, new_event
from app.config import Settings
from app.db import create_sessionmaker, utcnow
from app.demo import AUTHORITY, CLIENTS
from app.identity.models import Organisation
from app.register.identifiers import eighteenth_birthday, match_key
from app.register.models import Category, EndReason, RegisterEntry, RegisterEntryVersion
from app.register.rules import FIRST_REVIEW_MONTHS, add_months
from app.register.service import snapshot

ACTOR = "bench:seed"
ED_ORGANISATION = CLIENTS["emergency_department_client"][0]
BATCH_SIZE = 5_000
# NHS numbers in the 999 test range, clear of the demo bootstrap's 999 000 xxxx.
FIRST_PREFIX = 999_100_000

# Shares of the register (the rest are live plans for a born child with an NHS number).
UNBORN_SHARE = 0.04  # held against the mother
ENDED_SHARE = 0.15  # de-registered: never disclosed
ADULT_SHARE = 0.01  # turned 18 and never ended: never disclosed
NO_NHS_NUMBER_SHARE = 0.03  # found by names and date of birth only
CATEGORY_COUNT_WEIGHTS = (70, 22, 6, 2)  # one, two, three or all four categories

_GIVEN_NAMES = """
    Amelia Oliver Isla Noah Zoë Leo Ava Harry Mia Jack Ella Sam Maya Freddie Poppy Arthur
    Lily George Grace Olivia Muhammad Aisha Chloé Jayden Amir Fatima Kacper Zofia Seán Niamh
    Priya Ravi Ibrahim Hannah Mateo Sofia Luca Ana-Maria Jean-Luc Eilidh"""
_FAMILY_NAMES = """
    Hughes Patel Nowak O'Connor Müller-Smith Kowalski Begum Robinson Wilson Thompson Taylor
    Rossi Ahmed Evans Davies Jones Smith Okafor Khan Singh Brown Williams Murphy Kelly Walsh
    Nguyen Chen Ali Hussain Mensah Adeyemi Novak Horváth Fernández García Lewis Clarke"""
GIVEN_NAMES = tuple(_GIVEN_NAMES.split())
FAMILY_NAMES = tuple(_FAMILY_NAMES.split())


@dataclass(frozen=True)
class SeededRegister:
    entries: int
    seconds: float
    # NHS numbers of live plans: a lookup answers on_plan.
    on_plan: list[str]
    # Valid NHS numbers with no live plan (never registered, ended, or turned 18):
    # a lookup answers not_on_plan.
    not_on_plan: list[str]


def nhs_check_digit(prefix: str) -> int | None:
    """Modulus 11 over nine digits; None when no check digit exists (remainder 10)."""
    total = sum(int(d) * w for d, w in zip(prefix, range(10, 1, -1), strict=True))
    check = (11 - total % 11) % 11
    return None if check == 10 else check


def nhs_numbers(first_prefix: int = FIRST_PREFIX) -> Iterator[str]:
    """Valid, distinct NHS numbers in increasing order."""
    prefix = first_prefix
    while True:
        digits = str(prefix)
        check = nhs_check_digit(digits)
        if check is not None:
            yield f"{digits}{check}"
        prefix += 1


def _years_ago(today: date, rng: random.Random, low: float, high: float) -> date:
    return today - timedelta(days=int(rng.uniform(low, high) * 365.25))


def _name(rng: random.Random, names: tuple[str, ...]) -> str:
    return rng.choice(names)


def _entry_rows(
    rng: random.Random, authority_id: uuid.UUID, number: str, today: date
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """One entry's register_entries row and its version rows; and whether it is live."""
    roll = rng.random()
    unborn = roll < UNBORN_SHARE
    adult = not unborn and roll < UNBORN_SHARE + ADULT_SHARE
    ended = rng.random() < ENDED_SHARE
    dob = _years_ago(today, rng, 18.05, 18.9) if adult else _years_ago(today, rng, 0, 17.8)
    # Plans up to about two years old; a born child's plan starts after birth.
    plan_days = 700 if unborn else min(700, (today - dob).days)
    plan_start = today - timedelta(days=rng.randint(0, plan_days))
    categories = rng.sample(list(Category), k=rng.choices((1, 2, 3, 4), CATEGORY_COUNT_WEIGHTS)[0])
    values: dict[str, Any] = dict(
        id=uuid.uuid4(),
        authority_id=authority_id,
        version=1,
        unborn=unborn,
        # create_entry stores the categories in the enum's order.
        categories=[c.value for c in Category if c in categories],
        plan_start=plan_start,
        next_review=add_months(plan_start, FIRST_REVIEW_MONTHS),
        lead_professional="Bench Social Worker",
        team_contact="Northshire Children's Services, 020 7946 0150",
        notes="Seeded by the benchmark. Custodian-only notes are never disclosed.",
        updated_at=utcnow(),
        updated_by=ACTOR,
    )
    if unborn:
        mother_dob = _years_ago(today, rng, 18, 40)
        given, family = _name(rng, GIVEN_NAMES), _name(rng, FAMILY_NAMES)
        values |= dict(
            subject_nhs_number=number,
            subject_match_key=match_key(given, family, mother_dob),
            expected_delivery_date=today + timedelta(days=rng.randint(10, 200)),
            mother_nhs_number=number,
            mother_given_name=given,
            mother_family_name=family,
            mother_date_of_birth=mother_dob,
        )
    else:
        given, family = _name(rng, GIVEN_NAMES), _name(rng, FAMILY_NAMES)
        child_number = None if rng.random() < NO_NHS_NUMBER_SHARE else number
        values |= dict(
            subject_nhs_number=child_number,
            subject_match_key=match_key(given, family, dob),
            child_nhs_number=child_number,
            child_given_name=given,
            child_family_name=family,
            child_date_of_birth=dob,
            adult_on=eighteenth_birthday(dob),
        )
    entry = RegisterEntry(**values)
    versions = [_version(entry, "initial child protection conference")]
    if ended:
        # as end_entry does: a second version recording the end.
        entry.ended_on = today - timedelta(days=rng.randint(1, 300))
        entry.end_reason = rng.choice(list(EndReason)).value
        entry.version = 2
        versions.append(_version(entry, entry.end_reason))
    row = {column.key: getattr(entry, column.key) for column in RegisterEntry.__table__.columns}
    live = not ended and not adult and values["subject_nhs_number"] is not None
    return row, versions, live


def _version(entry: RegisterEntry, reason: str) -> dict[str, Any]:
    return dict(
        entry_id=entry.id,
        version=entry.version,
        snapshot=snapshot(entry),
        changed_at=utcnow(),
        changed_by=ACTOR,
        change_reason=reason,
    )


async def seed_register(
    engine: AsyncEngine, *, entries: int, never_registered: int, seed: int = 6
) -> SeededRegister:
    """Insert ``entries`` register entries for the demo authority, in batches, through
    ``engine`` (on PostgreSQL one acting as the service's role, which may write the
    register). Then ``analyse``."""
    started = time.perf_counter()
    rng = random.Random(seed)
    today = date.today()
    numbers = nhs_numbers()
    on_plan: list[str] = []
    not_on_plan: list[str] = []
    async with engine.begin() as connection:
        authority_id = await connection.scalar(
            select(Organisation.id).where(Organisation.name == AUTHORITY)
        )
        if authority_id is None:
            raise RuntimeError(f"{AUTHORITY!r} is missing: run `cpr demo bootstrap` first")
    for start in range(0, entries, BATCH_SIZE):
        rows: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        for _ in range(min(BATCH_SIZE, entries - start)):
            number = next(numbers)
            row, entry_versions, live = _entry_rows(rng, authority_id, number, today)
            rows.append(row)
            versions.extend(entry_versions)
            if row["subject_nhs_number"] is not None:
                (on_plan if live else not_on_plan).append(number)
        async with engine.begin() as connection:
            await connection.execute(insert(RegisterEntry), rows)
            await connection.execute(insert(RegisterEntryVersion), versions)
    not_on_plan.extend(next(numbers) for _ in range(never_registered))
    rng.shuffle(on_plan)
    rng.shuffle(not_on_plan)
    return SeededRegister(entries, time.perf_counter() - started, on_plan, not_on_plan)


HISTORY_CLIENTS = 400
HISTORY_DAYS = 30


async def seed_audit_history(engine: AsyncEngine, settings: Settings, *, events: int) -> float:
    """``events`` past lookups by other clients over the last HISTORY_DAYS, sealed.

    A service in use has an audit log of many events from many clients. Without one,
    the lookup's prepared statements are planned against an almost empty
    ``audit_events`` (a sequential scan is cheapest there) and keep that plan as the
    table grows during the run, until autovacuum analyses it: the run would measure
    that. The events are written with the service's own INSERT and sealed by its own
    sequencer, through ``engine`` (on PostgreSQL one acting as the service's role, as
    the service does), so that no sealing backlog is left for the runs. Then
    ``analyse``. Returns the seconds it took.
    """
    started = time.perf_counter()
    rng = random.Random(8)
    now = utcnow()
    async with engine.begin() as connection:
        organisation_id = await connection.scalar(
            select(Organisation.id).where(Organisation.name == ED_ORGANISATION)
        )
    # Oldest first, as the service writes them; the rows are built a batch at a time, so
    # that a history of millions (make bench-growth) never sits in memory whole.
    ages = sorted((rng.uniform(3600, HISTORY_DAYS * 86400) for _ in range(events)), reverse=True)
    for start in range(0, events, BATCH_SIZE):
        rows = []
        for age in ages[start : start + BATCH_SIZE]:
            client = rng.randrange(HISTORY_CLIENTS)
            enquirer = f"H{client}-{rng.randrange(20)}"
            rows.append(
                new_event(
                    occurred_at=now - timedelta(seconds=age),
                    event_type="lookup",
                    principal=f"client:cpr-history-{client:04d}",
                    organisation_id=organisation_id,
                    enquirer={"id": enquirer, "name": "Dr History", "role": "ED registrar"},
                    enquirer_id=enquirer,
                    purpose="unscheduled_care",
                    reason="seeded history (benchmark)",
                    query={"nhs_number": None, "given_name": None, "family_name": None},
                    outcome="not_on_plan",
                    disclosed={"status": "not_on_plan"},
                    source_address="192.0.2.1",
                )
            )
        async with engine.begin() as connection:
            await connection.execute(INSERT_EVENT.statement, rows)
    signer = CheckpointSigner.from_file(
        settings.checkpoint_key_path, settings.audit_log_origin, create=False
    )
    sequencer = Sequencer(create_sessionmaker(engine), signer, settings)
    await sequencer.run_once(checkpoint=True)
    return time.perf_counter() - started


async def analyse(engine: AsyncEngine) -> None:
    """Planner statistics and visibility map on PostgreSQL, as a database in service has
    them from autovacuum (which would get there a minute or so into the first run):
    without statistics PostgreSQL may match on a partial index that does not lead with
    the NHS number, and a run would measure that instead of the service. SQLite gathers
    no statistics unless told to, so it is left without, as in service: statistics from
    before the runs (a handful of clients) would make it scan ``clients`` once there
    are thousands.

    Run it after each seed, through a superuser's (or the owner's) ``engine``: VACUUM
    skips, with a warning only, every table its caller does not own, and the service's
    role owns none."""
    if engine.dialect.name != "postgresql":
        return
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE"))
