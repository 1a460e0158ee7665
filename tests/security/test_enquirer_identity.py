"""Invented and disguised enquirers (issue 12, items 2 and 3).

A system client names the member of staff who asked; nothing but the client vouches
for that name. So the id is normalised before it is counted or recorded (a change of
case, width or surrounding space is the same enquirer; an invisible character is
refused), and probing is also counted per client, whatever enquirers it names.

Each test makes a system client of its own, so that its counts and alerts are its own.
"""

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_client
from app.audit.models import AuditEvent
from app.config import Settings
from app.identity.models import Scope
from app.main import create_app
from tests.conftest import World
from tests.enquiries import fresh_nhs, new_child

INVISIBLE = {
    "zero-width space": "\u200b",
    "zero-width non-joiner": "\u200c",
    "zero-width joiner": "\u200d",
    "word joiner": "\u2060",
    "right-to-left override": "\u202e",
    "left-to-right isolate": "\u2066",
    "soft hyphen": "\u00ad",
    "byte order mark": "\ufeff",
    "tag letter": "\U000e0041",
    "variation selector": "\ufe0f",
    "Hangul filler": "\u3164",
    "braille blank": "\u2800",
    "NUL": "\x00",
    "escape": "\x1b",
    "inner newline": "\n",
    "line separator": "\u2028",
    "private use": "\ue000",
}


@pytest.fixture(scope="module")
async def strict(settings: Settings) -> AsyncIterator[FastAPI]:
    """An app instance of its own with a per-enquirer limit of 3 and small client
    alert thresholds, over the same database."""
    app = create_app(
        settings.model_copy(
            update={
                "lookup_limit_per_enquirer": 3,
                "alert_client_not_found_threshold": 10,
                "alert_client_mismatch_threshold": 3,
            }
        )
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="module")
async def own_client(app: FastAPI, world: World) -> tuple[str, dict[str, str]]:
    """A system client of this module's own, so that its many refusals count towards
    no other test's per-client volume limit."""
    return await _system_client(app, world)


def _http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _system_client(
    app: FastAPI, world: World, organisation: str = "hospital"
) -> tuple[str, dict[str, str]]:
    """A new system client of the hospital: its principal and token headers."""
    async with app.state.sessionmaker() as session:
        client, secret = create_client(
            session,
            actor="test",
            organisation=world.orgs[organisation],
            name=f"identity {uuid.uuid4().hex[:6]}",
            scopes=frozenset({Scope.lookup}),
        )
        await session.commit()
    async with _http(app) as http:
        response = await http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client.id, secret)
        )
    assert response.status_code == 200, response.text
    return f"client:{client.id}", {"Authorization": f"Bearer {response.json()['access_token']}"}


def _body(
    subject: dict[str, Any] | str,
    enquirer_id: str,
    name: str = "Dr A Jones",
    role: str = "ED registrar",
) -> dict[str, Any]:
    return {
        "subject": {"nhs_number": subject} if isinstance(subject, str) else subject,
        "purpose": "unscheduled_care",
        "reason": "attended with unexplained bruising",
        "enquirer": {"id": enquirer_id, "name": name, "role": role},
    }


async def _event(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    async with sessionmaker() as session:
        [event] = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.request_id == response.headers["x-request-id"],
                    AuditEvent.event_type == "lookup",
                )
            )
        ).all()
    return event


def _staff_number() -> str:
    return "C" + "".join(secrets.choice("0123456789") for _ in range(9))


def _disguises(staff: str) -> list[str]:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in staff)  # fullwidth forms
    return [staff, staff.lower(), f"  {staff}\t", fullwidth]


async def _alerts(http: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await http.get("/v1/audit/alerts", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["alerts"]


def _of_client(alerts: list[dict[str, Any]], principal: str, kind: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["principal"] == principal and a["kind"] == kind]


# --- normalisation ----------------------------------------------------------------------


async def test_case_width_and_surrounding_space_are_one_enquirer_in_the_audit(
    app: FastAPI, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, headers = await _system_client(app, world)
    staff = _staff_number()
    async with _http(app) as http:
        for spelling in _disguises(staff):
            response = await http.post(
                "/v1/lookups",
                json=_body(
                    fresh_nhs(), spelling, name="  Dr\u00a0A  Jones ", role="\uff25\uff24 registrar"
                ),
                headers=headers,
            )
            assert response.status_code == 200, response.text
            event = await _event(sessionmaker, response)
            assert event.enquirer_id == staff.lower()
            # The name and role keep their case for display, NFKC and trimmed.
            assert event.enquirer == {
                "id": staff.lower(),
                "name": "Dr A Jones",
                "role": "ED registrar",
            }


async def test_the_enquirer_limit_counts_a_disguised_spelling_as_the_same_enquirer(
    strict: FastAPI, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, headers = await _system_client(strict, world)
    first, lower, spaced, fullwidth = _disguises(_staff_number())
    async with _http(strict) as http:
        for spelling in (first, lower, spaced):
            response = await http.post(
                "/v1/lookups", json=_body(fresh_nhs(), spelling), headers=headers
            )
            assert response.status_code == 200, response.text
        refused = await http.post(
            "/v1/lookups", json=_body(fresh_nhs(), fullwidth), headers=headers
        )
    assert refused.status_code == 429
    event = await _event(sessionmaker, refused)
    assert (event.outcome, event.refusal) == ("refused", "volume_limit_enquirer")
    assert event.enquirer_id == first.lower()


@pytest.mark.parametrize(
    ("field", "what"),
    [("id", what) for what in INVISIBLE]
    + [
        (field, what)
        for field in ("name", "role")
        for what in ("zero-width space", "right-to-left override", "NUL")
    ],
)
async def test_invisible_and_control_characters_are_refused_and_audited(
    client: httpx.AsyncClient,
    own_client: tuple[str, dict[str, str]],
    sessionmaker: async_sessionmaker[AsyncSession],
    field: str,
    what: str,
) -> None:
    staff = _staff_number()
    body = _body(fresh_nhs(), staff)
    secret_value = f"Q{uuid.uuid4().hex[:8]}"
    body["enquirer"][field] = f"{secret_value[:4]}{INVISIBLE[what]}{secret_value[4:]}"
    principal, headers = own_client
    response = await client.post("/v1/lookups", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["loc"] == ["enquirer", field]
    assert "invisible or control" in error["msg"]
    assert secret_value[:4] not in response.text
    assert secret_value[4:] not in response.text
    event = await _event(sessionmaker, response)
    assert (event.outcome, event.refusal) == ("refused", "invalid_request")
    assert event.principal == principal
    assert event.detail == {"errors": [error]}
    assert event.enquirer is None  # nothing unnormalised is recorded


async def test_surrounding_whitespace_is_trimmed_not_refused(
    client: httpx.AsyncClient,
    own_client: tuple[str, dict[str, str]],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    staff = _staff_number()
    response = await client.post(
        "/v1/lookups",
        json=_body(fresh_nhs(), f"\n {staff}\u3000\t"),
        headers=own_client[1],
    )
    assert response.status_code == 200, response.text
    assert (await _event(sessionmaker, response)).enquirer_id == staff.lower()


async def test_an_enquirer_id_of_only_whitespace_is_refused(
    client: httpx.AsyncClient, own_client: tuple[str, dict[str, str]]
) -> None:
    response = await client.post(
        "/v1/lookups",
        json=_body(fresh_nhs(), " \u3000 "),
        headers=own_client[1],
    )
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["errors"]] == [["enquirer", "id"]]


# --- probing counted per client --------------------------------------------------------


async def test_150_not_found_lookups_rotating_enquirers_every_5_raise_the_client_alert(
    app: FastAPI, world: World, settings: Settings
) -> None:
    """With the default settings: each invented enquirer stays under its own limit and
    its not-found alert, the client does not."""
    assert settings.alert_client_not_found_threshold <= 150
    principal, headers = await _system_client(app, world)
    enquirers = [_staff_number() for _ in range(30)]
    async with _http(app) as http:
        for n in range(150):
            response = await http.post(
                "/v1/lookups", json=_body(fresh_nhs(), enquirers[n // 5]), headers=headers
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "not_on_plan"
        for custodian in ("custodian_a", "custodian_b"):
            alerts = await _alerts(http, world[custodian].headers)
            # The per-enquirer alert is blind to it: five not-found answers each.
            assert not [
                a for a in alerts if a["kind"] == "not_found_spike" and a["principal"] == principal
            ]
            # Not-found answers belong to no authority: every custodian is told.
            [alert] = _of_client(alerts, principal, "client_probing")
            assert alert["count"] == 150
            assert alert["threshold"] == settings.alert_client_not_found_threshold
            assert "30 different enquirer ids" in alert["detail"]
            assert alert["enquirer"] is None
            assert alert["entry_id"] is None
            assert alert["organisations"] == [
                {"id": str(world.orgs["hospital"].id), "name": world.orgs["hospital"].name}
            ]


async def test_disguised_spellings_count_as_one_enquirer_in_the_not_found_alert(
    strict: FastAPI, world: World, settings: Settings
) -> None:
    """Four enquirers, each asking three times under three spellings (the limit here
    is 3 per enquirer): the client alert counts 12 answers to 4 enquirers, not 12."""
    principal, headers = await _system_client(strict, world)
    async with _http(strict) as http:
        for _ in range(4):
            for spelling in _disguises(_staff_number())[:3]:
                assert (
                    await http.post(
                        "/v1/lookups", json=_body(fresh_nhs(), spelling), headers=headers
                    )
                ).status_code == 200
        [alert] = _of_client(
            await _alerts(http, world["custodian_a"].headers), principal, "client_probing"
        )
    assert (alert["count"], alert["threshold"]) == (12, 10)
    assert "4 different enquirer ids" in alert["detail"]


async def test_a_client_below_the_not_found_threshold_raises_no_client_alert(
    strict: FastAPI, world: World
) -> None:
    principal, headers = await _system_client(strict, world)
    async with _http(strict) as http:
        for n in range(9):  # threshold 10
            response = await http.post(
                "/v1/lookups", json=_body(fresh_nhs(), f"R{n}"), headers=headers
            )
            assert response.status_code == 200
        alerts = await _alerts(http, world["custodian_a"].headers)
    assert [a for a in alerts if a["principal"] == principal] == []


async def test_mismatches_about_a_child_raise_the_client_alert_for_its_authority_only(
    strict: FastAPI,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Guessing a child's date of birth beside its NHS number: each wrong guess is
    referred to a custodian. Counted per client across invented enquirers, and shown
    only to the child's own authority, which may read those events anyway."""
    _entry, nhs = await new_child(sessionmaker, world.orgs["authority_a"])
    principal, headers = await _system_client(strict, world)
    quiet, quiet_headers = await _system_client(strict, world)
    born = date.today() - timedelta(days=2000)  # new_child's date of birth
    async with _http(strict) as http:
        for n in range(3):  # threshold 3
            guess = {"nhs_number": nhs, "date_of_birth": _wrong_birthday(born, n)}
            response = await http.post(
                "/v1/lookups", json=_body(guess, _staff_number()), headers=headers
            )
            assert response.json()["status"] == "refer_to_custodian", response.text
        for n in range(2):  # below the threshold
            guess = {"nhs_number": nhs, "date_of_birth": _wrong_birthday(born, n)}
            response = await http.post(
                "/v1/lookups", json=_body(guess, _staff_number()), headers=quiet_headers
            )
            assert response.json()["status"] == "refer_to_custodian"
        own = await _alerts(http, world["custodian_a"].headers)
        other = await _alerts(http, world["custodian_b"].headers)

    [alert] = _of_client(own, principal, "client_mismatch")
    assert (alert["count"], alert["threshold"]) == (3, 3)
    assert "3 different enquirer ids" in alert["detail"]
    assert alert["entry_id"] is None
    assert alert["enquirer"] is None
    assert _of_client(own, quiet, "client_mismatch") == []
    assert [a for a in other if a["principal"] == principal] == []


def _wrong_birthday(born: date, n: int) -> str:
    """The n-th wrong guess at a child's date of birth."""
    return (born - timedelta(days=1 + n)).isoformat()
