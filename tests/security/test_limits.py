"""Enumeration and brute force: volume limits on lookups, lockout on sign-in.

Limits are counted in the shared database, so a second app instance (another
replica) over the same database sees the same counts.
"""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

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
from tests.conftest import NHS, World

VALID_UNKNOWN_NHS = ["9990001901", "9990001979", "9990002045"]


@pytest.fixture(scope="session")
async def replicas(settings: Settings) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    """Two app instances over one database, with small limits."""
    small = settings.model_copy(
        update={
            "lookup_limit_per_enquirer": 3,
            "lookup_limit_per_client": 5,
            "login_failures_before_lockout": 3,
        }
    )
    first, second = create_app(small), create_app(small)
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        yield first, second


def _http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _fresh_client(
    sessionmaker: async_sessionmaker[AsyncSession], world: World, app: FastAPI
) -> dict[str, str]:
    async with sessionmaker() as session:
        client, secret = create_client(
            session,
            actor="test",
            organisation=world.orgs["hospital"],
            name=f"limits {uuid.uuid4().hex[:6]}",
            scopes=frozenset({Scope.lookup}),
        )
        await session.commit()
    async with _http(app) as http:
        response = await http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client.id, secret)
        )
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _lookup(nhs: str, enquirer: str) -> dict[str, object]:
    return {
        "subject": {"nhs_number": nhs},
        "purpose": "unscheduled_care",
        "reason": "enumeration attempt",
        "enquirer": {"id": enquirer, "name": "Someone", "role": "clerk"},
    }


async def _event(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    return event


async def test_enquirer_past_the_limit_gets_429_across_replicas_and_is_audited(
    replicas: tuple[FastAPI, FastAPI],
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, second = replicas
    headers = await _fresh_client(sessionmaker, world, first)
    async with _http(first) as a, _http(second) as b:
        for http, nhs in zip((a, b, a), VALID_UNKNOWN_NHS, strict=True):
            assert (
                await http.post("/v1/lookups", json=_lookup(nhs, "E1"), headers=headers)
            ).status_code == 200
        refused = await b.post(
            "/v1/lookups", json=_lookup(VALID_UNKNOWN_NHS[0], "E1"), headers=headers
        )
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["content-type"] == "application/problem+json"
    assert "categories" not in refused.text
    event = await _event(sessionmaker, refused)
    assert (event.outcome, event.refusal) == ("refused", "volume_limit_enquirer")


async def test_client_past_its_limit_is_refused_whoever_it_names(
    replicas: tuple[FastAPI, FastAPI],
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, _ = replicas
    headers = await _fresh_client(sessionmaker, world, first)
    async with _http(first) as http:
        for n in range(5):
            response = await http.post(
                "/v1/lookups", json=_lookup(VALID_UNKNOWN_NHS[0], f"N{n}"), headers=headers
            )
            assert response.status_code == 200
        refused = await http.post(
            "/v1/lookups", json=_lookup(VALID_UNKNOWN_NHS[0], "fresh"), headers=headers
        )
    assert refused.status_code == 429
    assert (await _event(sessionmaker, refused)).refusal == "volume_limit_client"


async def test_repeated_wrong_secrets_lock_the_client_out_even_with_the_right_one(
    replicas: tuple[FastAPI, FastAPI],
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, second = replicas
    async with sessionmaker() as session:
        client, secret = create_client(
            session,
            actor="test",
            organisation=world.orgs["police"],
            name=f"lockout {uuid.uuid4().hex[:6]}",
            scopes=frozenset({Scope.lookup}),
        )
        await session.commit()
    data = {"grant_type": "client_credentials"}
    async with _http(first) as a, _http(second) as b:
        for http in (a, b, a):
            wrong = await http.post("/oauth/token", data=data, auth=(client.id, "wrong"))
            assert wrong.status_code == 401
        locked = await b.post("/oauth/token", data=data, auth=(client.id, secret))
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert "access_token" not in locked.text
    assert (await _event(sessionmaker, locked)).event_type == "auth.login_locked"


async def test_unknown_usernames_lock_out_the_same_way(
    replicas: tuple[FastAPI, FastAPI],
) -> None:
    """Otherwise the lockout itself would tell an attacker which accounts exist."""
    first, _ = replicas
    data = {
        "grant_type": "password",
        "username": f"nobody-{secrets.token_hex(4)}",
        "password": "guess",
    }
    async with _http(first) as http:
        statuses = [(await http.post("/oauth/token", data=data)).status_code for _ in range(4)]
    assert statuses == [400, 400, 400, 429]


# --- exact under concurrency: a burst split between two replicas --------------------------


async def _burst(
    replicas: tuple[FastAPI, FastAPI], headers: dict[str, str], enquirers: list[str]
) -> list[int]:
    """Every lookup at once, alternating between the two instances."""
    first, second = replicas
    async with _http(first) as a, _http(second) as b:
        responses = await asyncio.gather(
            *(
                (a, b)[n % 2].post(
                    "/v1/lookups",
                    json=_lookup(VALID_UNKNOWN_NHS[n % 3], enquirer),
                    headers=headers,
                )
                for n, enquirer in enumerate(enquirers)
            )
        )
    return [response.status_code for response in responses]


async def test_a_burst_for_one_enquirer_gets_exactly_the_limit_across_replicas(
    replicas: tuple[FastAPI, FastAPI],
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Review found 31-46 of 50 answered under a limit of 30: each lookup counted
    before the burst's events were written. Counted under a lock, exactly the limit."""
    headers = await _fresh_client(sessionmaker, world, replicas[0])
    statuses = await _burst(replicas, headers, ["BURST"] * 20)
    assert statuses.count(200) == 3, statuses  # lookup_limit_per_enquirer
    assert set(statuses) == {200, 429}


async def test_a_burst_for_one_client_gets_exactly_its_limit_whoever_it_names(
    replicas: tuple[FastAPI, FastAPI],
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    headers = await _fresh_client(sessionmaker, world, replicas[0])
    statuses = await _burst(replicas, headers, [f"E{n}" for n in range(24)])
    assert statuses.count(200) == 5, statuses  # lookup_limit_per_client
    assert set(statuses) == {200, 429}


async def test_guessing_a_childs_date_of_birth_meets_the_per_client_probing_limit(
    settings: Settings, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Beside a known NHS number, a wrong date of birth answers refer_to_custodian and a
    right one on_plan: ~6,600 guesses confirmed a birthday. Referrals now count per
    client whatever enquirer it names, and past the limit the client is refused."""
    app = create_app(settings.model_copy(update={"lookup_probing_limit_per_client": 3}))
    async with app.router.lifespan_context(app):
        headers = await _fresh_client(sessionmaker, world, app)
        born = world.entries["neglect"].child_date_of_birth
        assert born is not None

        def guess(days: int, enquirer: str) -> dict[str, object]:
            body = _lookup(NHS["neglect"], enquirer)
            body["subject"] = {
                "nhs_number": NHS["neglect"],
                "given_name": "Amara",
                "family_name": "Quinn-Lowe",
                "date_of_birth": (born + timedelta(days=days)).isoformat(),
            }
            return body

        async with _http(app) as http:
            statuses = []
            for n in range(1, 5):
                response = await http.post(
                    "/v1/lookups", json=guess(n, f"invented-{n}"), headers=headers
                )
                statuses.append(response.status_code)
                if response.status_code == 200:
                    assert response.json()["status"] == "refer_to_custodian"
            # the right guess is refused too: the limit is the client's, not the guess's
            right = await http.post("/v1/lookups", json=guess(0, "invented-5"), headers=headers)
    assert statuses == [200, 200, 200, 429]
    assert right.status_code == 429
    assert "categories" not in right.text
    assert (await _event(sessionmaker, right)).refusal == "probing_limit_client"
