"""The responsible authority is told of each enquiry about one of its children,
once per enquirer and child within 24 hours (README, "The audit log"), in a feed
and, for an authority that has one, through a webhook that retries until the
receiver takes it. Notifications come from the sealed log, so none is lost
when the notifier or the receiver stops."""

import asyncio
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_client, create_organisation
from app.audit.models import AuditEvent
from app.auth.keys import ensure_signing_key
from app.config import Settings
from app.db import utcnow
from app.identity.models import Organisation, OrganisationKind, Scope
from app.main import create_app
from app.notifications.models import (
    Notification,
    NotificationDelivery,
    NotificationWebhook,
    NotifierCursor,
)
from app.notifications.notifier import Notifier, derive_notifications
from tests.conftest import NHS, World
from tests.enquiries import ask, custodian_of, enquirer_id, fresh_nhs, new_child, seal_and_notify
from tests.faults import audit_log_unwritable

# --- helpers ---------------------------------------------------------------------------


async def feed(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page of the feed, in order."""
    items: list[dict[str, Any]] = []
    params = {"limit": 500, **params}
    while True:
        response = await client.get("/v1/notifications", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]


def about(entry_id: uuid.UUID, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item["entry_id"] == str(entry_id)]


async def notifications_for(
    sessionmaker: async_sessionmaker[AsyncSession], *lookup_ids: str
) -> list[Notification]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(Notification).where(
                Notification.event_id.in_([uuid.UUID(i) for i in lookup_ids])
            )
        )
        return list(rows)


async def assert_not_found_is_audited(
    sessionmaker: async_sessionmaker[AsyncSession],
    response: httpx.Response,
    world: World,
    notification_id: uuid.UUID,
) -> None:
    """The 404 to custodian A is on record, naming the id asked for and nothing else."""
    async with sessionmaker() as session:
        [event] = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    assert (event.event_type, event.outcome) == ("notification.refused", "refused")
    assert event.refusal == "notification_not_found"
    custodian = world["custodian_a"]
    assert (event.principal, event.organisation_id) == (
        custodian.subject,
        custodian.organisation.id,
    )
    assert event.detail is not None
    assert event.detail["notification_id"] == str(notification_id)
    assert (event.authority_id, event.entry_id) == (None, None)


# --- the feed --------------------------------------------------------------------------


async def test_an_enquiry_about_a_child_is_notified_to_its_authority(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who = enquirer_id()
    asked = await ask(client, world, "hospital_client", nhs, who)
    await seal_and_notify(app)

    [item] = about(entry.id, await feed(client, world["custodian_a"].headers))

    assert item["event_id"] == asked.json()["lookup_id"]
    assert item["repeats"] == 0
    assert item["outcome"] == "on_plan"
    assert item["purpose"] == "unscheduled_care"
    assert item["enquirer"]["id"] == who
    assert item["organisation_name"] == world.orgs["hospital"].name
    assert item["acknowledged_at"] is None


async def test_the_same_enquirer_about_the_same_child_is_notified_once_a_day(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who, colleague = enquirer_id(), enquirer_id()
    first = await ask(client, world, "hospital_client", nhs, who)
    await ask(client, world, "hospital_client", nhs, who)
    await seal_and_notify(app)
    await ask(client, world, "hospital_client", nhs, who)  # after a notifier run, too
    second = await ask(client, world, "hospital_client", nhs, colleague)
    # Enquirer ids are each organisation's own: this is somebody else.
    police = await ask(client, world, "police_client", nhs, who)
    await seal_and_notify(app)

    items = about(entry.id, await feed(client, world["custodian_a"].headers))

    assert {item["event_id"]: item["repeats"] for item in items} == {
        first.json()["lookup_id"]: 2,
        second.json()["lookup_id"]: 0,
        police.json()["lookup_id"]: 0,
    }
    [repeated] = [i for i in items if i["repeats"] == 2]
    assert repeated["last_occurred_at"] > repeated["first_occurred_at"]


async def test_an_enquiry_more_than_a_day_after_the_last_notified_one_is_notified_again(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who = enquirer_id()
    today = await ask(client, world, "hospital_client", nhs, who)
    async with sessionmaker() as session:
        template = await session.get(AuditEvent, uuid.UUID(today.json()["lookup_id"]))
        assert template is not None
        columns = {
            c.key: getattr(template, c.key)
            for c in AuditEvent.__table__.columns
            if c.key not in ("id", "occurred_at", "request_id")
        }
        # The same enquiry as written the day before and two hours after that (the log
        # is append-only: earlier events are added, never edited).
        yesterday = AuditEvent(
            id=uuid.uuid4(), occurred_at=utcnow() - timedelta(hours=25), **columns
        )
        later = AuditEvent(id=uuid.uuid4(), occurred_at=utcnow() - timedelta(hours=23), **columns)
        session.add_all([yesterday, later])
        await session.commit()
    await seal_and_notify(app)

    items = about(entry.id, await feed(client, world["custodian_a"].headers))

    assert {item["event_id"] for item in items} == {today.json()["lookup_id"], str(yesterday.id)}
    assert sum(item["repeats"] for item in items) == 1


async def test_answers_naming_no_child_of_any_authority_are_not_notified(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    unknown = await ask(client, world, "hospital_client", fresh_nhs())
    ended = await ask(client, world, "hospital_client", NHS["ended_other"])
    refused = await ask(
        client, world, "hospital_client", NHS["neglect"], purpose="police_investigation"
    )
    assert refused.status_code == 403
    await seal_and_notify(app)
    assert (
        await notifications_for(
            sessionmaker, unknown.json()["lookup_id"], ended.json()["lookup_id"]
        )
        == []
    )
    async with sessionmaker() as session:
        refused_event = await session.scalar(
            select(AuditEvent.id).where(AuditEvent.request_id == refused.headers["x-request-id"])
        )
    assert await notifications_for(sessionmaker, str(refused_event)) == []


async def test_another_authoritys_notifications_are_neither_listed_nor_acknowledgeable(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    theirs = await ask(client, world, "hospital_client", NHS["dup_b"], enquirer_id())
    await seal_and_notify(app)
    [notification] = await notifications_for(sessionmaker, theirs.json()["lookup_id"])
    assert notification.authority_id == world.orgs["authority_b"].id

    listed = await feed(client, world["custodian_a"].headers)
    assert theirs.json()["lookup_id"] not in {item["event_id"] for item in listed}
    response = await client.post(
        f"/v1/notifications/{notification.id}/acknowledge",
        headers=world["custodian_a"].headers,
    )
    assert response.status_code == 404
    await assert_not_found_is_audited(sessionmaker, response, world, notification.id)
    # The same answer as for an id that names no notification at all.
    unknown = await client.post(
        f"/v1/notifications/{uuid.uuid4()}/acknowledge", headers=world["custodian_a"].headers
    )
    assert (unknown.status_code, unknown.content) == (404, response.content)
    async with sessionmaker() as session:
        still = await session.get(Notification, notification.id)
    assert still is not None
    assert still.acknowledged_at is None
    custodian_b = await custodian_of(app, sessionmaker, world.orgs["authority_b"])
    assert theirs.json()["lookup_id"] in {
        item["event_id"] for item in await feed(client, custodian_b, status="unacknowledged")
    }


async def test_acknowledging_is_recorded_audited_and_idempotent(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    await ask(client, world, "hospital_client", nhs)
    await seal_and_notify(app)
    headers = world["custodian_a"].headers
    [item] = about(entry.id, await feed(client, headers, status="unacknowledged"))

    first = await client.post(f"/v1/notifications/{item['id']}/acknowledge", headers=headers)
    again = await client.post(f"/v1/notifications/{item['id']}/acknowledge", headers=headers)

    assert first.status_code == again.status_code == 200
    assert first.json()["acknowledged_by"] == world["custodian_a"].subject
    assert again.json()["acknowledged_at"] == first.json()["acknowledged_at"]
    assert about(entry.id, await feed(client, headers, status="unacknowledged")) == []
    assert len(about(entry.id, await feed(client, headers, status="acknowledged"))) == 1
    async with sessionmaker() as session:
        recorded = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event_type == "notification.acknowledged",
                    AuditEvent.entry_id == entry.id,
                )
            )
        ).all()
    assert [event.principal for event in recorded] == [world["custodian_a"].subject]


async def test_an_unknown_notification_is_not_found_and_the_refusal_is_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    unknown = uuid.uuid4()
    response = await client.post(
        f"/v1/notifications/{unknown}/acknowledge", headers=world["custodian_a"].headers
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    await assert_not_found_is_audited(sessionmaker, response, world, unknown)


async def test_a_not_found_acknowledgement_is_not_answered_unless_it_is_recorded(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await client.post(
            f"/v1/notifications/{uuid.uuid4()}/acknowledge",
            headers=world["custodian_a"].headers,
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_feed_lists_unacknowledged_first_then_newest(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    older, older_nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    newer, newer_nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    await ask(client, world, "hospital_client", older_nhs)
    await ask(client, world, "hospital_client", newer_nhs)
    await seal_and_notify(app)
    headers = world["custodian_a"].headers
    [seen] = about(newer.id, await feed(client, headers))
    await client.post(f"/v1/notifications/{seen['id']}/acknowledge", headers=headers)

    items = await feed(client, headers, limit=50)  # many pages

    assert len({item["id"] for item in items}) == len(items)
    keys = [(item["acknowledged_at"] is not None, item["first_occurred_at"]) for item in items]
    unread = [at for acked, at in keys if not acked]
    read = [at for acked, at in keys if acked]
    assert keys == [(False, at) for at in unread] + [(True, at) for at in read]
    assert unread == sorted(unread, reverse=True)
    assert read == sorted(read, reverse=True)
    positions = {item["entry_id"]: n for n, item in enumerate(items)}
    assert positions[str(older.id)] < positions[str(newer.id)]


# --- a notifier that stops loses nothing -----------------------------------------------


@dataclass
class Site:
    """A database of its own: an authority, a hospital client, the app that serves them."""

    app: FastAPI
    http: httpx.AsyncClient
    authority: Organisation
    lookup_headers: dict[str, str]
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessionmaker = self.app.state.sessionmaker

    async def lookup(self, nhs: str, who: str = "S1") -> str:
        response = await self.http.post(
            "/v1/lookups",
            json={
                "subject": {"nhs_number": nhs},
                "purpose": "unscheduled_care",
                "reason": "attended ED",
                "enquirer": {"id": who, "name": "Dr Site", "role": "registrar"},
            },
            headers=self.lookup_headers,
        )
        assert response.json()["status"] == "on_plan"
        return response.json()["lookup_id"]

    def notifier(self, **settings: Any) -> Notifier:
        return Notifier(self.sessionmaker, self.app.state.settings.model_copy(update=settings))


@pytest.fixture
async def site(fresh_settings: Settings) -> AsyncIterator[Site]:
    """The background notifier is off: each test runs it when it chooses."""
    settings = fresh_settings.model_copy(
        update={
            "sealing_enabled": True,
            "notifications_enabled": False,
            "webhook_retry_base_seconds": 0.2,
            "webhook_retry_max_seconds": 0.4,
            "webhook_timeout_seconds": 2.0,
            "webhook_claim_seconds": 10.0,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with app.state.sessionmaker() as session:
            await ensure_signing_key(session, settings.key_dir, actor="test")
            authority, hospital = (
                create_organisation(
                    session,
                    actor="test",
                    kind=kind,
                    name=f"Site {kind.value}",
                    ods_code=None,
                    contact_name="Safeguarding",
                    contact_phone="020 7946 0111",
                )
                for kind in (
                    OrganisationKind.local_authority,
                    OrganisationKind.emergency_department,
                )
            )
            await session.flush()
            client, secret = create_client(
                session,
                actor="test",
                organisation=hospital,
                name="site hospital",
                scopes=frozenset({Scope.lookup}),
            )
            await session.commit()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            token = await http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client.id, secret),
            )
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            yield Site(app, http, authority, headers)


async def _count(site: Site, model: type[Any], *where: Any) -> int:
    async with site.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where)) or 0


async def test_a_stopped_notifier_resumes_from_its_cursor_and_repeats_nothing(
    site: Site,
) -> None:
    children = [await new_child(site.sessionmaker, site.authority) for _ in range(3)]
    for _, nhs in children:
        await site.lookup(nhs)
    await site.app.state.sequencer.run_once()
    assert await _count(site, Notification) == 0  # nobody was notifying

    # One batch, then "stop": the cursor moved with the work it covers.
    async with site.sessionmaker() as session:
        derived = await derive_notifications(
            session, site.app.state.settings.model_copy(update={"notifier_batch_size": 1})
        )
        await session.commit()
    async with site.sessionmaker() as session:
        cursor = await session.get(NotifierCursor, "notifications")
    assert cursor is not None
    assert cursor.position == derived.position == 1

    # A new notifier (a restart, or another replica) carries on from there.
    resumed = await site.notifier(notifier_batch_size=2).run_once()
    again = await site.notifier().run_once()

    assert await _count(site, Notification) == 3
    assert again.created == again.scanned == 0
    assert resumed.position == derived.position + resumed.scanned


async def _repeats(site: Site) -> int:
    async with site.sessionmaker() as session:
        return await session.scalar(select(func.sum(Notification.repeats))) or 0


async def test_a_fresh_notifier_starts_from_the_recorded_position_in_one_read(
    site: Site,
) -> None:
    """A new process (its own engine and pool, as after a new deployment) reads where to
    start (the cursor row, and the newest notification's position: two indexed reads)
    and the log's head, and nothing of the log before it: it neither misses nor
    repeats a notification."""
    _, nhs = await new_child(site.sessionmaker, site.authority)
    await site.lookup(nhs)
    await site.lookup(nhs)  # a repeat
    await site.app.state.sequencer.run_once()
    first = await site.notifier().run_once()
    assert (first.created, first.repeats) == (1, 1)

    fresh = Notifier.with_own_engine(site.app.state.settings)
    assert fresh._engine is not None
    statements: list[str] = []
    sqlalchemy_event.listen(
        fresh._engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _k, statement, *_: statements.append(statement),
    )
    try:
        idle = await fresh.run_once()
        assert (idle.scanned, idle.created, idle.repeats) == (0, 0, 0)
        assert not [s for s in statements if "audit_events" in s], statements
        _, other = await new_child(site.sessionmaker, site.authority)
        await site.lookup(other)
        await site.app.state.sequencer.run_once()
        resumed = await fresh.run_once()
    finally:
        await fresh.close()
    assert (resumed.created, resumed.repeats) == (1, 0)
    assert await _count(site, Notification) == 2
    assert await _repeats(site) == 1


async def test_a_cursor_lost_or_set_back_neither_repeats_nor_misses(
    site: Site, fresh_admin_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The newest notification's position is a floor under the cursor row: with the row
    gone, or set back to 0, the notifier does not read the log from the start again,
    nor count a repeat twice (nor fail on a notification it already made)."""
    _, nhs = await new_child(site.sessionmaker, site.authority)
    await site.lookup(nhs)
    await site.lookup(nhs)
    await site.app.state.sequencer.run_once()
    await site.notifier().run_once()
    assert (await _count(site, Notification), await _repeats(site)) == (1, 1)

    for statement in (
        "UPDATE notifier_cursor SET position = 0",
        "DELETE FROM notifier_cursor",
    ):
        async with fresh_admin_sessionmaker() as session:
            await session.execute(text(statement))
            await session.commit()
        again = await site.notifier().run_once()
        assert (again.created, again.repeats) == (0, 0)
        assert (await _count(site, Notification), await _repeats(site)) == (1, 1)

    await site.lookup(nhs)  # a third enquiry: one more repeat, counted once
    _, other = await new_child(site.sessionmaker, site.authority)
    await site.lookup(other)
    await site.app.state.sequencer.run_once()
    later = await site.notifier().run_once()
    assert (later.created, later.repeats) == (1, 1)
    assert (await _count(site, Notification), await _repeats(site)) == (2, 2)


async def test_an_event_sealed_late_is_still_notified(site: Site) -> None:
    """An enquiry that committed after later ones were notified is not skipped."""
    early, early_nhs = await new_child(site.sessionmaker, site.authority)
    late, _ = await new_child(site.sessionmaker, site.authority)
    await site.lookup(early_nhs)
    await site.app.state.sequencer.run_once()
    await site.notifier().run_once()
    async with site.sessionmaker() as session:
        template = await session.scalar(
            select(AuditEvent).where(
                AuditEvent.event_type == "lookup", AuditEvent.entry_id == early.id
            )
        )
        assert template is not None
        columns = {
            c.key: getattr(template, c.key)
            for c in AuditEvent.__table__.columns
            if c.key not in ("id", "occurred_at", "entry_id")
        }
        # Written "before" the one already notified, as a slow transaction would be.
        session.add(
            AuditEvent(
                id=uuid.uuid4(),
                occurred_at=template.occurred_at - timedelta(seconds=1),
                entry_id=late.id,
                **columns,
            )
        )
        await session.commit()
    await site.app.state.sequencer.run_once()
    await site.notifier().run_once()
    assert await _count(site, Notification) == 2


# --- webhooks --------------------------------------------------------------------------


class Receiver:
    """A webhook receiver: answers with ``statuses`` in turn, then 200; records all."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict[str, str], bytes, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body, status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    """The receiver served over real HTTP on loopback; yields its URL."""
    sock = _free_socket()
    config = uvicorn.Config(
        receiver, lifespan="off", log_config=None, access_log=False, http="h11", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/cpr-hook"
    finally:
        server.should_exit = True
        await task
        sock.close()


SECRET = "s3cret"  # the webhook's signing secret


async def _set_webhook(site: Site, url: str, secret: str | None = SECRET) -> None:
    async with site.sessionmaker() as session:
        existing = await session.get(NotificationWebhook, site.authority.id)
        if existing is None:
            session.add(
                NotificationWebhook(
                    organisation_id=site.authority.id, url=url, signing_secret=secret
                )
            )
        else:
            existing.url = url
        await session.commit()


async def _outbox(site: Site) -> list[NotificationDelivery]:
    async with site.sessionmaker() as session:
        return list(await session.scalars(select(NotificationDelivery)))


async def _notify(site: Site, notifier: Notifier) -> str:
    _, nhs = await new_child(site.sessionmaker, site.authority)
    lookup_id = await site.lookup(nhs)
    await site.app.state.sequencer.run_once()
    await notifier.run_once()
    return lookup_id


async def _deliver_until(notifier: Notifier, done: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not done():
            await notifier.deliver_due()
            await asyncio.sleep(0.05)


async def test_a_webhook_receives_a_signed_notification_without_identifiers(site: Site) -> None:
    receiver = Receiver()
    notifier = site.notifier()
    async with serving(receiver) as url:
        await _set_webhook(site, url)
        lookup_id = await _notify(site, notifier)
        assert await notifier.deliver_due() == 1

    [(headers, body, status)] = receiver.received
    payload = json.loads(body)
    assert status == 200
    assert payload["event_id"] == lookup_id
    assert payload["authority_id"] == str(site.authority.id)
    assert payload["outcome"] == "on_plan"
    assert payload["enquirer"]["id"] == "s1"  # as recorded: case-folded
    assert len(payload["entry_ids"]) == 1
    assert "nhs_number" not in body.decode()
    assert "reason" not in payload
    expected = hmac.new(
        SECRET.encode(), headers["x-cpr-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-cpr-signature"] == f"sha256={expected}"
    [delivery] = await _outbox(site)
    assert str(delivery.id) == headers["x-cpr-delivery"]
    assert (delivery.attempts, delivery.last_status) == (1, 200)
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None


async def test_a_refusing_receiver_is_retried_with_back_off_until_it_accepts(
    site: Site,
) -> None:
    receiver = Receiver(statuses=[503, 500])
    notifier = site.notifier()
    async with serving(receiver) as url:
        await _set_webhook(site, url)
        await _notify(site, notifier)
        assert await notifier.deliver_due() == 0
        [pending] = await _outbox(site)
        assert (pending.attempts, pending.last_status, pending.last_error) == (1, 503, "HTTP 503")
        assert pending.next_attempt_at is not None
        assert pending.next_attempt_at > utcnow()  # not at once: back off
        assert await notifier.deliver_due() == 0
        assert len(receiver.received) == 1

        await _deliver_until(notifier, lambda: len(receiver.received) == 3)

    [delivered] = await _outbox(site)
    assert delivered.attempts == 3
    assert delivered.delivered_at is not None
    assert [status for _, _, status in receiver.received] == [503, 500, 200]
    assert len({headers["x-cpr-delivery"] for headers, _, _ in receiver.received}) == 1


async def test_a_receiver_that_is_down_loses_nothing(site: Site) -> None:
    notifier = site.notifier()
    closed = _free_socket()
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    await _set_webhook(site, f"http://127.0.0.1:{port}/cpr-hook")
    lookup_id = await _notify(site, notifier)
    assert await notifier.deliver_due() == 0
    [pending] = await _outbox(site)
    assert pending.attempts == 1
    assert pending.last_error == "ConnectError"
    assert pending.delivered_at is None

    receiver = Receiver()
    async with serving(receiver) as url:
        await _set_webhook(site, url)  # back up, at its new address
        await _deliver_until(notifier, lambda: len(receiver.received) == 1)

    assert json.loads(receiver.received[0][1])["event_id"] == lookup_id
    [delivered] = await _outbox(site)
    assert delivered.attempts == 2
    assert delivered.delivered_at is not None


async def test_replicas_delivering_at_once_send_each_notification_once(site: Site) -> None:
    receiver = Receiver()
    first, second = site.notifier(), site.notifier()
    async with serving(receiver) as url:
        await _set_webhook(site, url)
        for _ in range(3):
            await _notify(site, first)
        sent = await asyncio.gather(first.deliver_due(), second.deliver_due())

    assert sum(sent) == 3
    assert len(receiver.received) == 3
    assert len({headers["x-cpr-delivery"] for headers, _, _ in receiver.received}) == 3


async def test_no_outbox_without_a_webhook(site: Site) -> None:
    await _notify(site, site.notifier())
    assert await _count(site, Notification) == 1
    assert await _outbox(site) == []


async def test_deliveries_wait_while_the_webhook_is_switched_off(site: Site) -> None:
    receiver = Receiver()
    notifier = site.notifier()

    async def switch(active: bool) -> None:
        async with site.sessionmaker() as session:
            await session.execute(
                update(NotificationWebhook)
                .where(NotificationWebhook.organisation_id == site.authority.id)
                .values(active=active)
            )
            await session.commit()

    async with serving(receiver) as url:
        await _set_webhook(site, url)
        await _notify(site, notifier)
        await switch(False)
        assert await notifier.deliver_due() == 0
        assert receiver.received == []
        [waiting] = await _outbox(site)
        assert (waiting.attempts, waiting.delivered_at) == (0, None)
        await switch(True)
        assert await notifier.deliver_due() == 1
    assert len(receiver.received) == 1


async def test_the_service_role_may_notify_and_deliver(
    backend: str, fresh_settings: Settings
) -> None:
    """On PostgreSQL the service runs as cpr_app: the migration grants it these tables."""
    if backend != "postgresql":
        pytest.skip("roles and privileges are PostgreSQL's")
    app = create_app(
        fresh_settings.model_copy(
            update={
                "database_role": "cpr_app",
                "sealing_enabled": True,
                "notifications_enabled": False,
            }
        )
    )
    async with app.router.lifespan_context(app):
        async with app.state.sessionmaker() as session:
            authority = Organisation(
                id=uuid.uuid4(),
                kind=OrganisationKind.local_authority.value,
                name="Role test authority",
                contact_name="Safeguarding",
                contact_phone="020 7946 0111",
            )
            session.add(authority)
            await session.flush()
            closed = _free_socket()
            url = f"http://127.0.0.1:{closed.getsockname()[1]}/"
            closed.close()  # nothing listens there
            session.add(NotificationWebhook(organisation_id=authority.id, url=url))
            session.add(
                AuditEvent(
                    event_type="lookup",
                    outcome="on_plan",
                    organisation_id=authority.id,
                    enquirer_id="R1",
                    authority_id=authority.id,
                    entry_id=uuid.uuid4(),
                )
            )
            await session.commit()
        await app.state.sequencer.run_once()
        assert (await app.state.notifier.run_once()).created == 1
        assert await app.state.notifier.deliver_due() == 0
        async with app.state.sessionmaker() as session:
            assert await session.scalar(text("SELECT current_user")) == "cpr_app"
            [delivery] = (await session.scalars(select(NotificationDelivery))).all()
    assert (delivery.attempts, delivery.last_error) == (1, "ConnectError")


async def test_a_custodian_sets_the_webhook_and_deliveries_are_signed_with_its_secret(
    site: Site,
) -> None:
    custodian = await custodian_of(site.app, site.sessionmaker, site.authority)
    receiver = Receiver()
    notifier = site.notifier()
    async with serving(receiver) as url:
        for bad in ("ftp://example.org/hook", "https://user:pw@example.org/hook", "not a url"):
            refused = await site.http.put(
                "/v1/notifications/webhook", json={"url": bad}, headers=custodian
            )
            assert refused.status_code == 422, bad
        created = await site.http.put(
            "/v1/notifications/webhook", json={"url": url}, headers=custodian
        )
        assert created.status_code == 200, created.text
        secret = created.json()["signing_secret"]
        read = await site.http.get("/v1/notifications/webhook", headers=custodian)
        assert read.json()["url"] == url
        assert "signing_secret" not in read.json()
        assert secret not in read.text

        await _notify(site, notifier)
        assert await notifier.deliver_due() == 1
        [(headers, body, _)] = receiver.received
        expected = hmac.new(
            secret.encode(), headers["x-cpr-timestamp"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert headers["x-cpr-signature"] == f"sha256={expected}"

        removed = await site.http.delete("/v1/notifications/webhook", headers=custodian)
        assert removed.status_code == 204
        assert (
            await site.http.get("/v1/notifications/webhook", headers=custodian)
        ).status_code == 404
        await _notify(site, notifier)
        assert await notifier.deliver_due() == 0
    async with site.sessionmaker() as session:
        kinds = list(
            await session.scalars(
                select(AuditEvent.event_type).where(
                    AuditEvent.event_type.like("notification.webhook%")
                )
            )
        )
    assert sorted(kinds) == ["notification.webhook_removed", "notification.webhook_set"]


async def test_only_custodians_set_webhooks_and_only_their_own(
    client: httpx.AsyncClient, world: World
) -> None:
    hook = {"url": "https://receiver.example.org/cpr"}
    assert (
        await client.put(
            "/v1/notifications/webhook", json=hook, headers=world["hospital_client"].headers
        )
    ).status_code == 403
    assert (
        await client.put(
            "/v1/notifications/webhook", json=hook, headers=world["custodian_a"].headers
        )
    ).status_code == 200
    theirs = await client.get("/v1/notifications/webhook", headers=world["custodian_b"].headers)
    assert theirs.status_code == 404
    assert "receiver.example.org" not in theirs.text
    # Leave authority A without a webhook for the other tests.
    await client.delete("/v1/notifications/webhook", headers=world["custodian_a"].headers)


async def test_a_referral_matching_two_authorities_children_reaches_both_custodians(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # Ruby Shah, same birthday, on a plan in authority A and in authority B.
    a, b = world.entries["dup_a"], world.entries["dup_b"]
    subject = {
        "given_name": "Ruby",
        "family_name": "Shah",
        "date_of_birth": a.child_date_of_birth.isoformat(),  # type: ignore[union-attr]
    }
    answer = await ask(client, world, "police_client", subject, enquirer_id())
    assert answer.json()["status"] == "refer_to_custodian"
    lookup_id = answer.json()["lookup_id"]

    # Each custodian sees the enquiry, naming only its own entry.
    for who, own, other in (("custodian_a", a, b), ("custodian_b", b, a)):
        listed = await client.get(
            "/v1/audit/events", params={"limit": 200}, headers=world[who].headers
        )
        [event] = [e for e in listed.json()["items"] if e["id"] == lookup_id]
        assert event["matched_entry_ids"] == [str(own.id)], who
        assert str(other.id) not in listed.text

    await seal_and_notify(app)
    notified = await notifications_for(sessionmaker, lookup_id)
    assert sorted(str(n.authority_id) for n in notified) == sorted(
        str(world.orgs[k].id) for k in ("authority_a", "authority_b")
    )
    feed_b = await client.get("/v1/notifications", headers=world["custodian_b"].headers)
    [item] = [i for i in feed_b.json()["items"] if i["event_id"] == lookup_id]
    assert item["matched_entry_ids"] == [str(b.id)]
