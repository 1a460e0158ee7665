"""The notifier: tells each responsible authority about enquiries into its children.

It reads the sealed log after its cursor, never the lookup's transaction: a
lookup neither waits for it nor depends on it, and a notifier that stops loses
nothing, because it resumes from the cursor it commits with its work. Every
replica may run one; a lock (a PostgreSQL advisory lock, on SQLite the write
lock) lets one at a time read and advance the cursor.

Webhook deliveries leave from an outbox written with the notification. Each
attempt first claims its row for a while (so two replicas do not both send
it), then posts, then records the result; a failed attempt is retried with
exponential back-off, for as long as it takes. Delivery is at least once: a
notifier that stops between sending and recording sends again, with the same
``X-CPR-Delivery`` id for the receiver to drop.
"""

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import bindparam, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent, AuditEventAuthority, AuditSeal
from app.audit.review import matched_entry_ids
from app.config import Environment, Settings
from app.db import create_engine, create_sessionmaker, utcnow
from app.identity.models import Organisation
from app.notifications.models import (
    Notification,
    NotificationDelivery,
    NotificationWebhook,
    NotifierCursor,
)
from app.notifications.targets import RefusedTarget, vet

log = structlog.get_logger()

NOTIFY_LOCK_KEY = 0x6370726E  # "cprn"
CURSOR_NAME = "notifications"


@dataclass(frozen=True)
class Derived:
    scanned: int
    created: int
    repeats: int
    position: int


def child_key(event: AuditEvent, authority_id: uuid.UUID) -> str:
    """The child an enquiry is about: the entry disclosed, or the entries of the
    authority that a custodian must choose between."""
    if event.entry_id is not None:
        return str(event.entry_id)
    matched = matched_entry_ids(event, authority_id)
    return ",".join(str(m) for m in matched) or f"event:{event.id}"


def dedupe_key(event: AuditEvent, authority_id: uuid.UUID) -> str:
    """Enquirer ids are the enquiring organisation's own, so the organisation is part
    of who asked. Hashed: the key carries no identifiers."""
    enquirer = f"{event.organisation_id}/{event.enquirer_id or event.principal}"
    return hashlib.sha256(f"{enquirer}|{child_key(event, authority_id)}".encode()).hexdigest()


def webhook_payload(
    notification_id: uuid.UUID,
    authority_id: uuid.UUID,
    event: AuditEvent,
    organisation_name: str | None,
) -> dict[str, Any]:
    """What the authority's own system is told: enough to act on, no identifiers or
    reason (its custodians read those through the API)."""
    key = child_key(event, authority_id)
    return {
        "notification_id": str(notification_id),
        "authority_id": str(authority_id),
        "event_id": str(event.id),
        "occurred_at": event.occurred_at.isoformat(),
        "entry_ids": [] if key.startswith("event:") else key.split(","),
        "outcome": event.outcome,
        "purpose": event.purpose,
        "organisation": {"id": str(event.organisation_id), "name": organisation_name},
        "enquirer": event.enquirer,
    }


async def derive_notifications(session: AsyncSession, settings: Settings) -> Derived:
    """Notify for up to ``notifier_batch_size`` sealed events after the cursor, and
    advance it; the caller commits, which makes both durable together."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NOTIFY_LOCK_KEY})
    cursor = await session.get(NotifierCursor, CURSOR_NAME)
    if cursor is None:
        cursor = NotifierCursor(name=CURSOR_NAME, position=0)
        session.add(cursor)
    await _not_before_notified(session, cursor)
    sealed_to = await session.scalar(select(func.max(AuditSeal.position))) or 0
    upto = min(cursor.position + settings.notifier_batch_size, sealed_to)
    if upto <= cursor.position:
        return Derived(0, 0, 0, cursor.position)

    # One row per authority concerned: the event's own, or each of several.
    rows = (
        await session.execute(
            select(
                AuditEvent,
                Organisation.name,
                AuditEventAuthority.authority_id,
                AuditSeal.position,
            )
            .join(AuditSeal, AuditSeal.event_id == AuditEvent.id)
            .outerjoin(Organisation, Organisation.id == AuditEvent.organisation_id)
            .outerjoin(AuditEventAuthority, AuditEventAuthority.event_id == AuditEvent.id)
            .where(
                AuditSeal.position > cursor.position,
                AuditSeal.position <= upto,
                AuditEvent.event_type == "lookup",
                or_(
                    AuditEvent.authority_id.is_not(None),
                    AuditEventAuthority.authority_id.is_not(None),
                ),
            )
            .order_by(AuditSeal.position, AuditEventAuthority.authority_id)
        )
    ).all()
    created = repeats = 0
    if rows:
        concerned: list[tuple[AuditEvent, str | None, uuid.UUID, int]] = [
            (e, n, e.authority_id or linked, position) for e, n, linked, position in rows
        ]
        created, repeats = await _notify(session, settings, concerned)
    scanned = upto - cursor.position
    cursor.position = upto
    return Derived(scanned, created, repeats, upto)


async def _not_before_notified(session: AsyncSession, cursor: NotifierCursor) -> None:
    """The cursor row is where the notifier starts; the newest notification's position
    (its own index, migration 0013) is a floor under it, so a cursor row lost or set back
    makes it neither read the log again from the start nor count repeats twice. Events
    after that position and before the lost cursor raised nothing, so nothing is missed
    by reading them again."""
    notified = await session.scalar(select(func.max(Notification.last_position)))
    if notified is not None and notified > cursor.position:
        log.warning("notifier_cursor_behind", cursor=cursor.position, notified=notified)
        cursor.position = notified


async def _notify(
    session: AsyncSession,
    settings: Settings,
    rows: list[tuple[AuditEvent, str | None, uuid.UUID, int]],
) -> tuple[int, int]:
    """New notifications, repeats counted on open ones, and webhook deliveries, written
    with Core executemany: this runs for every enquiry about a child on the register,
    and the ORM's unit of work cost three times as much per row."""
    period = timedelta(hours=settings.notification_dedupe_hours)
    keyed = [
        (event, name, authority, dedupe_key(event, authority), position)
        for event, name, authority, position in rows
    ]
    authorities = {authority for _, _, authority, _, _ in keyed}
    earliest = min(event.occurred_at for event, _, _, _, _ in keyed) - period
    table = Notification.__table__
    # The newest notification per (authority, key): existing ones first, then this batch's.
    latest: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    existing = await session.execute(
        select(
            table.c.id,
            table.c.authority_id,
            table.c.dedupe_key,
            table.c.first_occurred_at,
            table.c.last_occurred_at,
            table.c.repeats,
        ).where(
            table.c.authority_id.in_(authorities),
            table.c.dedupe_key.in_({key for _, _, _, key, _ in keyed}),
            table.c.first_occurred_at > earliest,
        )
    )
    for row in existing.mappings():
        _keep_latest(latest, dict(row))
    webhooks = set(
        await session.scalars(
            select(NotificationWebhook.organisation_id).where(
                NotificationWebhook.organisation_id.in_(authorities),
                NotificationWebhook.active,
            )
        )
    )
    created: list[dict[str, Any]] = []
    repeated: dict[uuid.UUID, dict[str, Any]] = {}  # existing notifications with new repeats
    deliveries: list[dict[str, Any]] = []
    now = utcnow()
    for event, organisation_name, authority, key, position in keyed:
        current = latest.get((authority, key))
        if current is not None and abs(event.occurred_at - current["first_occurred_at"]) < period:
            current["repeats"] += 1
            current["last_occurred_at"] = max(current["last_occurred_at"], event.occurred_at)
            current["last_position"] = position
            if not current.get("new"):
                repeated[current["id"]] = current
            continue
        notification: dict[str, Any] = {
            "id": uuid.uuid4(),
            "authority_id": authority,
            "event_id": event.id,
            "dedupe_key": key,
            "first_occurred_at": event.occurred_at,
            "last_occurred_at": event.occurred_at,
            "repeats": 0,
            "last_position": position,
            "created_at": now,
            "new": True,
        }
        created.append(notification)
        _keep_latest(latest, notification)
        if authority in webhooks:
            deliveries.append(
                {
                    "notification_id": notification["id"],
                    "organisation_id": authority,
                    "payload": webhook_payload(
                        notification["id"], authority, event, organisation_name
                    ),
                    "next_attempt_at": now,
                }
            )
    if created:
        await session.execute(
            insert(table), [{k: v for k, v in n.items() if k != "new"} for n in created]
        )
    if repeated:
        await session.execute(
            update(table)
            .where(table.c.id == bindparam("notification_id"))
            .values(
                repeats=bindparam("new_repeats"),
                last_occurred_at=bindparam("new_last"),
                last_position=bindparam("new_position"),
            ),
            [
                {
                    "notification_id": n["id"],
                    "new_repeats": n["repeats"],
                    "new_last": n["last_occurred_at"],
                    "new_position": n["last_position"],
                }
                for n in repeated.values()
            ],
        )
    if deliveries:
        await session.execute(insert(NotificationDelivery.__table__), deliveries)
    return len(created), sum(1 for _ in keyed) - len(created)


def _keep_latest(
    latest: dict[tuple[uuid.UUID, str], dict[str, Any]], notification: dict[str, Any]
) -> None:
    slot = (notification["authority_id"], notification["dedupe_key"])
    current = latest.get(slot)
    if current is None or notification["first_occurred_at"] > current["first_occurred_at"]:
        latest[slot] = notification


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    attempts: int
    payload: dict[str, Any]
    url: str
    signing_secret: str | None


def backoff(attempts: int, settings: Settings) -> timedelta:
    """Exponential, capped, with jitter so that deliveries held up by one outage do
    not all arrive at the receiver again in the same instant."""
    delay = min(
        settings.webhook_retry_base_seconds * 2 ** (attempts - 1),
        settings.webhook_retry_max_seconds,
    )
    return timedelta(seconds=delay / 2 + random.uniform(0, delay / 2))  # noqa: S311


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over ``<timestamp>.<body>``: the timestamp lets a receiver refuse replays."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Notifier:
    """Derives notifications every ``notifier_interval_seconds`` and delivers the
    webhooks that are due."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._engine: AsyncEngine | None = None

    @classmethod
    def with_own_engine(cls, settings: Settings) -> "Notifier":
        """A notifier with a small pool of its own: catching up on a backlog, or
        waiting on a slow database, never holds a connection a lookup needs."""
        engine = create_engine(settings.model_copy(update={"database_pool_size": 2}))
        notifier = cls(create_sessionmaker(engine), settings)
        notifier._engine = engine
        return notifier

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    async def run_once(self) -> Derived:
        """Catch up with the sealed log, one committed batch at a time."""
        total = Derived(0, 0, 0, 0)
        while True:
            async with self._sessionmaker() as session:
                derived = await derive_notifications(session, self._settings)
                await session.commit()
            total = Derived(
                total.scanned + derived.scanned,
                total.created + derived.created,
                total.repeats + derived.repeats,
                derived.position,
            )
            if derived.scanned < self._settings.notifier_batch_size:
                break
        if total.created or total.repeats:
            log.info(
                "notifications_derived",
                created=total.created,
                repeats=total.repeats,
                position=total.position,
            )
        return total

    async def deliver_due(self) -> int:
        """Send the webhooks whose time has come; the number delivered."""
        claimed = await self._claim(utcnow())
        if not claimed:
            return 0
        async with httpx.AsyncClient(follow_redirects=False) as http:
            results = await asyncio.gather(*(self._send(http, row) for row in claimed))
        done = utcnow()
        delivered = 0
        async with self._sessionmaker() as session:
            for row, (status, error) in zip(claimed, results, strict=True):
                attempts = row.attempts + 1
                values: dict[str, Any] = {
                    "attempts": attempts,
                    "last_attempt_at": done,
                    "last_status": status,
                    "last_error": error,
                }
                if error is None:
                    values |= {"delivered_at": done, "next_attempt_at": None}
                    delivered += 1
                else:
                    values["next_attempt_at"] = done + backoff(attempts, self._settings)
                    log.warning(
                        "webhook_delivery_failed",
                        delivery_id=str(row.id),
                        attempts=attempts,
                        status=status,
                        error=error,
                    )
                await session.execute(
                    update(NotificationDelivery)
                    .where(NotificationDelivery.id == row.id)
                    .values(**values)
                )
            await session.commit()
        if delivered:
            log.info("webhooks_delivered", count=delivered)
        return delivered

    async def _claim(self, now: datetime) -> list[Claimed]:
        """Take due rows for ``webhook_claim_seconds``: a row another replica claimed
        first no longer has the ``next_attempt_at`` we read, so our update misses it."""
        settings = self._settings
        async with self._sessionmaker() as session:
            due = (
                await session.execute(
                    select(
                        NotificationDelivery.id,
                        NotificationDelivery.next_attempt_at,
                        NotificationDelivery.attempts,
                        NotificationDelivery.payload,
                        NotificationWebhook.url,
                        NotificationWebhook.signing_secret,
                    )
                    .join(
                        NotificationWebhook,
                        NotificationWebhook.organisation_id == NotificationDelivery.organisation_id,
                    )
                    .where(NotificationDelivery.next_attempt_at <= now, NotificationWebhook.active)
                    .order_by(NotificationDelivery.next_attempt_at)
                    .limit(settings.webhook_batch_size)
                )
            ).all()
            claimed = []
            until = now + timedelta(seconds=settings.webhook_claim_seconds)
            for row in due:
                result = await session.execute(
                    update(NotificationDelivery)
                    .where(
                        NotificationDelivery.id == row.id,
                        NotificationDelivery.next_attempt_at == row.next_attempt_at,
                    )
                    .values(next_attempt_at=until)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(
                        Claimed(row.id, row.attempts, row.payload, row.url, row.signing_secret)
                    )
            await session.commit()
        return claimed

    async def _send(self, http: httpx.AsyncClient, row: Claimed) -> tuple[int | None, str | None]:
        """One attempt: (HTTP status, error); error is None when the receiver took it."""
        settings = self._settings
        if settings.environment is Environment.production and not row.url.startswith("https://"):
            return None, "webhook URL is not https"
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cp-register-notifier",
            "X-CPR-Delivery": str(row.id),
            "X-CPR-Timestamp": timestamp,
        }
        if row.signing_secret:
            headers["X-CPR-Signature"] = signature(row.signing_secret, timestamp, body)
        try:
            # The whole attempt, not each read, is bounded: a receiver that trickles
            # its answer must not outlast the claim. Vetted again now, and sent to the
            # address vetted (app/notifications/targets.py); no redirect is followed.
            async with asyncio.timeout(settings.webhook_timeout_seconds):
                target = await vet(row.url, settings.webhook_allowed_hosts)
                response = await http.post(
                    target.url,
                    content=body,
                    headers=headers | {"Host": target.host_header},
                    extensions={"sni_hostname": target.host},
                )
        except RefusedTarget:
            return None, "webhook target refused"
        except (httpx.HTTPError, TimeoutError) as exc:
            return None, type(exc).__name__
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # keep notifying after a passing database fault
                log.error("notifier_failed", error_type=type(exc).__name__)
            try:
                await self.deliver_due()
            except Exception as exc:
                log.error("webhook_delivery_round_failed", error_type=type(exc).__name__)
            await asyncio.sleep(self._settings.notifier_interval_seconds)
