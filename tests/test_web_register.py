"""The custodian's register pages (app/web/register_routes.py), through real HTTP on the
app, on both databases: each page writes the audit events the API writes, another
authority's entry is "not found", and only custodians may use them."""

import html
import re
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.config import Settings
from app.register.csvformat import EXPORT_COLUMNS
from tests.conftest import World
from tests.enquiries import fresh_nhs
from tests.faults import audit_log_unwritable
from tests.test_register import ENTRIES, child_body, created, name, unborn_body, with_version
from tests.test_web import _csrf, _sign_in

TODAY = date.today()
REGISTER = "/web/register"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does (each test its own jar)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.11", 50002))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def custodian(browser: httpx.AsyncClient, world: World) -> httpx.AsyncClient:
    """The browser, signed in as authority A's custodian."""
    assert (await _sign_in(browser, world, "custodian_a")).status_code == 303
    return browser


def _uk(day: date) -> str:
    return day.strftime("%d/%m/%Y")


def _text(page: httpx.Response) -> str:
    """The page's words, tags gone and entities read."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


async def _events(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> list[AuditEvent]:
    async with sessionmaker() as session:
        found = await session.scalars(
            select(AuditEvent)
            .where(AuditEvent.request_id == response.headers["x-request-id"])
            .order_by(AuditEvent.occurred_at)
        )
        return list(found)


async def _post_form(
    browser: httpx.AsyncClient, page_url: str, action: str, data: dict[str, Any]
) -> httpx.Response:
    """Open the page, then send its form with its CSRF token (and version, if any)."""
    page = await browser.get(page_url)
    assert page.status_code == 200, page.text
    fields: dict[str, Any] = {"csrf_token": _csrf(page)}
    version = re.search(r'name="version" value="([0-9]+)"', page.text)
    if version:
        fields["version"] = version.group(1)
    return await browser.post(action, data={**fields, **data})


async def _pages(browser: httpx.AsyncClient, url: str) -> str:
    """Every page of the list from ``url``, following "Next page"."""
    texts = []
    while True:
        page = await browser.get(url)
        assert page.status_code == 200, page.text
        texts.append(page.text)
        following = re.search(r'<a href="(/web/register\?[^"]+)">Next page</a>', page.text)
        if following is None:
            return "\n".join(texts)
        url = html.unescape(following.group(1))


def _row(pages: str, entry_id: str) -> str:
    found = re.search(
        rf'<tr[^>]*>\s*<th scope="row"><a href="/web/register/{entry_id}">.*?</tr>', pages, re.S
    )
    assert found is not None, f"no row for {entry_id}"
    return found.group(0)


def _inputs(page: httpx.Response) -> dict[str, str]:
    """The page's text fields and their values, as the form would send them."""
    return dict(re.findall(r'<input id="([a-z_]+)" name="[a-z_]+" value="([^"]*)"', page.text))


def _entry_form(**fields: str) -> dict[str, Any]:
    """The create form, as a custodian fills it in (dates DD/MM/YYYY)."""
    form: dict[str, Any] = {
        "child_given_name": "Webform",
        "child_family_name": f"Webform{name().lower()}",
        "child_date_of_birth": _uk(TODAY - timedelta(days=2000)),
        "child_nhs_number": fresh_nhs(),
        "categories": ["neglect", "emotional_abuse"],
        "plan_start": _uk(TODAY - timedelta(days=7)),
        "lead_professional": "Sam Worker",
    }
    return form | fields


# --- who may use the pages ---------------------------------------------------------


async def test_without_a_session_the_register_pages_send_you_to_sign_in(
    browser: httpx.AsyncClient, world: World
) -> None:
    entry_id = world.entries["neglect"].id
    for url in (REGISTER, f"{REGISTER}/new", f"{REGISTER}/{entry_id}", f"{REGISTER}/import"):
        response = await browser.get(url)
        assert response.status_code == 303, url
        assert response.headers["location"] == "/web/sign-in"


async def test_a_duty_officer_gets_a_page_saying_whom_to_call_and_the_refusal_is_audited(
    browser: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _sign_in(browser, world, "duty_officer")
    response = await browser.get(REGISTER)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "custodians" in response.text
    assert settings.duty_contact_phone in response.text
    assert "<table" not in response.text
    [event] = await _events(sessionmaker, response)
    assert (event.event_type, event.refusal) == ("register.refused", "not_custodian")
    assert event.principal == world["duty_officer"].subject


async def test_another_authoritys_entry_is_a_not_found_page_and_on_record(
    custodian: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    theirs = world.entries["dup_b"]
    for url in (f"{REGISTER}/{theirs.id}", f"{REGISTER}/{theirs.id}/change"):
        response = await custodian.get(url)
        assert response.status_code == 404, url
        assert response.headers["content-type"].startswith("text/html")
        assert "Entry not found" in response.text
        assert "Shah" not in response.text
        [event] = await _events(sessionmaker, response)
        assert (event.event_type, event.refusal) == ("register.refused", "entry_not_found")
        assert event.detail is not None
        assert event.detail["entry_id"] == str(theirs.id)
    page = await custodian.get(REGISTER)
    changed = await custodian.post(
        f"{REGISTER}/{theirs.id}/end",
        data={"csrf_token": _csrf(page), "version": "1", "end_reason": "died"},
    )
    assert changed.status_code == 404
    [event] = await _events(sessionmaker, changed)
    assert event.refusal == "entry_not_found"


async def test_a_form_without_its_csrf_token_is_refused_and_nothing_done(
    custodian: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    form = _entry_form()
    for token in ("", "forged"):
        response = await custodian.post(f"{REGISTER}/new", data={**form, "csrf_token": token})
        assert response.status_code == 403
        assert "This form has expired" in response.text
        assert await _events(sessionmaker, response) == []
        exported = await custodian.post(f"{REGISTER}/export", data={"csrf_token": token})
        assert exported.status_code == 403
        assert exported.headers["content-type"].startswith("text/html")
        assert await _events(sessionmaker, exported) == []


async def test_while_reads_cannot_be_recorded_the_page_says_so_and_shows_nothing(
    custodian: httpx.AsyncClient,
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await custodian.get(f"{REGISTER}/{world.entries['neglect'].id}")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert int(response.headers["retry-after"]) > 0
    assert "Service unavailable" in response.text
    assert settings.duty_contact_phone in response.text
    assert "Amara" not in response.text


async def test_a_change_the_service_cannot_take_just_now_keeps_what_was_typed(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """An outage page after a form: Try again sends what was typed, nothing lost."""
    entry = await created(client, world, child_body())
    change_url = f"{REGISTER}/{entry['id']}/change"
    page = await custodian.get(change_url)
    typed = {"team_contact": "Typed during the outage", "reason": "outage"}
    data = {**_inputs(page), **typed, "categories": ["neglect"], "version": "1"}
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await custodian.post(change_url, data={**data, "csrf_token": _csrf(page)})
    assert response.status_code == 503, _text(response)
    assert "Service unavailable" in response.text
    assert settings.duty_contact_phone in response.text
    form = re.search(
        r'<form method="post" action="([^"]+)">((?:(?!</form>).)*Try again.*?)</form>',
        response.text,
        re.S,
    )
    assert form is not None, response.text
    assert form.group(1) == change_url
    carried = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(2))
    assert ("team_contact", "Typed during the outage") in carried
    assert ("categories", "neglect") in carried
    assert "Try again" in form.group(2)
    # Try again, once the service answers: the change is saved as typed.
    again: dict[str, list[str]] = {}
    for field, value in carried:
        again.setdefault(field, []).append(value)
    saved = await custodian.post(change_url, data=again)
    assert saved.status_code == 303, saved.text
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert now["team_contact"] == "Typed during the outage"


async def test_a_change_sent_after_the_session_ended_is_kept_through_sign_in(
    custodian: httpx.AsyncClient, client: httpx.AsyncClient, world: World
) -> None:
    """A session lasts 15 minutes; a change typed for longer is not lost: the sign-in
    page carries it, and once signed in it is sent again as it was."""
    entry = await created(client, world, child_body())
    change_url = f"{REGISTER}/{entry['id']}/change"
    page = await custodian.get(change_url)
    custodian.cookies.delete("cpr_session")  # the session's 15 minutes are up
    typed = {"notes": "A long note, typed slowly", "reason": "strategy meeting"}
    data = {**_inputs(page), **typed, "categories": ["neglect"], "version": "1"}
    ended = await custodian.post(change_url, data={**data, "csrf_token": _csrf(page)})
    assert ended.status_code == 401
    assert "Your session has ended" in ended.text
    assert "What you typed is kept" in ended.text
    carried = re.findall(
        r'<input type="hidden" name="(resume_[a-z_]+)" value="([^"]*)">', ended.text
    )
    assert ("resume_to", change_url) in carried
    assert ("resume_notes", "A long note, typed slowly") in carried
    # Kept in the page only: in no cookie.
    assert not [c for c in ended.headers.get_list("set-cookie") if "typed slowly" in c]
    credentials = world["custodian_a"].credentials
    sign_in: dict[str, list[str]] = {
        "csrf_token": [_csrf(ended)],
        "username": [credentials["username"]],
        "password": [credentials["password"]],
    }
    for field, value in carried:
        sign_in.setdefault(field, []).append(value)
    back = await custodian.post("/web/sign-in", data=sign_in)
    assert back.status_code == 200, back.text
    assert "You are signed in again" in back.text
    form = re.search(rf'<form method="post" action="{change_url}">(.*?)</form>', back.text, re.S)
    assert form is not None, back.text
    again: dict[str, list[str]] = {}
    for field, value in re.findall(
        r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(1)
    ):
        again.setdefault(field, []).append(value)
    assert "password" not in again
    saved = await custodian.post(change_url, data=again)
    assert saved.status_code == 303, saved.text
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert (now["version"], now["notes"]) == (2, "A long note, typed slowly")


# --- the list --------------------------------------------------------------------------


async def test_the_list_marks_overdue_reviews_in_words_and_filters_by_status(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    overdue = await created(
        client, world, child_body(plan_start=(TODAY - timedelta(days=120)).isoformat())
    )
    on_time = await created(client, world, child_body())

    only_overdue = await _pages(custodian, f"{REGISTER}?status=active&overdue=1")
    row = _row(only_overdue, overdue["id"])
    assert "Review overdue" in row
    assert "\u26a0" in row  # a symbol beside the words, not colour alone
    assert on_time["id"] not in only_overdue

    active = await _pages(custodian, f"{REGISTER}?status=active")
    assert "Review overdue" not in _row(active, on_time["id"])
    assert str(world.entries["ended_own"].id) not in active
    ended = await _pages(custodian, f"{REGISTER}?status=ended")
    ended_row = _row(ended, str(world.entries["ended_own"].id))
    assert "Ended" in ended_row
    # An ended plan has no review to come: no date is shown as if one were due.
    assert "None: the plan has ended" in ended_row
    assert not re.search(r"<td>\d{2}/\d{2}/\d{4}", ended_row.split("</td>", 2)[-1])
    assert overdue["id"] not in ended
    # Never another authority's entry, whichever the filter.
    everything = await _pages(custodian, f"{REGISTER}?status=all")
    for theirs in ("dup_b", "ended_other"):
        assert str(world.entries[theirs].id) not in everything
    # Dates in words a custodian reads (DD/MM/YYYY), categories in words.
    assert _uk(date.fromisoformat(overdue["next_review"])) in row
    assert "Neglect" in row

    page = await custodian.get(f"{REGISTER}?status=active&overdue=1")
    [event] = await _events(sessionmaker, page)
    assert event.event_type == "register.read"
    assert event.detail is not None
    assert event.detail["action"] == "list"
    assert event.detail["review_overdue"] is True


async def test_the_search_is_posted_and_finds_the_child(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, child_body())
    nhs = entry["child"]["nhs_number"]
    found = await _post_form(custodian, REGISTER, f"{REGISTER}/search", {"nhs_number": nhs})
    assert found.status_code == 200
    assert nhs not in str(found.url)
    _row(found.text, entry["id"])
    [event] = await _events(sessionmaker, found)
    assert (event.event_type, event.detail and event.detail["action"]) == (
        "register.read",
        "search",
    )
    by_names = await _post_form(
        custodian,
        REGISTER,
        f"{REGISTER}/search",
        {
            "given_name": entry["child"]["given_name"],
            "family_name": entry["child"]["family_name"],
            "date_of_birth": _uk(date.fromisoformat(entry["child"]["date_of_birth"])),
        },
    )
    _row(by_names.text, entry["id"])
    nothing = await _post_form(custodian, REGISTER, f"{REGISTER}/search", {})
    assert nothing.status_code == 422
    assert "Enter the NHS number, or the given name, family name and date of birth" in _text(
        nothing
    )
    # Names typed without the date of birth: what is missing is named beside it, and
    # what was typed is kept.
    part = {"given_name": "Ann", "family_name": "Smith"}
    partly = await _post_form(custodian, REGISTER, f"{REGISTER}/search", part)
    assert partly.status_code == 422
    assert 'id="date_of_birth-error"' in partly.text
    assert 'href="#date_of_birth"' in partly.text
    assert 'id="nhs_number-error"' not in partly.text
    assert 'id="given_name-error"' not in partly.text
    assert 'value="Smith"' in partly.text


# --- one entry ---------------------------------------------------------------------------


async def test_the_entry_page_shows_the_details_and_history_and_both_reads_are_audited(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, child_body(categories=["neglect", "emotional_abuse"]))
    url = f"{ENTRIES}/{entry['id']}"
    changed = await client.patch(
        url,
        json={"team_contact": "Duty team, 020 7946 0155", "reason": "new team contact"},
        headers=with_version(world, 1),
    )
    assert changed.status_code == 200, changed.text
    page = await custodian.get(f"{REGISTER}/{entry['id']}")
    assert page.status_code == 200
    words = _text(page)
    assert entry["child"]["given_name"] in words
    assert _uk(date.fromisoformat(entry["child"]["date_of_birth"])) in words
    assert _uk(date.fromisoformat(entry["plan_start"])) in words
    assert "Neglect" in words
    assert "Emotional abuse" in words
    assert "Duty team, 020 7946 0155" in words
    # The history: every version, who made it, what it changed, and why.
    assert "Put on the register" in words
    assert "Changed team contact" in words
    assert "new team contact" in words
    assert "Test custodian_a" in words
    assert '<th scope="col">Version</th>' in page.text
    events = await _events(sessionmaker, page)
    assert [(e.event_type, e.detail and e.detail["action"]) for e in events] == [
        ("register.read", "read"),
        ("register.read", "history"),
    ]
    assert {e.entry_id for e in events} == {uuid.UUID(entry["id"])}


async def test_a_child_is_put_on_the_register_from_the_form_with_uk_dates(
    custodian: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    form = _entry_form()
    response = await _post_form(custodian, f"{REGISTER}/new", f"{REGISTER}/new", form)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.endswith("?done=created")
    [event] = await _events(sessionmaker, response)
    assert event.event_type == "register.entry_created"
    assert location == f"{REGISTER}/{event.entry_id}?done=created"
    page = await custodian.get(location)
    words = _text(page)
    assert "The child is on the register." in words
    assert form["child_family_name"] in words
    assert form["child_date_of_birth"] in words
    # ISO dates are taken too.
    iso = _entry_form(child_date_of_birth=(TODAY - timedelta(days=1500)).isoformat())
    again = await _post_form(custodian, f"{REGISTER}/new", f"{REGISTER}/new", iso)
    assert again.status_code == 303, again.text
    # The same child again is refused, as the API refuses it, pointing at the entry.
    twice = await _post_form(custodian, f"{REGISTER}/new", f"{REGISTER}/new", form)
    assert twice.status_code == 409
    assert "Already on the register" in twice.text
    assert f'href="{REGISTER}/{event.entry_id}"' in twice.text
    # The entry is a link, never its id in the words.
    assert str(event.entry_id) not in _text(twice)


async def test_form_errors_are_beside_their_fields_in_plain_words_with_the_values_kept(
    custodian: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    form = _entry_form(child_date_of_birth="31/02/2020", categories=[], child_nhs_number="")
    response = await _post_form(custodian, f"{REGISTER}/new", f"{REGISTER}/new", form)
    assert response.status_code == 422
    assert 'role="alert"' in response.text
    assert 'href="#child_date_of_birth"' in response.text  # the summary links to the field
    assert 'id="child_date_of_birth-error"' in response.text
    assert 'aria-describedby="child_date_of_birth-hint child_date_of_birth-error"' in response.text
    assert 'aria-invalid="true"' in response.text
    words = _text(response)
    assert "This is not a date. Enter a real date as DD/MM/YYYY" in words
    assert "Choose at least one category." in words
    assert f'value="{form["child_family_name"]}"' in response.text
    assert 'value="31/02/2020"' in response.text
    assert "Value error" not in words
    # The summary follows the fields' order on the page.
    assert words.index("Child's date of birth:") < words.index("Categories:")
    assert await _events(sessionmaker, response) == []
    # A rule broken (the plan start in the future) is named beside its field too.
    future = _entry_form(plan_start=_uk(TODAY + timedelta(days=3)))
    refused = await _post_form(custodian, f"{REGISTER}/new", f"{REGISTER}/new", future)
    assert refused.status_code == 422
    assert 'id="plan_start-error"' in refused.text
    assert "The plan start is in the future." in _text(refused)


async def test_an_entry_is_changed_from_the_form_at_the_version_it_was_loaded_at(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, child_body())
    change_url = f"{REGISTER}/{entry['id']}/change"
    page = await custodian.get(change_url)
    assert 'name="version" value="1"' in page.text
    assert f'value="{_uk(date.fromisoformat(entry["plan_start"]))}"' in page.text
    form = _inputs(page)
    form |= {"team_contact": "Family Help, 020 7946 0177", "reason": "new team"}
    response = await custodian.post(
        change_url,
        data={**form, "categories": ["neglect"], "csrf_token": _csrf(page), "version": "1"},
    )
    assert response.status_code == 303, response.text
    [event] = await _events(sessionmaker, response)
    assert (event.event_type, event.entry_version) == ("register.entry_changed", 2)
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert now["team_contact"] == "Family Help, 020 7946 0177"
    assert now["child"] == entry["child"]
    assert now["version"] == 2


async def test_a_change_made_meanwhile_is_shown_with_what_you_typed_kept(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, child_body())
    change_url = f"{REGISTER}/{entry['id']}/change"
    page = await custodian.get(change_url)  # loaded at version 1
    meanwhile = await client.patch(
        f"{ENTRIES}/{entry['id']}",
        json={"lead_professional": "Someone Else", "reason": "handed over"},
        headers=with_version(world, 1),
    )
    assert meanwhile.status_code == 200
    form = _inputs(page)
    typed = {"team_contact": "My typed contact", "reason": "my correction"}
    response = await custodian.post(
        change_url,
        data={
            **form,
            **typed,
            "categories": ["neglect"],
            "csrf_token": _csrf(page),
            "version": "1",
        },
    )
    assert response.status_code == 409
    words = _text(response)
    assert "Someone changed this entry while you were editing" in words
    assert "Someone Else" in words  # the current values
    assert 'value="My typed contact"' in response.text  # what was typed, kept
    assert "my correction" in response.text
    assert 'name="version" value="2"' in response.text  # saving again applies it to version 2
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert (now["version"], now["team_contact"]) == (2, entry["team_contact"])
    assert all(e.event_type == "register.read" for e in await _events(sessionmaker, response))
    # The form now holds the other person's change, so saving it as it stands keeps both
    # changes: theirs is not put back, unseen, to what was loaded.
    again = _inputs(response)
    assert again["lead_professional"] == "Someone Else"
    assert again["team_contact"] == "My typed contact"
    saved = await custodian.post(
        change_url,
        data={
            **again,
            "reason": "my correction",
            "categories": ["neglect"],
            "csrf_token": _csrf(response),
            "version": "2",
        },
    )
    assert saved.status_code == 303, saved.text
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert now["version"] == 3
    assert (now["lead_professional"], now["team_contact"]) == ("Someone Else", "My typed contact")


async def test_a_field_both_changed_meanwhile_is_named_beside_it_with_both_values(
    custodian: httpx.AsyncClient, client: httpx.AsyncClient, world: World
) -> None:
    entry = await created(client, world, child_body())
    change_url = f"{REGISTER}/{entry['id']}/change"
    page = await custodian.get(change_url)
    meanwhile = await client.patch(
        f"{ENTRIES}/{entry['id']}",
        json={"notes": "their note", "reason": "their reason"},
        headers=with_version(world, 1),
    )
    assert meanwhile.status_code == 200
    response = await custodian.post(
        change_url,
        data={
            **_inputs(page),
            "notes": "my note",
            "reason": "mine",
            "categories": ["neglect"],
            "csrf_token": _csrf(page),
            "version": "1",
        },
    )
    assert response.status_code == 409
    assert 'id="notes-error"' in response.text
    assert 'href="#notes"' in response.text  # in the summary, linking to the field
    words = _text(response)
    assert "Changed meanwhile to “their note”; you typed “my note”" in words
    assert ">my note</textarea>" in response.text  # what was typed stays in the field


async def test_a_review_is_recorded_from_the_form(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, child_body())
    url = f"{REGISTER}/{entry['id']}/review"
    response = await _post_form(
        custodian, url, url, {"held_on": _uk(TODAY), "note": "all attended"}
    )
    assert response.status_code == 303, response.text
    [event] = await _events(sessionmaker, response)
    assert event.event_type == "register.entry_reviewed"
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert now["last_review"] == TODAY.isoformat()
    late = await _post_form(
        custodian,
        url,
        url,
        {"held_on": _uk(TODAY), "next_review": _uk(TODAY + timedelta(days=400))},
    )
    assert late.status_code == 422
    assert 'id="next_review-error"' in late.text
    assert "no later than 6 months after the last review" in _text(late)


async def test_a_plan_is_ended_on_recorded_grounds_from_the_form(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, child_body())
    url = f"{REGISTER}/{entry['id']}/end"
    page = await custodian.get(url)
    assert "<legend>Grounds for ending the plan</legend>" in page.text
    assert "Moved out of the area" in page.text
    missing = await _post_form(custodian, url, url, {"ended_on": _uk(TODAY)})
    assert missing.status_code == 422
    assert "Choose the grounds for ending the plan." in _text(missing)
    response = await _post_form(
        custodian, url, url, {"end_reason": "moved_out_of_area", "ended_on": _uk(TODAY)}
    )
    assert response.status_code == 303, response.text
    [event] = await _events(sessionmaker, response)
    assert event.event_type == "register.entry_ended"
    after = await custodian.get(f"{REGISTER}/{entry['id']}")
    assert "Moved out of the area" in _text(after)
    assert f"{entry['id']}/change" not in after.text  # never changed again
    assert (await custodian.get(url)).status_code == 409


async def test_a_birth_is_recorded_from_the_form(
    custodian: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    entry = await created(client, world, unborn_body())
    page = await custodian.get(f"{REGISTER}/{entry['id']}")
    assert "Unborn baby of" in _text(page)
    assert f"{entry['id']}/birth" in page.text
    url = f"{REGISTER}/{entry['id']}/birth"
    born = {
        "child_given_name": "Newborn",
        "child_family_name": entry["mother"]["family_name"],
        "child_date_of_birth": _uk(TODAY),
        "child_nhs_number": fresh_nhs(),
    }
    response = await _post_form(custodian, url, url, born)
    assert response.status_code == 303, response.text
    [event] = await _events(sessionmaker, response)
    assert event.event_type == "register.birth_recorded"
    now = (
        await client.get(f"{ENTRIES}/{entry['id']}", headers=world["custodian_a"].headers)
    ).json()
    assert (now["unborn"], now["child"]["given_name"]) == (False, "Newborn")
    assert (await custodian.get(url)).status_code == 409  # already born


# --- export and import ---------------------------------------------------------------------


async def test_the_continuity_export_downloads_and_is_on_record(
    custodian: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    page = await custodian.get(REGISTER)
    assert 'action="/web/register/export"' in page.text
    response = await custodian.post(f"{REGISTER}/export", data={"csrf_token": _csrf(page)})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.text.splitlines()[0].split(",") == list(EXPORT_COLUMNS)
    assert str(world.entries["neglect"].id) in response.text
    assert str(world.entries["dup_b"].id) not in response.text
    [event] = await _events(sessionmaker, response)
    assert (event.event_type, event.principal) == (
        "register.exported",
        world["custodian_a"].subject,
    )


async def test_the_import_reports_every_problem_of_every_row_and_imports_nothing(
    custodian: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    start = _uk(TODAY - timedelta(days=5))
    born = _uk(TODAY - timedelta(days=3000))
    bad = (
        "child_given_name,child_family_name,child_date_of_birth,categories,plan_start\n"
        f"Ada,Importone,{born},neglect,{start}\n"
        "Ben,Importtwo,31/31/2020,neglect,{start}\n".replace("{start}", start)
        + f"Cal,Importthree,{born},kindness,{_uk(TODAY + timedelta(days=9))}\n"
    )
    page = await custodian.get(f"{REGISTER}/import")
    assert 'enctype="multipart/form-data"' in page.text
    response = await custodian.post(
        f"{REGISTER}/import",
        data={"csrf_token": _csrf(page)},
        files={"file": ("register.csv", bad.encode(), "text/csv")},
    )
    assert response.status_code == 422
    rows = re.findall(r'<tr><th scope="row">([0-9]+)</th><td>([^<]*)</td>', response.text)
    assert ("3", "child_date_of_birth") in rows
    assert ("4", "categories") in rows
    assert ("4", "plan_start") in rows  # every problem of the row, not only the first
    assert "nothing was imported" in _text(response)
    [event] = await _events(sessionmaker, response)
    assert (event.event_type, event.refusal) == ("register.import_refused", "invalid_rows")

    good = (
        "child_given_name,child_family_name,child_date_of_birth,categories,plan_start\n"
        f"Ada,Import{name().lower()},{born},Neglect,{start}\n"
    )
    page = await custodian.get(f"{REGISTER}/import")
    imported = await custodian.post(
        f"{REGISTER}/import",
        data={"csrf_token": _csrf(page)},
        files={"file": ("register.csv", good.encode(), "text/csv")},
    )
    assert imported.status_code == 200, imported.text
    assert "1 entry imported" in _text(imported)
    [event] = await _events(sessionmaker, imported)
    assert event.event_type == "register.imported"
    missing = await custodian.post(f"{REGISTER}/import", data={"csrf_token": _csrf(page)})
    assert missing.status_code == 422
    assert "Choose the CSV file to import." in _text(missing)
