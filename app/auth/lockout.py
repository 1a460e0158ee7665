"""Sign-in lockout: failures counted per (account, source address) and per account.

Counted from the audit log, which every worker and replica shares. What makes the
count exact under any concurrency is that the count, the decision, the secret's
check and the event recording its outcome are one transaction, serialised per
account (``serialise``): on PostgreSQL by a transaction-scoped advisory lock on the
account, on SQLite by the database's one write lock, which the sign-in's first
statement takes (``BEGIN IMMEDIATE``, app/db.py) and holds until it commits. So no
two checks of one account's secret overlap, and each one sees every earlier failure.

- **Per source.** ``login_failures_before_lockout`` failures from one address lock
  that address out of that account; each further failure doubles the wait
  (``login_lockout_base_seconds`` up to ``login_lockout_max_seconds``). A sign-in
  from that address, or an unlock, starts the count again.
- **Account-wide.** ``login_account_failures_before_lockout`` failures from any
  addresses lock the account out everywhere, with its own, longer, back-off. Any
  sign-in of the account, or an unlock, starts that count again.
- **Unlock.** ``auth.unlocked`` (``cpr user unlock``): both counts start after it.

Failures older than a day are not counted.
"""

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.config import Settings
from app.db import utcnow

FAILED = "auth.login_failed"
LOCKED = "auth.login_locked"
BUSY = "auth.login_busy"
SIGNED_IN = "auth.signed_in"
UNLOCKED = "auth.unlocked"

# pg_advisory_xact_lock(class, key): the two-key form never meets the one-key locks of
# the sequencer, the notifier or the lookups; 7201 is the register's.
_SIGN_IN_LOCK_CLASS = 7301
_SIGN_IN_LOCK = text("SELECT pg_advisory_xact_lock(:class, hashtext(:key))")
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
_COUNTED_FOR = timedelta(days=1)
_MAX_DOUBLINGS = 32


class SignInBusy(Exception):
    """Another sign-in of the account held its lock past lock_timeout."""


@dataclass
class _Turns:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recorders: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    queued: int = 0  # the one holding the lock, and those waiting for it
    users: int = 0  # everyone still inside turn(), for forgetting the entry


class Gate:
    """One sign-in per account name at a time in this process, a few queued behind it.

    Not what makes the count exact (the database's lock does, across processes and
    replicas): what keeps a burst against one account from taking the pool's
    connections to wait on that lock, which would starve every other request of the
    worker. The refused record their refusal a few at a time, for the same reason.
    """

    def __init__(self, queue: int = 3) -> None:
        self.queue = queue
        self._turns: dict[str, _Turns] = {}

    @asynccontextmanager
    async def turn(self, key: str, wait_seconds: float) -> AsyncIterator[bool]:
        """True: this sign-in's turn (the account's lock in this process is held).
        False: the queue was full, or the wait longer than ``wait_seconds``; the
        sign-in is to be refused, and holds one of the few places to record that."""
        turns = self._turns.setdefault(key, _Turns())
        turns.users += 1
        try:
            if turns.queued <= self.queue:
                turns.queued += 1
                try:
                    try:
                        async with asyncio.timeout(wait_seconds):
                            await turns.lock.acquire()
                    except TimeoutError:
                        pass
                    else:
                        try:
                            yield True
                        finally:
                            turns.lock.release()
                        return
                finally:
                    turns.queued -= 1
            async with turns.recorders:
                yield False
        finally:
            turns.users -= 1
            if not turns.users:
                del self._turns[key]


async def serialise(session: AsyncSession, login_key: str) -> None:
    """Hold the account's sign-in lock until the session's transaction ends.

    Raises SignInBusy when the wait exceeds the connection's lock_timeout (the
    transaction is then aborted: roll it back before writing anything).
    """
    if session.get_bind().dialect.name != "postgresql":
        # SQLite: the transaction's first statement took the write lock (BEGIN
        # IMMEDIATE); make sure there is one, should nothing have been read yet.
        if not session.in_transaction():
            await session.execute(text("SELECT 1"))
        return
    try:
        await session.execute(_SIGN_IN_LOCK, {"class": _SIGN_IN_LOCK_CLASS, "key": login_key})
    except DBAPIError as exc:
        if _sqlstate(exc) == _LOCK_NOT_AVAILABLE:
            raise SignInBusy from exc
        raise


def _sqlstate(exc: DBAPIError) -> str | None:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


@dataclass(frozen=True)
class Lockout:
    """What the log says of an account's recent failures, seen from one address."""

    source_failures: int
    account_failures: int
    source_wait: int  # seconds until this address may try again (0: now)
    account_wait: int  # seconds until any address may try again

    @property
    def wait(self) -> int:
        return max(self.source_wait, self.account_wait)

    @property
    def scope(self) -> str:
        """Which lockout refuses: the account-wide one when both do."""
        account = self.account_wait and self.account_wait >= self.source_wait
        return "account" if account else "source"

    def detail(self, *, counting: int = 0) -> dict[str, Any]:
        """The counts for an event; ``counting``: the failure it records, if one."""
        return {
            "failures_from_source": self.source_failures + counting,
            "failures_on_account": self.account_failures + counting,
        }

    def locks_after_failure(self, settings: Settings) -> list[str]:
        """The lockouts one more failure would start: for the failure's event."""
        reached = []
        if self.source_failures + 1 == settings.login_failures_before_lockout:
            reached.append("source")
        if self.account_failures + 1 == settings.login_account_failures_before_lockout:
            reached.append("account")
        return reached


def _wait(
    failures: int, threshold: int, base: int, maximum: int, newest: datetime | None, now: datetime
) -> int:
    excess = failures - threshold
    if excess < 0 or newest is None:
        return 0
    seconds = min(base * 2 ** min(excess, _MAX_DOUBLINGS), maximum)
    return max(0, math.ceil((newest + timedelta(seconds=seconds) - now).total_seconds()))


async def lockout(
    session: AsyncSession, settings: Settings, login_key: str, source: str | None
) -> Lockout:
    """The account's failures since its counts last started again, and the waits.

    Two statements over the (principal, occurred_at) index: when each count starts
    (a day ago, the last unlock, the last sign-in from this address or from any),
    then the failures since.
    """
    now = utcnow()
    day_ago = now - _COUNTED_FOR
    from_source = AuditEvent.source_address == source  # IS NULL when there is none
    signed_in_here = and_(AuditEvent.event_type == SIGNED_IN, from_source)
    unlocked, any_reset, source_signed_in = (
        await session.execute(
            select(
                func.max(case((AuditEvent.event_type == UNLOCKED, AuditEvent.occurred_at))),
                func.max(AuditEvent.occurred_at),
                func.max(case((signed_in_here, AuditEvent.occurred_at))),
            ).where(
                AuditEvent.principal == login_key,
                AuditEvent.event_type.in_((SIGNED_IN, UNLOCKED)),
                AuditEvent.occurred_at >= day_ago,
            )
        )
    ).one()
    source_since = max(t for t in (day_ago, unlocked, source_signed_in) if t is not None)
    account_since = max(t for t in (day_ago, any_reset) if t is not None)
    # account_since >= source_since: every reset of the address's count resets the account's.
    in_account = AuditEvent.occurred_at >= account_since
    counted = and_(from_source, AuditEvent.occurred_at >= source_since)
    account_failures, account_newest, source_failures, source_newest = (
        await session.execute(
            select(
                func.count(case((in_account, 1))),
                func.max(case((in_account, AuditEvent.occurred_at))),
                func.count(case((counted, 1))),
                func.max(case((counted, AuditEvent.occurred_at))),
            ).where(
                AuditEvent.principal == login_key,
                AuditEvent.event_type == FAILED,
                AuditEvent.occurred_at >= min(source_since, account_since),
            )
        )
    ).one()
    return Lockout(
        source_failures=source_failures,
        account_failures=account_failures,
        source_wait=_wait(
            source_failures,
            settings.login_failures_before_lockout,
            settings.login_lockout_base_seconds,
            settings.login_lockout_max_seconds,
            source_newest,
            now,
        ),
        account_wait=_wait(
            account_failures,
            settings.login_account_failures_before_lockout,
            settings.login_account_lockout_base_seconds,
            settings.login_account_lockout_max_seconds,
            account_newest,
            now,
        ),
    )


def unlock_event(
    *, login_key: str, actor: str, organisation_id: Any, name: str, **context: Any
) -> AuditEvent:
    """The operator's unlock: both lockouts of the account end, the counts start after it."""
    return AuditEvent(
        event_type=UNLOCKED,
        principal=login_key,
        organisation_id=organisation_id,
        outcome="ok",
        detail={"actor": actor, "name": name[:100]},
        **context,
    )
