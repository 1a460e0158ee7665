"""Sign-in lockout under concurrency, and that it cannot be turned against the real user.

Bursts go through real HTTP (ASGITransport, whose ``client`` sets the source address)
into the service on SQLite and on PostgreSQL as the production role; the bound is
counted in the log: every secret checked and found wrong is one ``auth.login_failed``.
A burst may find the account's lock held past lock_timeout: those sign-ins are refused
(``auth.login_busy``) without their secret being checked, so each burst checks at most
what is left of the limit, and bursts repeated until the lockout holds check exactly
the limit, never more.
"""

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from itertools import cycle

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_user
from app.audit.models import AuditEvent
from app.cli import main
from app.config import Settings
from app.identity.models import UserRole
from app.main import create_app
from tests.conftest import World

FAILED, LOCKED, BUSY = "auth.login_failed", "auth.login_locked", "auth.login_busy"
BURST = 25
# Small thresholds for the two instances, so that account-wide lockout is quick to reach.
PER_SOURCE, ACCOUNT_WIDE = 3, 7


@dataclass(frozen=True)
class Officer:
    subject: str
    username: str
    password: str

    def data(self, password: str | None = None) -> dict[str, str]:
        return {
            "grant_type": "password",
            "username": self.username,
            "password": self.password if password is None else password,
        }


@pytest.fixture
async def officer(world: World, sessionmaker: async_sessionmaker[AsyncSession]) -> Officer:
    """A duty officer of this test's own, so that no other test's failures count."""
    password = secrets.token_urlsafe(16)
    async with sessionmaker() as session:
        user = create_user(
            session,
            actor="test:setup",
            organisation=world.orgs["edt"],
            username=f"lockout-{uuid.uuid4().hex[:8]}",
            full_name="Test lockout officer",
            role=UserRole.duty_officer,
            password=password,
        )
        await session.commit()
    return Officer(f"user:{user.id}", user.username, password)


@pytest.fixture(scope="session")
async def instances(settings: Settings) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    """Two app instances (two replicas) over the one database, with small thresholds."""
    small = settings.model_copy(
        update={
            "login_failures_before_lockout": PER_SOURCE,
            "login_account_failures_before_lockout": ACCOUNT_WIDE,
        }
    )
    first, second = create_app(small), create_app(small)
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        yield first, second


@pytest.fixture
async def clients(app: FastAPI, instances: tuple[FastAPI, FastAPI]) -> AsyncIterator["Clients"]:
    async with AsyncExitStack() as stack:
        yield Clients(app, instances, stack)


class Clients:
    """HTTP clients, one per (app, source address), opened on first use."""

    def __init__(
        self, app: FastAPI, instances: tuple[FastAPI, FastAPI], stack: AsyncExitStack
    ) -> None:
        self.apps = {"app": app, "first": instances[0], "second": instances[1]}
        self._stack = stack
        self._open: dict[tuple[str, str], httpx.AsyncClient] = {}

    async def __call__(self, host: str, app: str = "app") -> httpx.AsyncClient:
        if (app, host) not in self._open:
            transport = httpx.ASGITransport(app=self.apps[app], client=(host, 50000))
            self._open[(app, host)] = await self._stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
        return self._open[(app, host)]


async def burst(
    senders: Sequence[httpx.AsyncClient], forms: Sequence[dict[str, str]]
) -> list[httpx.Response]:
    """All at once: the forms sent concurrently, spread over the senders in turn."""
    return await asyncio.gather(
        *(
            http.post("/oauth/token", data=form)
            for http, form in zip(cycle(senders), forms, strict=False)
        )
    )


def wrong() -> str:
    return f"Wr0ng-{uuid.uuid4().hex}"


async def events(
    sessionmaker: async_sessionmaker[AsyncSession], subject: str, event_type: str, **where: str
) -> list[AuditEvent]:
    statement = select(AuditEvent).where(
        AuditEvent.principal == subject, AuditEvent.event_type == event_type
    )
    if "source" in where:
        statement = statement.where(AuditEvent.source_address == where["source"])
    async with sessionmaker() as session:
        return list((await session.scalars(statement.order_by(AuditEvent.occurred_at))).all())


async def event_of(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    async with sessionmaker() as session:
        [event] = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    return event


def assert_refused_slow_down(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "slow_down"
    assert int(response.headers["retry-after"]) > 0
    assert "access_token" not in response.text


async def assert_bursts_check_exactly(
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
    senders: Sequence[httpx.AsyncClient],
    limit: int,
    *,
    source: str | None = None,
) -> None:
    """Bursts of wrong passwords until the lockout holds: never more than ``limit``
    checked in all, exactly ``limit`` by the end; every other attempt 429, unchecked."""
    where = {"source": source} if source else {}
    checked = len(await events(sessionmaker, officer.subject, FAILED, **where))
    for _ in range(limit + 1):
        responses = await burst(senders, [officer.data(wrong()) for _ in range(BURST)])
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {400, 429}, statuses
        for response in responses:
            if response.status_code == 429:
                assert_refused_slow_down(response)
        checked += statuses.count(400)
        assert checked <= limit
        assert len(await events(sessionmaker, officer.subject, FAILED, **where)) == checked
        if checked == limit:
            break
    assert checked == limit
    # Locked: a further burst has nothing checked, and each refusal is a lockout on record.
    responses = await burst(senders, [officer.data(wrong()) for _ in range(BURST)])
    for response in responses:
        assert_refused_slow_down(response)
    assert len(await events(sessionmaker, officer.subject, FAILED, **where)) == limit
    recorded = await asyncio.gather(*(event_of(sessionmaker, r) for r in responses))
    assert {e.event_type for e in recorded} <= {LOCKED, BUSY}
    if LOCKED not in {e.event_type for e in recorded}:
        # On a slow machine every one of the burst may have waited past lock_timeout
        # (BUSY, unchecked, as refused as a lockout): one attempt alone meets the lock.
        [alone] = await burst(senders[:1], [officer.data(wrong())])
        assert_refused_slow_down(alone)
        assert (await event_of(sessionmaker, alone)).event_type == LOCKED
    assert len(await events(sessionmaker, officer.subject, FAILED, **where)) == limit


# --- One address, one account -----------------------------------------------------------------


async def test_a_burst_of_wrong_passwords_gets_exactly_the_limit_checked(
    clients: Clients,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    http = await clients("198.51.100.10")
    first = await burst([http], [officer.data(wrong()) for _ in range(BURST)])
    statuses = [r.status_code for r in first]
    assert set(statuses) <= {400, 429}
    assert 1 <= statuses.count(400) <= settings.login_failures_before_lockout
    assert statuses.count(429) >= BURST - settings.login_failures_before_lockout
    recorded = await asyncio.gather(*(event_of(sessionmaker, r) for r in first))
    for response, event in zip(first, recorded, strict=True):
        expected = {FAILED} if response.status_code == 400 else {LOCKED, BUSY}
        assert event.event_type in expected
        assert event.source_address == "198.51.100.10"
        assert event.principal == officer.subject
    await assert_bursts_check_exactly(
        sessionmaker, officer, [http], settings.login_failures_before_lockout
    )
    [*_, last] = await events(sessionmaker, officer.subject, FAILED)
    assert last.detail is not None
    assert last.detail["locks"] == ["source"]
    assert last.detail["failures_from_source"] == settings.login_failures_before_lockout


async def test_the_right_password_in_a_burst_gets_no_token_once_locked(
    clients: Clients,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    limit = settings.login_failures_before_lockout
    http = await clients("198.51.100.11")
    responses = await burst(
        [http], [officer.data(wrong()) for _ in range(BURST - 1)] + [officer.data()]
    )
    right = responses[-1]
    event = await event_of(sessionmaker, right)
    failed = await events(sessionmaker, officer.subject, FAILED)
    before = [e for e in failed if e.occurred_at < event.occurred_at]
    if right.status_code == 200:
        # Signed in before the lockout: fewer than the limit had failed before it.
        assert event.event_type == "auth.signed_in"
        assert len(before) < limit
    else:
        assert_refused_slow_down(right)
        assert event.event_type in {LOCKED, BUSY}
        if event.event_type == LOCKED:
            assert len(before) == limit
    # Once locked, a burst of nothing but the right password gets no token.
    await assert_bursts_check_exactly(sessionmaker, officer, [http], limit)
    signed_in = await events(sessionmaker, officer.subject, "auth.signed_in")
    responses = await burst([http], [officer.data() for _ in range(10)])
    for response in responses:
        assert_refused_slow_down(response)
    assert await events(sessionmaker, officer.subject, "auth.signed_in") == signed_in


# --- The real user elsewhere ----------------------------------------------------------------------


async def test_failures_from_one_address_do_not_lock_out_another(
    clients: Clients,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    attacker = await clients("198.51.100.20")
    await assert_bursts_check_exactly(
        sessionmaker, officer, [attacker], settings.login_failures_before_lockout
    )
    locked = await attacker.post("/oauth/token", data=officer.data())
    assert_refused_slow_down(locked)
    event = await event_of(sessionmaker, locked)
    assert (event.event_type, event.refusal) == (LOCKED, "locked_out_source")

    # The real user, at their usual address: checked, and signed in.
    usual = await clients("203.0.113.60")
    mistyped = await usual.post("/oauth/token", data=officer.data(wrong()))
    assert mistyped.status_code == 400
    signed_in = await usual.post("/oauth/token", data=officer.data())
    assert signed_in.status_code == 200, signed_in.text
    # Their sign-in does not lift the stranger's lockout.
    assert_refused_slow_down(await attacker.post("/oauth/token", data=officer.data()))


async def test_failures_across_many_addresses_lock_the_account_at_the_higher_threshold(
    clients: Clients,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    """Bursts from ten addresses, split between two instances: at most PER_SOURCE
    checked from each address, ACCOUNT_WIDE in all; then the account is locked for
    every address, the user's usual one too."""
    hosts = [f"198.51.100.{n}" for n in range(30, 40)]
    senders = [await clients(host, app) for host in hosts for app in ("first", "second")]
    await assert_bursts_check_exactly(sessionmaker, officer, senders, ACCOUNT_WIDE)
    for host in hosts:
        assert len(await events(sessionmaker, officer.subject, FAILED, source=host)) <= PER_SOURCE

    usual = await clients("203.0.113.61", "second")
    locked = await usual.post("/oauth/token", data=officer.data())
    assert_refused_slow_down(locked)
    event = await event_of(sessionmaker, locked)
    assert (event.event_type, event.refusal) == (LOCKED, "locked_out_account")
    assert event.detail is not None
    assert event.detail["lockout"] == "account"
    assert event.detail["failures_on_account"] == ACCOUNT_WIDE
    [*_, last] = await events(sessionmaker, officer.subject, FAILED)
    assert last.detail is not None
    assert "account" in last.detail["locks"]


async def test_bursts_split_between_two_instances_stay_within_the_limit(
    clients: Clients,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    senders = [await clients("198.51.100.50", app) for app in ("first", "second")]
    await assert_bursts_check_exactly(sessionmaker, officer, senders, PER_SOURCE)


# --- The operator lifts it ----------------------------------------------------------------------


async def test_cpr_user_unlock_lifts_both_lockouts_and_is_audited(
    clients: Clients,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
    cli_env: None,
) -> None:
    hosts = [f"198.51.100.{n}" for n in range(60, 64)]
    senders = [await clients(host, "first") for host in hosts]
    await assert_bursts_check_exactly(sessionmaker, officer, senders, ACCOUNT_WIDE)
    attacker = senders[0]
    usual = await clients("203.0.113.62", "second")
    assert_refused_slow_down(await usual.post("/oauth/token", data=officer.data()))

    result = await asyncio.to_thread(CliRunner().invoke, main, ["user", "unlock", officer.username])
    assert result.exit_code == 0, result.output
    assert f"unlocked {officer.username}" in result.stdout
    [unlocked] = await events(sessionmaker, officer.subject, "auth.unlocked")
    assert unlocked.outcome == "ok"
    assert unlocked.detail is not None
    assert unlocked.detail["actor"] == "cli:user-unlock"

    # Both lifted: the locked-out address is checked again, and the user signs in.
    assert (await attacker.post("/oauth/token", data=officer.data(wrong()))).status_code == 400
    assert (await usual.post("/oauth/token", data=officer.data())).status_code == 200


async def test_cpr_user_unlock_of_no_such_user_fails(cli_env: None) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["user", "unlock", f"nobody-{uuid.uuid4().hex[:6]}"]
    )
    assert result.exit_code != 0
    assert "no user" in result.output


async def test_the_web_sign_in_shares_the_lockout(
    clients: Clients,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    http = await clients("198.51.100.70")
    await assert_bursts_check_exactly(
        sessionmaker, officer, [http], settings.login_failures_before_lockout
    )
    page = await http.get("/web/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    response = await http.post(
        "/web/sign-in",
        data={
            "csrf_token": csrf.group(1),
            "username": officer.username,
            "password": officer.password,
        },
    )
    assert response.status_code == 429
    assert "cpr_session=" not in response.headers.get("set-cookie", "")
    event = await event_of(sessionmaker, response)
    assert (event.event_type, event.refusal) == (LOCKED, "locked_out_source")


async def test_a_sign_in_that_waits_past_lock_timeout_is_refused_unchecked(
    clients: Clients,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    officer: Officer,
) -> None:
    """Another sign-in of the account holds its lock (on SQLite, the write lock) longer
    than lock_timeout: 429 slow_down, on record, the secret not checked; never a 500."""
    http = await clients("198.51.100.80")
    async with sessionmaker() as holder:
        if settings.is_sqlite:
            await holder.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock
        else:
            await holder.execute(
                text("SELECT pg_advisory_xact_lock(7301, hashtext(:key))"),
                {"key": officer.subject},
            )
        waiting = asyncio.ensure_future(http.post("/oauth/token", data=officer.data(wrong())))
        await asyncio.sleep(settings.database_lock_timeout_seconds + 0.3)
        await holder.rollback()
    response = await waiting
    assert_refused_slow_down(response)
    assert response.headers["retry-after"] == "1"
    event = await event_of(sessionmaker, response)
    assert (event.event_type, event.refusal) == (BUSY, "busy")
    assert event.detail is not None
    assert event.detail["waited"] == ("too_long" if settings.is_sqlite else "lock_timeout")
    assert await events(sessionmaker, officer.subject, FAILED) == []
    # The lock released, the next one is checked.
    assert (await http.post("/oauth/token", data=officer.data(wrong()))).status_code == 400
