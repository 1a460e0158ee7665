"""The thin web client, through real HTTP on the app: sign-in, the lookup page, the
review page, and the defences of a cookie session (CSRF, foreign origins, headers)."""

import json
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.config import Settings
from tests.conftest import BORN, NHS, World
from tests.faults import audit_log_unwritable

REASON = "attended out of hours with a head injury"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does (each test its own jar)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def _sign_in(browser: httpx.AsyncClient, world: World, who: str) -> httpx.Response:
    page = await browser.get("/web/sign-in")
    credentials = world[who].credentials
    return await browser.post(
        "/web/sign-in",
        data={
            "csrf_token": _csrf(page),
            "username": credentials["username"],
            "password": credentials["password"],
        },
    )


async def _look_up(browser: httpx.AsyncClient, **fields: str) -> httpx.Response:
    page = await browser.get("/web/lookup")
    assert page.status_code == 200
    data = {"purpose": "out_of_hours_referral", "reason": REASON, **fields}
    return await browser.post("/web/lookup", data={"csrf_token": _csrf(page), **data})


async def test_signing_in_sets_a_strict_httponly_session_cookie(
    browser: httpx.AsyncClient, world: World
) -> None:
    response = await _sign_in(browser, world, "duty_officer")
    assert response.status_code == 303
    assert response.headers["location"] == "/web/lookup"
    cookie = next(c for c in response.headers.get_list("set-cookie") if "cpr_session=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/web" in cookie


async def test_a_wrong_password_is_refused_and_audited_as_the_api_does(
    browser: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    page = await browser.get("/web/sign-in")
    username = world["duty_officer"].credentials["username"]
    response = await browser.post(
        "/web/sign-in",
        data={"csrf_token": _csrf(page), "username": username, "password": "wrong"},
    )
    assert response.status_code == 401
    assert "Wrong username or password" in response.text
    assert "cpr_session=" not in response.headers.get("set-cookie", "")
    async with sessionmaker() as session:
        failed = await session.scalar(
            select(AuditEvent).where(
                AuditEvent.event_type == "auth.login_failed",
                AuditEvent.source_address == "203.0.113.9",
            )
        )
    assert failed is not None


async def test_a_sign_in_is_recorded_as_the_api_records_it(
    browser: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    officer = world["duty_officer"]
    response = await _sign_in(browser, world, "duty_officer")
    assert response.status_code == 303
    token = browser.cookies.get("cpr_session")
    assert token
    async with sessionmaker() as session:
        [event] = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    assert (event.event_type, event.outcome) == ("auth.signed_in", "issued")
    assert (event.principal, event.organisation_id) == (officer.subject, officer.organisation.id)
    assert event.source_address == "203.0.113.9"
    assert event.detail is not None
    assert event.detail["jti"] == jwt.get_unverified_claims(token)["jti"]
    assert officer.credentials["password"] not in json.dumps(event.detail)


async def test_while_sign_ins_cannot_be_recorded_the_page_says_so_and_whom_to_call(
    browser: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await _sign_in(browser, world, "duty_officer")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert int(response.headers["retry-after"]) > 0
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert 'role="alert"' in response.text
    assert "Service unavailable" in response.text
    assert "Try again" in response.text
    assert settings.duty_contact_phone in response.text
    assert "cpr_session=" not in response.headers.get("set-cookie", "")
    assert browser.cookies.get("cpr_session") is None
    # The form is there to try again from, and works once the log is writable.
    assert (await _sign_in(browser, world, "duty_officer")).status_code == 303


async def test_the_lookup_page_answers_as_the_api_and_records_the_same_event(
    browser: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _sign_in(browser, world, "duty_officer")
    response = await _look_up(browser, nhs_number=NHS["neglect"])
    assert response.status_code == 200
    assert "On a child protection plan" in response.text
    assert "Neglect" in response.text
    assert 'role="status"' in response.text
    lookup_id = re.search(r"Lookup reference ([0-9a-f-]{36})", response.text)
    assert lookup_id is not None
    async with sessionmaker() as session:
        event = await session.get(AuditEvent, uuid.UUID(lookup_id.group(1)))
    assert event is not None
    assert (event.event_type, event.outcome) == ("lookup", "on_plan")
    assert event.principal == world["duty_officer"].subject
    assert (event.purpose, event.reason) == ("out_of_hours_referral", REASON)
    assert event.query is not None
    assert event.query["nhs_number"] == NHS["neglect"]
    assert event.enquirer is not None
    assert event.enquirer["id"] == world["duty_officer"].subject


async def test_a_refusal_is_shown_with_the_form_kept(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    response = await _look_up(browser, given_name="J", family_name="Smith")
    assert response.status_code == 422
    assert 'role="alert"' in response.text
    assert 'value="Smith"' in response.text


async def test_a_post_without_the_csrf_token_is_refused_and_nothing_looked_up(
    browser: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _sign_in(browser, world, "duty_officer")
    reason = f"forged form {uuid.uuid4().hex}"
    for token in ("", "forged"):
        response = await browser.post(
            "/web/lookup",
            data={
                "csrf_token": token,
                "nhs_number": NHS["neglect"],
                "purpose": "out_of_hours_referral",
                "reason": reason,
            },
        )
        assert response.status_code == 403
        assert "neglect" not in response.text
        # A page that says why, with a fresh form to start again from.
        assert response.headers["content-type"].startswith("text/html")
        assert "This form has expired" in response.text
    async with sessionmaker() as session:
        asked = await session.scalar(select(AuditEvent.id).where(AuditEvent.reason == reason))
    assert asked is None  # never reached the lookup, so never asked


@pytest.mark.parametrize("origin", ["https://evil.example", "http://testserver.evil", "null"])
async def test_a_form_posted_from_another_site_is_refused(
    browser: httpx.AsyncClient, world: World, origin: str
) -> None:
    await _sign_in(browser, world, "duty_officer")
    page = await browser.get("/web/lookup")
    response = await browser.post(
        "/web/lookup",
        data={
            "csrf_token": _csrf(page),
            "nhs_number": NHS["neglect"],
            "purpose": "out_of_hours_referral",
            "reason": REASON,
        },
        headers={"Origin": origin},
    )
    assert response.status_code == 403
    assert "On a child protection plan" not in response.text


async def test_every_page_carries_a_strict_content_security_policy(
    browser: httpx.AsyncClient, world: World
) -> None:
    pages = [await browser.get("/web/sign-in")]
    await _sign_in(browser, world, "duty_officer")
    pages.append(await browser.get("/web/lookup"))
    for page in pages:
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text
        assert "http://" not in page.text
        assert "https://" not in page.text


async def test_without_a_session_the_pages_send_you_to_sign_in(
    browser: httpx.AsyncClient,
) -> None:
    for path in ("/web/lookup", "/web/audit"):
        response = await browser.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/web/sign-in"
    browser.cookies.set("cpr_session", "not-a-token", path="/web")
    response = await browser.get("/web/lookup")
    assert response.headers["location"] == "/web/sign-in"


async def test_a_custodian_cannot_look_up_from_the_page(
    browser: httpx.AsyncClient, world: World, settings: Settings
) -> None:
    signed_in = await _sign_in(browser, world, "custodian_a")
    assert signed_in.headers["location"] == "/web/enquiries"
    response = await _look_up(browser, nhs_number=NHS["neglect"])
    assert response.status_code == 403
    assert "On a child protection plan" not in response.text
    # The page says so and whom to call, offers no form that cannot work, and keeps the
    # custodian's way back to the register.
    page = await browser.get("/web/lookup")
    assert "not a reference point" in page.text
    assert 'action="/web/lookup"' not in page.text
    assert 'href="/web/register"' in page.text
    assert settings.duty_contact_phone in page.text


async def test_the_review_page_shows_only_the_custodians_own_children(
    app: FastAPI, world: World
) -> None:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 50002))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as officer,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as custodian_b,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as custodian_a,
    ):
        await _sign_in(officer, world, "duty_officer")
        unique = uuid.uuid4().hex
        marker = f"web review {unique} <script>alert(1)</script>"
        page = await officer.get("/web/lookup")
        asked = await officer.post(
            "/web/lookup",
            data={
                "csrf_token": _csrf(page),
                "nhs_number": NHS["neglect"],
                "purpose": "out_of_hours_referral",
                "reason": marker,
            },
        )
        assert asked.status_code == 200
        await _sign_in(custodian_a, world, "custodian_a")
        await _sign_in(custodian_b, world, "custodian_b")
        seen_by_a = await custodian_a.get("/web/enquiries")
        seen_by_b = await custodian_b.get("/web/enquiries")
    assert seen_by_a.status_code == 200
    assert unique in seen_by_a.text
    assert "<script>alert(1)</script>" not in seen_by_a.text  # escaped, never markup
    assert "&lt;script&gt;" in seen_by_a.text
    assert seen_by_b.status_code == 200
    assert unique not in seen_by_b.text


async def test_a_duty_officer_cannot_open_the_review_page(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    response = await browser.get("/web/enquiries")
    assert response.status_code == 403
    assert "<table" not in response.text


def _answer(page: httpx.Response) -> str:
    found = re.search(r'<section class="answer[^"]*".*?</section>', page.text, re.S)
    assert found is not None, page.text
    return found.group(0)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.parametrize(
    ("fields", "css", "symbol", "words"),
    [
        ({"nhs_number": NHS["neglect"]}, "on_plan", "\u26a0", "On a child protection plan"),
        ({"nhs_number": NHS["never"]}, "not_on_plan", "\u25cb", "Not on a child protection plan"),
        (
            {"given_name": "Ruby", "family_name": "Shah", "date_of_birth": BORN["dup"].isoformat()},
            "refer_to_custodian",
            "\u260e",
            "Call before acting: the register cannot answer from these details",
        ),
    ],
)
async def test_each_answer_is_told_apart_by_words_symbol_and_colour(
    browser: httpx.AsyncClient,
    world: World,
    fields: dict[str, str],
    css: str,
    symbol: str,
    words: str,
) -> None:
    await _sign_in(browser, world, "duty_officer")
    answer = _answer(await _look_up(browser, **fields))
    assert f'class="answer {css}"' in answer
    assert f'<span class="symbol" aria-hidden="true">{symbol}</span> {words}' in answer
    others = [w for k, w in STATUS_WORDS.items() if k != css]
    assert not [w for w in others if w in answer]


STATUS_WORDS = {
    "on_plan": "On a child protection plan",
    "not_on_plan": "Not on a child protection plan",
    "refer_to_custodian": "Call before acting",
}


async def test_every_answer_says_whom_to_call_and_which_child_it_is_for(
    browser: httpx.AsyncClient, world: World, settings: Settings
) -> None:
    await _sign_in(browser, world, "duty_officer")
    on_plan = _text(_answer(await _look_up(browser, nhs_number=NHS["neglect"])))
    assert "Whom to call:" in on_plan
    assert "You asked about NHS number " + NHS["neglect"] in on_plan
    not_on_plan = _text(_answer(await _look_up(browser, nhs_number=NHS["never"])))
    assert f"Whom to call: {settings.duty_contact_name}" in not_on_plan
    assert settings.duty_contact_phone in not_on_plan
    assert NHS["never"] in not_on_plan
    # Only what was sent is shown back: no name or date of birth from the register.
    assert "Given name" not in on_plan
    assert "Date of birth" not in on_plan


async def test_the_date_of_birth_asked_about_is_shown_dd_mm_yyyy(
    browser: httpx.AsyncClient, world: World
) -> None:
    """The date the officer typed (the date field sends it as YYYY-MM-DD) is shown back
    as people here read it."""
    await _sign_in(browser, world, "duty_officer")
    born = BORN["dup"]
    answer = _text(
        _answer(
            await _look_up(
                browser, given_name="Ruby", family_name="Shah", date_of_birth=born.isoformat()
            )
        )
    )
    assert f"Date of birth {born.strftime('%d/%m/%Y')}" in answer
    assert born.isoformat() not in answer


async def test_a_reason_too_short_says_so_not_that_it_is_missing(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    short = await _look_up(browser, nhs_number=NHS["neglect"], reason="xy")
    assert short.status_code == 422
    field = re.search(r'<p class="field-error" id="reason-error">(.*?)</p>', short.text, re.S)
    assert field is not None, short.text
    assert "Too short: at least 3 characters" in field.group(1)
    assert "This is needed" not in field.group(1)
    assert ">xy</textarea>" in short.text  # what was typed, kept
    empty = await _look_up(browser, nhs_number=NHS["neglect"], reason="")
    assert empty.status_code == 422
    assert "This is needed" in empty.text


async def test_categories_are_shown_in_words(browser: httpx.AsyncClient, world: World) -> None:
    await _sign_in(browser, world, "duty_officer")
    answer = _answer(await _look_up(browser, nhs_number=NHS["multi"]))
    assert "_abuse" not in answer
    assert re.search(r"<li>(Physical|Emotional|Sexual) abuse</li>", answer), answer


async def test_an_unborn_babys_plan_is_said_to_be_held_against_the_person_asked_about(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    answer = _text(_answer(await _look_up(browser, nhs_number=NHS["mother"])))
    assert "Unborn baby on a child protection plan" in answer
    assert "Unborn baby: plan held against the person you asked about" in answer
    neglect = _text(_answer(await _look_up(browser, nhs_number=NHS["neglect"])))
    assert "Unborn" not in neglect


async def test_a_refusal_says_whom_to_call(
    browser: httpx.AsyncClient, world: World, settings: Settings
) -> None:
    await _sign_in(browser, world, "duty_officer")
    response = await _look_up(browser, nhs_number=NHS["neglect"], purpose="unscheduled_care")
    assert response.status_code == 403
    assert settings.duty_contact_phone in response.text
    assert 'id="purpose-error"' in response.text


async def test_an_outage_page_says_whom_to_call_and_keeps_the_form(
    browser: httpx.AsyncClient,
    world: World,
    settings: Settings,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _sign_in(browser, world, "duty_officer")
    page = await browser.get("/web/lookup")
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await browser.post(
            "/web/lookup",
            data={
                "csrf_token": _csrf(page),
                "nhs_number": NHS["neglect"],
                "purpose": "out_of_hours_referral",
                "reason": REASON,
            },
        )
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text
    assert settings.duty_contact_phone in response.text
    assert f'value="{NHS["neglect"]}"' in response.text
    assert "On a child protection plan" not in response.text


async def test_only_the_organisations_own_purposes_are_offered_its_own_selected(
    browser: httpx.AsyncClient, world: World, settings: Settings
) -> None:
    await _sign_in(browser, world, "duty_officer")
    page = await browser.get("/web/lookup")
    offered = re.findall(r'<option value="([a-z_]+)"( selected)?>', page.text)
    allowed = settings.purposes_by_kind["out_of_hours_social_care"]
    assert {value for value, _ in offered} == allowed
    assert [value for value, selected in offered if selected] == ["out_of_hours_referral"]
    assert offered[0][0] == "out_of_hours_referral"
    assert ">Out of hours referral</option>" in page.text


async def test_a_field_error_is_shown_beside_its_field_in_plain_words_with_the_value_kept(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    wrong = "9991000012"  # the check digit is wrong
    response = await _look_up(browser, nhs_number=wrong)
    assert response.status_code == 422
    assert "→" not in response.text
    assert "Value error" not in response.text
    field = re.search(
        r'<p class="field-error" id="nhs_number-error">(.*?)</p>\s*<input[^>]*>',
        response.text,
        re.S,
    )
    assert field is not None, response.text
    assert 'id="nhs_number"' in field.group(0)
    assert 'aria-describedby="nhs_number-error"' in field.group(0)
    assert 'aria-invalid="true"' in field.group(0)
    assert "autofocus" in field.group(0)  # focus starts in the field to put right
    assert f'value="{wrong}"' in field.group(0)
    assert "NHS number" in field.group(1)
    assert 'href="#nhs_number"' in response.text  # the summary links to the field
    assert f">{REASON}</textarea>" in response.text


async def test_an_ended_session_keeps_what_was_typed_through_sign_in(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    page = await browser.get("/web/lookup")
    browser.cookies.delete("cpr_session")  # the session's 15 minutes are up
    typed = {"nhs_number": NHS["neglect"], "purpose": "safeguarding_concern", "reason": REASON}
    ended = await browser.post("/web/lookup", data={"csrf_token": _csrf(page), **typed})
    assert ended.status_code == 401
    assert (
        "Your session ended after 15 minutes; sign in again. What you typed is kept." in ended.text
    )
    assert f'name="carry_nhs_number" value="{NHS["neglect"]}"' in ended.text
    # Kept in the page only: in no cookie (the ended session's is cleared).
    assert not [c for c in ended.headers.get_list("set-cookie") if NHS["neglect"] in c]
    assert all("cpr_session=" not in c or '=""' in c for c in ended.headers.get_list("set-cookie"))
    carried = dict(re.findall(r'name="(carry_[a-z_]+)" value="([^"]*)"', ended.text))
    credentials = world["duty_officer"].credentials
    back = await browser.post(
        "/web/sign-in",
        data={
            "csrf_token": _csrf(ended),
            "username": credentials["username"],
            "password": credentials["password"],
            **carried,
        },
    )
    assert back.status_code == 200
    assert browser.cookies.get("cpr_session")
    assert f'value="{NHS["neglect"]}"' in back.text
    assert '<option value="safeguarding_concern" selected>' in back.text
    assert f">{REASON}</textarea>" in back.text
    assert "Sign out" in back.text
    # Nothing was looked up on the way; pressing Look up now answers.
    assert 'id="answer"' not in back.text
    answer = await browser.post("/web/lookup", data={"csrf_token": _csrf(back), **typed})
    assert "On a child protection plan" in answer.text


async def test_signing_out_says_so(browser: httpx.AsyncClient, world: World) -> None:
    await _sign_in(browser, world, "duty_officer")
    page = await browser.get("/web/lookup")
    response = await browser.post("/web/sign-out", data={"csrf_token": _csrf(page)})
    assert response.status_code == 303
    signed_out = await browser.get(response.headers["location"])
    assert "You have signed out" in signed_out.text
    assert browser.cookies.get("cpr_session") is None


async def test_an_unknown_web_page_is_an_html_page_not_json(
    browser: httpx.AsyncClient, settings: Settings
) -> None:
    response = await browser.get("/web/nonexistent")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Page not found" in response.text
    assert settings.duty_contact_phone in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    wrong_method = await browser.put("/web/lookup")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"].startswith("text/html")
    # The API keeps its problem documents.
    api = await browser.get("/v1/nonexistent")
    assert api.headers["content-type"].startswith("application/problem+json")


async def test_an_expired_form_is_a_page_that_keeps_the_form(
    browser: httpx.AsyncClient, world: World
) -> None:
    await _sign_in(browser, world, "duty_officer")
    typed = {"nhs_number": NHS["neglect"], "purpose": "out_of_hours_referral", "reason": REASON}
    response = await browser.post("/web/lookup", data={"csrf_token": "stale", **typed})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "This form has expired" in response.text
    assert "Please try again" in response.text
    assert f'value="{NHS["neglect"]}"' in response.text
    assert f">{REASON}</textarea>" in response.text
    again = await browser.post("/web/lookup", data={"csrf_token": _csrf(response), **typed})
    assert "On a child protection plan" in again.text
