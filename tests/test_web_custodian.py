"""The custodian's review pages (app/web/review_routes.py), through real HTTP on the app:
enquiries (filters, paging, search by NHS number, export), alerts, notifications, the
webhook and the audit log's check; each the API's service and audit events, each refused
to a duty officer (403, audited) and to a form from elsewhere (CSRF)."""

import asyncio
import html
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_organisation, create_user
from app.audit.chain import CheckpointSigner
from app.audit.models import AuditEvent
from app.audit.sealing import Sequencer
from app.auth.keys import ensure_signing_key
from app.config import Settings
from app.db import utcnow
from app.identity.models import Organisation, OrganisationKind, UserRole
from app.main import create_app
from app.notifications.models import Notification, NotificationWebhook
from tests.conftest import World
from tests.enquiries import ask, enquirer_id, new_child, seal_and_notify
from tests.faults import audit_log_unwritable

PAGES = ("/web/enquiries", "/web/alerts", "/web/notifications", "/web/webhook", "/web/log")
POSTS = (
    "/web/enquiries/search",
    "/web/enquiries/export",
    f"/web/notifications/{uuid.uuid4()}/acknowledge",
    "/web/webhook",
    "/web/webhook/delete",
)


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does (each test its own jar)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.21", 50021))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


async def _sign_in_as(browser: httpx.AsyncClient, username: str, password: str) -> None:
    page = await browser.get("/web/sign-in")
    response = await browser.post(
        "/web/sign-in",
        data={"csrf_token": _csrf(page), "username": username, "password": password},
    )
    assert response.status_code == 303, response.text


async def _sign_in(browser: httpx.AsyncClient, world: World, who: str) -> None:
    credentials = world[who].credentials
    await _sign_in_as(browser, credentials["username"], credentials["password"])


async def _new_authority(
    sessionmaker: async_sessionmaker[AsyncSession], browser: httpx.AsyncClient
) -> tuple[Organisation, str]:
    """A local authority of the test's own (its notifications and webhook are no other
    test's), and its custodian signed in on ``browser``; the custodian's subject."""
    username, password = f"webcustodian-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
    async with sessionmaker() as session:
        authority = create_organisation(
            session,
            actor="test",
            kind=OrganisationKind.local_authority,
            name=f"Test web authority {uuid.uuid4().hex[:8]}",
            ods_code=None,
            contact_name="web authority safeguarding",
            contact_phone="020 7946 0188",
        )
        await session.flush()
        user = create_user(
            session,
            actor="test",
            organisation=authority,
            username=username,
            full_name="Web Custodian",
            role=UserRole.custodian,
            password=password,
        )
        await session.commit()
        subject = f"user:{user.id}"
    await _sign_in_as(browser, username, password)
    return authority, subject


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def _rows(page: httpx.Response) -> list[str]:
    body = re.search(r"<tbody>(.*?)</tbody>", page.text, re.S)
    return [] if body is None else re.findall(r"<tr>.*?</tr>", body.group(1), re.S)


def _addresses(page: httpx.Response) -> list[str]:
    """Every address the page links or posts to."""
    return [html.unescape(a) for a in re.findall(r'(?:href|action)="([^"]*)"', page.text)]


async def _events(
    sessionmaker: async_sessionmaker[AsyncSession], event_type: str, principal: str
) -> list[AuditEvent]:
    async with sessionmaker() as session:
        return list(
            (
                await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.event_type == event_type, AuditEvent.principal == principal)
                    .order_by(AuditEvent.occurred_at)
                )
            ).all()
        )


def _every_field_is_labelled(page: httpx.Response) -> None:
    ids = re.findall(
        r'<(?:input|select|textarea)(?![^>]*type="hidden")[^>]*\bid="([^"]+)"', page.text
    )
    fields = re.findall(r"<(?:input|select|textarea)(?![^>]*type=\"hidden\")[^>]*>", page.text)
    assert len(ids) == len(fields), "a visible field without an id"
    for field_id in ids:
        assert f'<label for="{field_id}"' in page.text, field_id


# --- enquiries -----------------------------------------------------------------------------


async def test_the_enquiries_page_names_the_child_and_filters_as_the_api_does(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who = enquirer_id()
    asked = await ask(client, world, "hospital_client", nhs, who, name="Dr Webpage")
    assert asked.status_code == 200, asked.text
    await _sign_in(browser, world, "custodian_a")

    page = await browser.get("/web/enquiries", params={"enquirer": who})
    assert page.status_code == 200, page.text
    [row] = _rows(page)
    text = _text(row)
    assert f"Your child: {entry.child_given_name} Testchild" in text
    assert f"NHS number {nhs}" in text  # what the enquirer gave
    assert "Dr Webpage (registrar)" in text
    assert world.orgs["hospital"].name in text
    assert "Unscheduled care" in text  # the purpose in words
    assert "Told: on a child protection plan" in text
    assert "Categories told: Neglect" in text
    assert re.search(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2} UTC", text)
    assert 'aria-current="page"' in page.text
    _every_field_is_labelled(page)

    # Each filter of the API narrows it: none of these match the one enquiry.
    today = utcnow().date()
    for params in (
        {"outcome": "not_on_plan"},
        {"purpose": "police_investigation"},
        {"organisation": str(world.orgs["police"].id)},
        {"from": (today + timedelta(days=1)).isoformat()},
        {"to": (today - timedelta(days=1)).isoformat()},
    ):
        narrowed = await browser.get("/web/enquiries", params={"enquirer": who, **params})
        assert narrowed.status_code == 200, narrowed.text
        assert _rows(narrowed) == [], params
    kept = await browser.get(
        "/web/enquiries",
        params={
            "enquirer": who,
            "outcome": "on_plan",
            "organisation": str(world.orgs["hospital"].id),
            "from": today.isoformat(),
            "to": today.isoformat(),
        },
    )
    assert len(_rows(kept)) == 1

    # Each reading is on record as the API's list records it.
    [*_, read] = await _events(sessionmaker, "audit.read", world["custodian_a"].subject)
    assert read.detail is not None
    assert read.detail["path"] == "/web/enquiries"
    assert read.detail["filters"]["enquirer_id"] == who


async def test_a_refused_filter_is_said_beside_its_field(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/enquiries", params={"from": "2026-12-02", "to": "2026-12-01"})
    assert page.status_code == 422
    assert 'href="#to"' in page.text  # the summary links to the field
    assert 'id="to-error"' in page.text
    assert 'aria-describedby="to-error"' in page.text
    bad = await browser.get("/web/enquiries", params={"organisation": "not-an-id"})
    assert bad.status_code == 422
    assert 'id="organisation-error"' in bad.text


async def test_the_enquiries_about_one_entry_name_it(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    _, other = await new_child(sessionmaker, world.orgs["authority_a"])
    for number in (nhs, other):
        assert (await ask(client, world, "police_client", number)).status_code == 200
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/enquiries", params={"entry": str(entry.id)})
    assert page.status_code == 200
    assert f"one of your children: {entry.child_given_name} Testchild" in _text(page.text)
    [row] = _rows(page)
    assert nhs in row
    unknown = await browser.get("/web/enquiries", params={"entry": "not-an-entry"})
    assert unknown.status_code == 422
    assert "That register entry cannot be found" in unknown.text


async def test_older_enquiries_are_paged_with_the_apis_cursor(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    _, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who = enquirer_id()
    for _ in range(3):
        assert (await ask(client, world, "hospital_client", nhs, who)).status_code == 200
    await _sign_in(browser, world, "custodian_a")

    first = await browser.get("/web/enquiries", params={"enquirer": who, "limit": "2"})
    assert len(_rows(first)) == 2
    older = re.search(r'<a href="([^"]+)" class="paging" rel="next">Older', first.text)
    assert older is not None
    second = await browser.get(html.unescape(older.group(1)))
    assert second.status_code == 200
    assert len(_rows(second)) == 1
    assert "Older enquiries" not in second.text
    assert "Newest enquiries" in second.text
    shown = set(re.findall(r'datetime="([^"]+)"', "".join(_rows(first))))
    assert not shown & set(re.findall(r'datetime="([^"]+)"', "".join(_rows(second))))
    for cursor in ("AAAA", "not a cursor!"):  # undecodable, or not even a cursor's letters
        bad = await browser.get("/web/enquiries", params={"cursor": cursor})
        assert 400 <= bad.status_code < 500, bad.text
        assert bad.headers["content-type"].startswith("text/html")
        assert 'role="alert"' in bad.text


async def test_another_authoritys_enquiry_is_never_shown(
    client: httpx.AsyncClient,
    app: FastAPI,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_b"])
    who = enquirer_id()
    assert (await ask(client, world, "hospital_client", nhs, who)).status_code == 200
    transport = httpx.ASGITransport(app=app, client=("203.0.113.22", 50022))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as custodian_a,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as custodian_b,
    ):
        await _sign_in(custodian_a, world, "custodian_a")
        await _sign_in(custodian_b, world, "custodian_b")
        seen_by_a = [
            await custodian_a.get("/web/enquiries", params={"enquirer": who}),
            await custodian_a.get("/web/enquiries"),
        ]
        page = seen_by_a[-1]
        seen_by_a.append(
            await custodian_a.post(
                "/web/enquiries/search", data={"csrf_token": _csrf(page), "nhs_number": nhs}
            )
        )
        seen_by_b = await custodian_b.get("/web/enquiries", params={"enquirer": who})
    for seen in seen_by_a:
        assert seen.status_code == 200
        assert str(entry.child_given_name) not in seen.text
        assert who not in _text("".join(_rows(seen)))
    assert _rows(seen_by_a[0]) == []
    assert _rows(seen_by_a[2]) == []
    assert str(entry.child_given_name) in seen_by_b.text


async def test_a_search_by_nhs_number_finds_the_child_and_keeps_the_number_out_of_urls(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    for who in ("hospital_client", "police_client"):
        assert (await ask(client, world, who, nhs)).status_code == 200
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/enquiries")
    found = await browser.post(
        "/web/enquiries/search",
        data={"csrf_token": _csrf(page), "nhs_number": nhs, "limit": "1"},
    )
    assert found.status_code == 200, found.text
    assert nhs not in str(found.url)
    [row] = _rows(found)
    assert f"Your child: {entry.child_given_name} Testchild" in _text(row)
    assert f"Enquiries about NHS number {nhs}" in _text(found.text)
    assert all(nhs not in address for address in _addresses(found))
    # The older page is a POST too, the number in its body.
    older = re.search(
        r'<form method="post" action="/web/enquiries/search" class="inline">(.*?)</form>',
        found.text,
        re.S,
    )
    assert older is not None
    assert "Older enquiries" in older.group(1)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', older.group(1)))
    assert fields["nhs_number"] == nhs
    second = await browser.post("/web/enquiries/search", data=fields)
    assert second.status_code == 200
    assert len(_rows(second)) == 1
    assert _rows(second) != _rows(found)
    # The search is on record as the API's search records it: the number in the query.
    [*_, read] = await _events(sessionmaker, "audit.read", world["custodian_a"].subject)
    assert read.query == {"nhs_number": nhs}
    assert read.detail is not None
    assert read.detail["path"] == "/web/enquiries/search"


async def test_an_nhs_number_in_the_address_is_refused_not_searched(
    browser: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _sign_in(browser, world, "custodian_a")
    before = len(await _events(sessionmaker, "audit.read", world["custodian_a"].subject))
    refused = await browser.get("/web/enquiries", params={"nhs_number": "9991000011"})
    assert refused.status_code == 422
    assert 'id="nhs_number-error"' in refused.text
    after = len(await _events(sessionmaker, "audit.read", world["custodian_a"].subject))
    assert after == before


async def test_the_export_is_the_apis_csv_and_is_on_record(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    _, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    who = enquirer_id()
    for _ in range(2):
        assert (await ask(client, world, "hospital_client", nhs, who)).status_code == 200
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/enquiries", params={"enquirer": who})
    export = re.search(
        r'<form method="post" action="/web/enquiries/export" class="inline">(.*?)</form>',
        page.text,
        re.S,
    )
    assert export is not None
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', export.group(1)))
    assert fields["enquirer"] == who
    response = await browser.post("/web/enquiries/export", data=fields)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="enquiries-')
    assert response.headers["cache-control"] == "no-store"
    header, *lines = response.text.strip().splitlines()
    assert header.startswith("event_id,occurred_at,")
    assert len(lines) == 2
    assert all(nhs in line and who in line for line in lines)
    [*_, exported] = await _events(sessionmaker, "audit.exported", world["custodian_a"].subject)
    assert exported.outcome == "exported"
    assert exported.detail == {"filters": {"enquirer_id": who}}

    # Exporting a search: the number in the body, and in the event's query.
    searched = await browser.post(
        "/web/enquiries/export", data={"csrf_token": fields["csrf_token"], "nhs_number": nhs}
    )
    assert searched.status_code == 200
    assert len(searched.text.strip().splitlines()) == 3
    [*_, exported] = await _events(sessionmaker, "audit.exported", world["custodian_a"].subject)
    assert exported.query == {"nhs_number": nhs}


# --- alerts --------------------------------------------------------------------------------


async def test_the_alerts_page_says_what_to_do_and_whom_to_call(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    for who in ("hospital_client", "police_client"):  # two sites within days
        assert (await ask(client, world, who, nhs)).status_code == 200
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/alerts")
    assert page.status_code == 200, page.text
    _every_field_is_labelled(page)
    sections = re.findall(r'<section class="alert-item".*?</section>', page.text, re.S)
    [mine] = [s for s in sections if str(entry.child_given_name) in s]
    text = _text(mine)
    assert "One of your children has been seen by several organisations" in text
    assert "What to do" in text
    assert "Whom to call" in text
    assert world.orgs["hospital"].contact_phone in text
    assert world.orgs["police"].contact_phone in text
    assert f'href="/web/enquiries?entry={entry.id}"' in mine
    assert re.search(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2} UTC", text)

    # Another period: a day two days ago has none of it; a period the wrong way round
    # is refused beside its field.
    earlier = utcnow() - timedelta(days=2)
    period = {
        "from": (earlier - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        "to": earlier.strftime("%Y-%m-%dT%H:%M"),
    }
    before = await browser.get("/web/alerts", params=period)
    assert before.status_code == 200
    assert str(entry.child_given_name) not in before.text
    assert f'value="{period["from"]}"' in before.text
    backwards = await browser.get(
        "/web/alerts", params={"from": period["to"], "to": period["from"]}
    )
    assert backwards.status_code == 422
    assert 'id="to-error"' in backwards.text
    too_long = await browser.get(
        "/web/alerts",
        params={"from": (earlier - timedelta(days=40)).strftime("%Y-%m-%dT%H:%M")},
    )
    assert too_long.status_code == 422
    assert "31 days" in too_long.text
    assert settings.duty_contact_phone in too_long.text


# --- notifications -------------------------------------------------------------------------


async def test_acknowledging_from_the_page_is_the_apis_acknowledgement(
    app: FastAPI,
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    authority, subject = await _new_authority(sessionmaker, browser)
    entry, nhs = await new_child(sessionmaker, authority)
    assert (await ask(client, world, "hospital_client", nhs)).status_code == 200
    await seal_and_notify(app)

    page = await browser.get("/web/notifications")
    assert page.status_code == 200, page.text
    _every_field_is_labelled(page)
    [row] = _rows(page)
    assert f"Your child: {entry.child_given_name} Testchild" in _text(row)
    assert "Not yet acknowledged" in _text(row)
    action = re.search(r'action="(/web/notifications/([0-9a-f-]{36})/acknowledge)"', row)
    assert action is not None
    notification_id = uuid.UUID(action.group(2))

    # Without the form's token: refused, nothing acknowledged.
    forged = await browser.post(action.group(1), data={"csrf_token": "forged"})
    assert forged.status_code == 403
    async with sessionmaker() as session:
        notification = await session.get(Notification, notification_id)
        assert notification is not None
        assert notification.acknowledged_at is None

    done = await browser.post(action.group(1), data={"csrf_token": _csrf(page)})
    assert done.status_code == 303
    assert done.headers["location"] == "/web/notifications?done=acknowledged"
    after = await browser.get(done.headers["location"])
    assert "Notification acknowledged." in after.text
    [row] = _rows(after)
    assert "Acknowledged" in _text(row)
    assert "by you" in _text(row)
    assert "/acknowledge" not in row
    async with sessionmaker() as session:
        notification = await session.get(Notification, notification_id)
        assert notification is not None
        assert notification.acknowledged_at is not None
        assert notification.acknowledged_by == subject
    [event] = await _events(sessionmaker, "notification.acknowledged", subject)
    assert event.authority_id == authority.id
    assert event.entry_id == entry.id
    assert event.detail is not None
    assert event.detail["notification_id"] == str(notification_id)

    # Again (idempotent, as the API): no second event.
    again = await browser.post(action.group(1), data={"csrf_token": _csrf(page)})
    assert again.status_code == 303
    assert len(await _events(sessionmaker, "notification.acknowledged", subject)) == 1
    pending = await browser.get("/web/notifications", params={"status": "unacknowledged"})
    assert _rows(pending) == []


async def test_another_authoritys_notification_cannot_be_acknowledged_from_the_page(
    app: FastAPI,
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    theirs, _ = await _new_authority(sessionmaker, browser)
    _, nhs = await new_child(sessionmaker, theirs)
    assert (await ask(client, world, "hospital_client", nhs)).status_code == 200
    await seal_and_notify(app)
    async with sessionmaker() as session:
        notification_id = await session.scalar(
            select(Notification.id).where(Notification.authority_id == theirs.id)
        )
    assert notification_id is not None
    browser.cookies.clear()
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/notifications")
    assert str(notification_id) not in page.text
    refused = await browser.post(
        f"/web/notifications/{notification_id}/acknowledge", data={"csrf_token": _csrf(page)}
    )
    assert refused.status_code == 404
    async with sessionmaker() as session:
        notification = await session.get(Notification, notification_id)
        assert notification is not None
        assert notification.acknowledged_at is None
    [*_, event] = await _events(sessionmaker, "notification.refused", world["custodian_a"].subject)
    assert event.refusal == "notification_not_found"


# --- webhook -------------------------------------------------------------------------------


async def test_the_webhook_is_set_shown_once_and_removed_as_the_api_does(
    browser: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    authority, subject = await _new_authority(sessionmaker, browser)
    page = await browser.get("/web/webhook")
    assert page.status_code == 200
    assert "There is no webhook" in page.text
    _every_field_is_labelled(page)

    refused = await browser.post(
        "/web/webhook", data={"csrf_token": _csrf(page), "url": "https://user:pw@example.org/x"}
    )
    assert refused.status_code == 422
    assert 'id="url-error"' in refused.text
    assert 'href="#url"' in refused.text
    # A private address: the custodian is told whom to ask, not the operator's setting.
    private = await browser.post(
        "/web/webhook", data={"csrf_token": _csrf(page), "url": "https://10.1.2.3/cpr"}
    )
    assert private.status_code == 422
    assert "CPR_WEBHOOK_ALLOWED_HOSTS" not in private.text
    assert "the service's duty desk" in _text(private.text)

    url = f"https://receiver.example.org/cpr-{uuid.uuid4().hex[:6]}"
    forged = await browser.post("/web/webhook", data={"csrf_token": "", "url": url})
    assert forged.status_code == 403
    async with sessionmaker() as session:
        assert await session.get(NotificationWebhook, authority.id) is None

    created = await browser.post("/web/webhook", data={"csrf_token": _csrf(page), "url": url})
    assert created.status_code == 200, created.text
    secret = re.search(r'<code class="secret-value">([^<]+)</code>', created.text)
    assert secret is not None
    async with sessionmaker() as session:
        row = await session.get(NotificationWebhook, authority.id)
        assert row is not None
        assert (row.url, row.active, row.signing_secret) == (url, True, secret.group(1))
    shown = await browser.get("/web/webhook")
    assert url in shown.text
    assert secret.group(1) not in shown.text  # once only

    removed = await browser.post("/web/webhook/delete", data={"csrf_token": _csrf(shown)})
    assert removed.status_code == 303
    gone = await browser.get(removed.headers["location"])
    assert "The webhook is removed" in gone.text
    assert "There is no webhook" in gone.text
    async with sessionmaker() as session:
        row = await session.get(NotificationWebhook, authority.id)
        assert row is not None
        assert row.active is False
    [set_event] = await _events(sessionmaker, "notification.webhook_set", subject)
    [removed_event] = await _events(sessionmaker, "notification.webhook_removed", subject)
    assert set_event.detail == removed_event.detail == {"url": url}
    assert set_event.authority_id == authority.id


# --- the audit log -------------------------------------------------------------------------


async def test_the_log_page_verifies_the_log_as_the_api_does(
    app: FastAPI, client: httpx.AsyncClient, browser: httpx.AsyncClient, world: World
) -> None:
    await app.state.sequencer.run_once(checkpoint=True)
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/log")
    assert page.status_code == 200, page.text
    text = _text(page.text)
    assert "Verified: no alteration found" in text
    api = (await client.get("/v1/audit/verify", headers=world["custodian_a"].headers)).json()
    assert api["ok"] is True
    checked = re.search(r"Checkpoints checked (\d+)", text)
    assert checked is not None
    assert int(checked.group(1)) >= 1
    assert re.search(r"Head \(the hash of the whole chain\) [0-9a-f]{64}", text)
    assert "The latest checkpoint" in text
    assert re.search(r"Signed \d{2}/\d{2}/\d{4} \d{2}:\d{2} UTC", text)


async def test_events_only_waiting_for_the_worker_are_a_delay_not_an_alteration(
    fresh_settings: Settings,
) -> None:
    """With the worker stopped, the page says the sealing is behind and whom to call to
    start it, once, with when it stopped: not that the log was altered."""
    settings = fresh_settings.model_copy(update={"sealing_delay_seconds": 1})
    signer = CheckpointSigner.from_file(
        settings.checkpoint_key_path, settings.audit_log_origin, create=True
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        sessionmaker = app.state.sessionmaker
        sequencer = Sequencer(sessionmaker, signer, settings)  # the worker, run once
        async with sessionmaker() as session:
            await ensure_signing_key(session, settings.key_dir, actor="test:setup")
            await session.commit()
        transport = httpx.ASGITransport(app=app, client=("203.0.113.23", 50023))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
            await _new_authority(sessionmaker, web)
            await sequencer.run_once(checkpoint=True)
            assert "Verified: no alteration found" in _text((await web.get("/web/log")).text)
            for _ in range(3):  # events written and never sealed: no worker runs
                assert (await web.get("/web/enquiries")).status_code == 200
            await asyncio.sleep(1.5)
            page = await web.get("/web/log")
    assert page.status_code == 200, page.text
    text = _text(page.text)
    assert "events waiting to be sealed" in text
    assert re.search(r"the oldest event has waited since \d{2}/\d{2}/\d{4} \d{2}:\d{2} UTC", text)
    assert settings.duty_contact_phone in text
    assert "Not verified" not in text
    assert "information governance" not in text
    assert "event queued at" not in text  # no machine timestamps, no ids


async def test_a_web_users_role_is_shown_in_words(
    app: FastAPI,
    browser: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    _, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    transport = httpx.ASGITransport(app=app, client=("203.0.113.24", 50024))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as officer:
        await _sign_in(officer, world, "duty_officer")
        form = await officer.get("/web/lookup")
        answer = await officer.post(
            "/web/lookup",
            data={
                "csrf_token": _csrf(form),
                "nhs_number": nhs,
                "purpose": "out_of_hours_referral",
                "reason": "role in words",
            },
        )
        assert answer.status_code == 200, answer.text
    await _sign_in(browser, world, "custodian_a")
    page = await browser.get("/web/enquiries")
    found = await browser.post(
        "/web/enquiries/search", data={"csrf_token": _csrf(page), "nhs_number": nhs}
    )
    assert found.status_code == 200, found.text
    text = _text(found.text)
    assert "(duty officer)" in text
    assert "(duty_officer)" not in text


# --- who may ------------------------------------------------------------------------------


async def test_signed_out_every_page_sends_you_to_sign_in(browser: httpx.AsyncClient) -> None:
    for path in (*PAGES, "/web/audit"):
        response = await browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/web/sign-in"


async def test_the_old_review_address_sends_a_custodian_to_the_enquiries(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "custodian_a")
    response = await browser.get("/web/audit")
    assert response.status_code == 303
    assert response.headers["location"] == "/web/enquiries"


async def test_a_duty_officer_is_refused_every_page_and_told_whom_to_call(
    browser: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    officer = world["duty_officer"].subject
    await _sign_in(browser, world, "duty_officer")
    before = len(await _events(sessionmaker, "audit.refused", officer))
    csrf = _csrf(await browser.get("/web/lookup"))
    responses = [await browser.get(path) for path in PAGES]
    responses += [
        await browser.post(path, data={"csrf_token": csrf, "nhs_number": "9991000011"})
        for path in POSTS
    ]
    for response in responses:
        assert response.status_code == 403, response.url
        assert response.headers["content-type"].startswith("text/html")
        assert "Only custodians can open this page" in response.text
        assert settings.duty_contact_phone in response.text
        assert "<table" not in response.text
        assert "Custodian pages" not in response.text  # no custodian navigation
    refusals = (await _events(sessionmaker, "audit.refused", officer))[before:]
    assert len(refusals) == len(responses)
    assert {event.refusal for event in refusals} == {"not_custodian"}
    assert [event.detail["path"] for event in refusals if event.detail] == [
        *PAGES,
        *POSTS,
    ]


async def test_a_form_without_its_token_is_refused_and_nothing_done(
    browser: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    custodian = world["custodian_a"].subject
    await _sign_in(browser, world, "custodian_a")
    exports = len(await _events(sessionmaker, "audit.exported", custodian))
    reads = len(await _events(sessionmaker, "audit.read", custodian))
    for path in POSTS:
        for token in ("", "forged"):
            response = await browser.post(
                path,
                data={"csrf_token": token, "nhs_number": "9991000011", "url": "https://x.org"},
            )
            assert response.status_code == 403, path
            assert "This form has expired" in response.text
            assert "text/csv" not in response.headers["content-type"]
    page = await browser.get("/web/enquiries")
    foreign = await browser.post(
        "/web/enquiries/export",
        data={"csrf_token": _csrf(page)},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    assert len(await _events(sessionmaker, "audit.exported", custodian)) == exports
    # The one read is the page the foreign form was taken from.
    assert len(await _events(sessionmaker, "audit.read", custodian)) == reads + 1


async def test_while_the_log_cannot_be_written_the_pages_say_so_and_read_nothing(
    browser: httpx.AsyncClient,
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _sign_in(browser, world, "custodian_a")
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await browser.get("/web/enquiries")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert int(response.headers["retry-after"]) > 0
    assert "Service unavailable" in response.text
    assert settings.duty_contact_phone in response.text
    assert "<table" not in response.text
