"""The web client in a real browser (Debian's Chromium, driven by Selenium): every page
and state passes axe-core's WCAG 2.2 AA rules at 100 % and 200 % zoom, reflows without
sideways scrolling, and is saved to docs/screenshots/ (tests/browser.py); the duty
officer's and the custodian's journeys work by keyboard alone with focus always seen;
and the browser reports no Content Security Policy violation on the way.

A new page that one GET shows: one line in PAGES. A state that takes more steps: a
journey that brings the browser there, then ``audit(driver, "page-state")``.
"""

import tempfile
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_organisation, create_user
from app.config import Settings
from app.identity.models import OrganisationKind, UserRole
from app.register.models import Category
from app.register.schemas import EntryCreate
from app.register.service import Actor, create_entry
from app.web.pages import CUSTODIAN_NAV
from tests.browser import (
    audit,
    drive,
    focused,
    loads,
    press,
    sign_in,
    tab_order,
    text,
    to_top,
)
from tests.conftest import ACTOR, BORN, NHS, World, person
from tests.enquiries import fresh_nhs
from tests.faults import audit_log_unwritable
from tests.test_lookup import ask

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
# On SQLite only: the pages are the same on either database (tests/test_web.py runs the
# web client on both), and one run keeps `make test` short.
pytestmark = [
    pytest.mark.xdist_group("processes"),
    pytest.mark.parametrize("backend", ["sqlite"], indirect=True),
]

REASON = "child brought to the duty desk at 02:10"


@dataclass(frozen=True)
class Page:
    """A page one GET away: its screenshot's name, its path, who signs in first (a
    principal of tests/conftest.py's world; None: nobody) and words it must show."""

    name: str
    path: str
    who: str | None = None
    shows: str = ""


# Each page as it is opened; the states that take steps are the journeys further down.
PAGES = [
    Page("sign-in", "/web/sign-in", None, "Sign in"),
    Page("lookup-form", "/web/lookup", "duty_officer", "Is this child on a plan?"),
    Page("lookup-not-a-reference-point", "/web/lookup", "custodian_a", "not a reference point"),
    Page(
        "enquiries-not-a-custodian",
        "/web/enquiries",
        "duty_officer",
        "Only custodians can open this page",
    ),
    Page("not-found", "/web/nope", None, "Page not found"),
    Page("not-found-signed-in", "/web/nope", "custodian_a", "Sign out"),
]


def _open(driver: Any, url: str, page: Page, credentials: dict[str, str] | None) -> None:
    if credentials is not None:
        sign_in(driver, url, credentials)
        assert "Sign out" in text(driver), text(driver)
    driver.get(url + page.path)
    assert page.shows in text(driver), text(driver)
    audit(driver, page.name)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
async def test_each_page_is_accessible_and_seen(
    chromium: Any, site: str, world: World, page: Page
) -> None:
    credentials = world[page.who].credentials if page.who else None
    await drive(_open, chromium, site, page, credentials)
    assert not _csp_violations(chromium)


def _csp_violations(driver: Any) -> list[str]:
    console = [entry["message"] for entry in driver.get_log("browser")]
    return [line for line in console if "Content Security Policy" in line]


def _fill(driver: Any, **fields: str) -> None:
    """Type into the lookup form (the date is set as its value: typing one depends on
    the browser's locale) and press the button."""
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        field = driver.find_element(By.ID, name)
        if name == "date_of_birth":
            driver.execute_script("arguments[0].value = arguments[1]", field, value)
        elif name == "purpose":
            # A purpose the page does not offer, as a tampered form would send it.
            driver.execute_script("arguments[0].options[0].value = arguments[1]", field, value)
        else:
            field.clear()
            field.send_keys(value)
    with loads(driver):
        driver.find_element(By.CSS_SELECTOR, "form[action='/web/lookup'] button").click()


def _lookups(driver: Any, url: str, credentials: dict[str, str]) -> None:
    sign_in(driver, url, credentials)
    by_names = {
        "given_name": "Ruby",
        "family_name": "Shah",
        "date_of_birth": BORN["dup"].isoformat(),
    }
    answers: list[tuple[str, dict[str, str], list[str]]] = [
        ("lookup-on-plan", {"nhs_number": NHS["multi"]}, ["Emotional abuse", "Neglect"]),
        ("lookup-not-on-plan", {"nhs_number": NHS["never"]}, ["Not on a child protection plan"]),
        ("lookup-unborn", {"nhs_number": NHS["mother"]}, ["Unborn baby on a child protection"]),
        ("lookup-call-first", by_names, ["Call before acting"]),
        ("lookup-field-error", {"nhs_number": "1234567890"}, ["Check the details"]),
        ("lookup-refused", {"nhs_number": NHS["neglect"], "purpose": "unscheduled_care"}, []),
    ]
    for name, subject, words in answers:
        driver.get(f"{url}/web/lookup")
        _fill(driver, **subject, reason=REASON)
        body = text(driver)
        assert all(word in body for word in words), (name, body)
        # A refusal says so first, in the window's title too (WCAG 2.4.2, 3.3.1).
        assert driver.title.startswith("Error: ") == ("refused" in name or "error" in name)
        audit(driver, name)
    assert "This purpose is not open to your organisation" in text(driver)

    # The form left open past its token (its cookie gone): offered again, kept.
    driver.get(f"{url}/web/lookup")
    driver.delete_cookie("cpr_csrf")
    _fill(driver, nhs_number=NHS["neglect"], reason=REASON)
    assert "This form has expired" in text(driver)
    audit(driver, "lookup-form-expired")

    # The session ended while the form was open: sign in again, what was typed kept.
    driver.get(f"{url}/web/lookup")
    driver.delete_cookie("cpr_session")
    _fill(driver, nhs_number=NHS["neglect"], reason=REASON)
    assert "Your session ended" in text(driver)
    audit(driver, "session-ended")


async def test_every_answer_and_refusal_is_accessible_and_seen(
    chromium: Any, site: str, world: World
) -> None:
    await drive(_lookups, chromium, site, world["duty_officer"].credentials)
    assert not _csp_violations(chromium)


def _sign_in_refusals(driver: Any, url: str, username: str) -> None:
    wrong = {"username": username, "password": "not the password"}
    sign_in(driver, url, wrong)
    assert "Wrong username or password" in text(driver)
    audit(driver, "sign-in-wrong-password")
    sign_in(driver, url, wrong)
    assert "Too many failed attempts" in text(driver)
    audit(driver, "sign-in-locked")


async def test_a_refused_sign_in_is_accessible_and_seen(chromium: Any, settings: Settings) -> None:
    from tests.test_cli_lookup import serve

    # Locked out after one failure (not five: each costs a password hash), on a name of
    # this run's own, so that nobody else's sign-in is locked out.
    async with serve(settings, login_failures_before_lockout=1) as strict:
        await drive(_sign_in_refusals, chromium, strict, f"a.duty.officer.{uuid.uuid4().hex[:6]}")


def _outage(driver: Any, url: str, credentials: dict[str, str], start: Any, stop: Any) -> None:
    sign_in(driver, url, credentials)
    driver.get(f"{url}/web/lookup")
    start()
    try:
        _fill(driver, nhs_number=NHS["neglect"], reason=REASON)
        assert "Service unavailable" in text(driver) or "cannot" in text(driver)
        audit(driver, "lookup-unavailable")
        driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        sign_in(driver, url, credentials)
        assert "Service unavailable" in text(driver)
        audit(driver, "sign-in-unavailable")
    finally:
        stop()


async def test_an_outage_is_accessible_and_seen(
    chromium: Any,
    site: str,
    world: World,
    admin_sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    fault = audit_log_unwritable(admin_sessionmaker, settings)

    def start() -> None:
        asyncio.run_coroutine_threadsafe(fault.__aenter__(), loop).result(30)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(fault.__aexit__(None, None, None), loop).result(30)

    await drive(_outage, chromium, site, world["duty_officer"].credentials, start, stop)


async def _own_authority(
    sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient, world: World
) -> dict[str, str]:
    """An authority of the test's own, with one child on a plan that the duty officer
    has asked about twice: its custodian's page shows those and nothing else."""
    password = uuid.uuid4().hex
    today = date.today()
    async with sessionmaker() as session:
        authority = create_organisation(
            session,
            actor=ACTOR,
            kind=OrganisationKind.local_authority,
            name=f"Test authority_c {uuid.uuid4().hex[:6]}",
            ods_code=None,
            contact_name="authority_c safeguarding",
            contact_phone="020 7946 0103",
        )
        await session.flush()
        user = create_user(
            session,
            actor=ACTOR,
            organisation=authority,
            username=f"custodian_c-{uuid.uuid4().hex[:6]}",
            full_name="Test custodian_c",
            role=UserRole.custodian,
            password=password,
        )
        # A family name of the run's own (letters only): no other test's child matches.
        family = "Okafor-" + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:8])
        child = person(None, "Nia", family.title(), BORN["dup"])
        entry = EntryCreate(
            child=child,
            categories=[Category.neglect],
            plan_start=today - timedelta(days=40),
            lead_professional="Lead Professional Name",
        )
        created = create_entry(session, actor=Actor(ACTOR), authority_id=authority.id, data=entry)
        await session.commit()
        username = user.username
    subject = {
        "given_name": child.given_name,
        "family_name": child.family_name,
        "date_of_birth": child.date_of_birth.isoformat(),
    }
    for reason in ("child brought to the duty desk at 02:10", "call from the police at 03:40"):
        response = await ask(client, world, subject, "duty_officer", reason=reason)
        assert response.status_code == 200, response.text
    return {"username": username, "password": password, "entry_id": str(created.id)}


def _custodian_by_keyboard(driver: Any, url: str, credentials: dict[str, str]) -> list[str]:
    from selenium.webdriver.common.keys import Keys

    sign_in(driver, url, credentials)  # by keyboard: typing, Tab, Enter
    assert driver.current_url.endswith("/web/enquiries")
    assert "call from the police at 03:40" in text(driver)
    audit(driver, "enquiries")
    stops = tab_order(driver)
    # Every custodian page by the navigation bar, by keyboard alone: Tab to its link
    # (skip link, Sign out, then the links in order), Enter.
    for number, (path, label) in enumerate(CUSTODIAN_NAV):
        if path in ("/web/register", "/web/enquiries"):
            continue
        to_top(driver)
        press(driver, *[Keys.TAB] * (3 + number))
        assert focused(driver)["text"] == label  # type: ignore[index]
        press(driver, Keys.ENTER, page=True)
        assert driver.current_url.endswith(path), driver.current_url
        audit(driver, path.removeprefix("/web/"))
    return stops


async def test_a_custodian_reaches_the_enquiries_by_keyboard(
    chromium: Any,
    site: str,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
) -> None:
    credentials = await _own_authority(sessionmaker, client, world)
    stops = await drive(_custodian_by_keyboard, chromium, site, credentials)
    nav = [f"a:{label}" for _, label in CUSTODIAN_NAV]
    assert stops[:8] == ["a:Skip to main content", "button:Sign out", *nav]
    assert not _csp_violations(chromium)


def _duty_officer_by_keyboard(driver: Any, url: str, credentials: dict[str, str]) -> dict[str, Any]:
    """Sign in, ask, read the answer and sign out with Tab, Shift+Tab, Enter and typing."""
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{url}/web/sign-in")
    assert tab_order(driver) == [
        "a:Skip to main content",
        "input#username",
        "input#password",
        "button:Sign in",
    ]
    sign_in(driver, url, credentials)
    assert driver.current_url.endswith("/web/lookup")
    assert focused(driver)["id"] == "nhs_number"  # type: ignore[index]
    assert tab_order(driver) == [
        "a:Skip to main content",
        "button:Sign out",
        "input#nhs_number",
        "input#given_name",
        "input#family_name",
        "input#date_of_birth",
        "select#purpose",
        "textarea#reason",
        "button:Look up",
    ]
    # The skip link, first of all, goes past the header to the form.
    to_top(driver)
    assert press(driver, Keys.TAB)["text"] == "Skip to main content"
    press(driver, Keys.ENTER, moves=False)
    assert press(driver, Keys.TAB)["id"] == "nhs_number"

    driver.get(f"{url}/web/lookup")
    assert focused(driver)["id"] == "nhs_number"  # type: ignore[index]
    press(driver, NHS["neglect"], Keys.ENTER)
    # The reason is required: the browser stops the form and moves focus there.
    assert focused(driver)["id"] == "reason"  # type: ignore[index]
    press(driver, REASON)
    assert press(driver, Keys.SHIFT, Keys.TAB)["id"] == "purpose"
    press(driver, "Out of hours")
    assert press(driver, Keys.TAB)["id"] == "reason"
    assert press(driver, Keys.TAB)["tag"] == "button"
    press(driver, Keys.ENTER, page=True)

    # The answer has focus, so it is read first; then the number to call.
    answer = focused(driver)
    assert answer is not None
    assert answer["id"] == "answer", answer
    shown = text(driver)
    assert press(driver, Keys.TAB)["tag"] == "a"  # the phone number: a link to call
    audit(driver, "lookup-answer", screenshot=False)  # the same page as lookup-on-plan

    # Back to the top by keyboard, then Sign out.
    for _ in range(10):
        if press(driver, Keys.SHIFT, Keys.TAB)["text"] == "Sign out":
            break
    press(driver, Keys.ENTER, page=True)
    assert "You have signed out" in text(driver)
    audit(driver, "signed-out")
    return {"answer": shown}


async def test_a_duty_officer_looks_up_a_child_by_keyboard_alone(
    chromium: Any, site: str, world: World
) -> None:
    seen = await drive(_duty_officer_by_keyboard, chromium, site, world["duty_officer"].credentials)
    assert "On a child protection plan" in seen["answer"]
    assert "Neglect" in seen["answer"]  # the category in words
    assert "Whom to call" in seen["answer"]
    assert not _csp_violations(chromium)


def _register_pages(driver: Any, url: str, credentials: dict[str, str]) -> None:
    """The custodian's register pages, each as it opens, and a form sent empty."""
    from selenium.webdriver.common.by import By

    entry = credentials["entry_id"]
    sign_in(driver, url, credentials)
    driver.get(f"{url}/web/register")
    assert "Nia" in text(driver), text(driver)
    audit(driver, "register")
    for suffix, name in (
        ("", "register-entry"),
        ("/change", "register-change"),
        ("/review", "register-review"),
        ("/end", "register-end"),
    ):
        driver.get(f"{url}/web/register/{entry}{suffix}")
        audit(driver, name)
    driver.get(f"{url}/web/register/new")
    audit(driver, "register-new")
    # Sent empty: each error beside its field, and a summary linking to them.
    with loads(driver):
        driver.find_element(By.CSS_SELECTOR, "main form[action='/web/register/new'] button").click()
    assert "There is a problem" in text(driver) or "This is needed" in text(driver), text(driver)
    audit(driver, "register-new-errors")
    driver.get(f"{url}/web/register/import")
    audit(driver, "register-import")
    # A file imported: the notice, with the file's 64-hex fingerprint, reflows at 400 %.
    plan_start = (date.today() - timedelta(days=7)).strftime("%d/%m/%Y")
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as csv_file:
        csv_file.write(
            "child_nhs_number,child_given_name,child_family_name,child_date_of_birth,"
            f"categories,plan_start\n{fresh_nhs()},Imogen,Browserimport,05/06/2019,"
            f"Neglect,{plan_start}\n"
        )
    try:
        driver.find_element(By.ID, "file").send_keys(csv_file.name)
        with loads(driver):
            driver.find_element(
                By.CSS_SELECTOR, "main form[action='/web/register/import'] button"
            ).click()
    finally:
        Path(csv_file.name).unlink()
    assert "1 entry imported" in text(driver), text(driver)
    audit(driver, "register-import-done")


async def test_the_register_pages_are_accessible_and_seen(
    chromium: Any,
    site: str,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
) -> None:
    credentials = await _own_authority(sessionmaker, client, world)
    await drive(_register_pages, chromium, site, credentials)
    assert not _csp_violations(chromium)
