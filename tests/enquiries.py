"""Helpers for the custodian-side tests: fresh children, lookups, custodians of B.

The world is shared by every test of a database, so each test makes its own
children and names its own enquirers, and looks only at what it made.
"""

import secrets
import uuid
from datetime import date, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_user
from app.identity.models import Organisation, UserRole
from app.register.identifiers import nhs_number_check_digit_ok
from app.register.models import Category, RegisterEntry
from app.register.schemas import EntryCreate, Person
from app.register.service import Actor, create_entry
from tests.conftest import NHS, World

PURPOSE = {
    "hospital_client": "unscheduled_care",
    "police_client": "police_investigation",
    "duty_officer": "out_of_hours_referral",
}


# Numbers handed out in this test run: the 999 range has under a million valid ones,
# and a run asks for thousands, so random picks alone collided (a flaky "already
# registered" now and then). The databases are the run's own, so the run is the scope.
_ISSUED: set[str] = set(NHS.values())


def fresh_nhs() -> str:
    """A valid NHS number in the 999 test range that no other child of this run has."""
    while True:
        digits = "999" + "".join(secrets.choice("0123456789") for _ in range(6))
        for check in "0123456789":
            number = digits + check
            if nhs_number_check_digit_ok(number) and number not in _ISSUED:
                _ISSUED.add(number)
                return number


def enquirer_id() -> str:
    # Lower case: the service records an enquirer id case-folded (app/lookup/schemas.py),
    # so the id a test sends is the id it finds in events, alerts and notifications.
    return f"t{uuid.uuid4().hex[:12]}"


async def new_child(
    sessionmaker: async_sessionmaker[AsyncSession], authority: Organisation
) -> tuple[RegisterEntry, str]:
    """A child on a live plan of ``authority`` that no other test looks up."""
    nhs = fresh_nhs()
    given = "".join(secrets.choice("abcdefghij") for _ in range(8)).title()
    data = EntryCreate(
        child=Person(
            nhs_number=nhs,
            given_name=given,
            family_name="Testchild",
            date_of_birth=date.today() - timedelta(days=2000),
        ),
        categories=[Category.neglect],
        plan_start=date.today() - timedelta(days=10),
    )
    async with sessionmaker() as session:
        entry = create_entry(session, actor=Actor("test"), authority_id=authority.id, data=data)
        await session.commit()
    return entry, nhs


async def ask(
    client: httpx.AsyncClient,
    world: World,
    who: str,
    subject: dict[str, Any] | str,
    enquirer: str | None = None,
    *,
    purpose: str | None = None,
    name: str = "Dr Test",
) -> httpx.Response:
    """One lookup; ``subject`` is an NHS number or a subject object."""
    body: dict[str, Any] = {
        "subject": {"nhs_number": subject} if isinstance(subject, str) else subject,
        "purpose": purpose or PURPOSE[who],
        "reason": "test enquiry",
    }
    if who != "duty_officer":
        body["enquirer"] = {"id": enquirer or enquirer_id(), "name": name, "role": "registrar"}
    return await client.post("/v1/lookups", json=body, headers=world[who].headers)


async def custodian_of(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    organisation: Organisation,
) -> dict[str, str]:
    """Authorization headers of a new custodian user of ``organisation``."""
    username = f"custodian-{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    async with sessionmaker() as session:
        create_user(
            session,
            actor="test",
            organisation=organisation,
            username=username,
            full_name="Test Custodian",
            role=UserRole.custodian,
            password=password,
        )
        await session.commit()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": username, "password": password},
        )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def seal_and_notify(app: FastAPI) -> None:
    """What the background tasks do within a second, done now."""
    await app.state.sequencer.run_once()
    await app.state.notifier.run_once()
