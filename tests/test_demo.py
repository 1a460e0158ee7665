"""The demo that `make run` bootstraps answers as the README says, for every demo role."""

from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.demo import bootstrap, years_ago
from app.register.models import RegisterEntry
from tests.conftest import World

ENQUIRER = {"id": "C123456", "name": "Dr A Jones", "role": "ED registrar"}
ANSWER_KEYS = {
    "on_plan": {"lookup_id", "status", "categories", "unborn", "contact"},
    "not_on_plan": {"lookup_id", "status", "contact"},
    "refer_to_custodian": {"lookup_id", "status", "contact"},
}


@pytest.fixture(scope="session")
async def demo(sessionmaker: async_sessionmaker[AsyncSession], world: World) -> dict[str, Any]:
    """The demo bootstrapped twice (``world`` has made the signing key)."""
    async with sessionmaker() as session:
        first = await bootstrap(session, {})
    async with sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(RegisterEntry))
    async with sessionmaker() as session:
        second = await bootstrap(session, first)
    async with sessionmaker() as session:
        again = await session.scalar(select(func.count()).select_from(RegisterEntry))
    return {"credentials": first, "rerun": second, "entries": (count, again)}


async def _token(client: httpx.AsyncClient, credentials: dict[str, str]) -> str:
    if "client_id" in credentials:
        data = {"grant_type": "client_credentials"}
        auth = (credentials["client_id"], credentials["client_secret"])
        response = await client.post("/oauth/token", data=data, auth=auth)
    else:
        data = {
            "grant_type": "password",
            "username": credentials["username"],
            "password": credentials["password"],
        }
        response = await client.post("/oauth/token", data=data)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def test_bootstrap_is_idempotent(demo: dict[str, Any]) -> None:
    assert demo["rerun"] == demo["credentials"]
    first, again = demo["entries"]
    assert first == again


def _sam_taylor_born() -> str:
    return (years_ago(date.today(), 5) - timedelta(days=100)).isoformat()


README_TABLE = [
    ({"nhs_number": "9990000018"}, "on_plan", ["neglect"], False),
    ({"nhs_number": "9990000298"}, "on_plan", ["neglect", "emotional_abuse"], False),
    ({"nhs_number": "9990000646"}, "on_plan", ["neglect"], True),
    ({"nhs_number": "9990000719"}, "not_on_plan", None, None),
    ({"nhs_number": "9990000786"}, "not_on_plan", None, None),
    ({"nhs_number": "9990001901"}, "not_on_plan", None, None),
    (
        {"given_name": "Sam", "family_name": "Taylor", "date_of_birth": "SAM"},
        "refer_to_custodian",
        None,
        None,
    ),
    ({"nhs_number": "9990000018", "given_name": "Oliver"}, "refer_to_custodian", None, None),
]


@pytest.mark.parametrize(
    ("role", "purpose"),
    [
        ("emergency_department_client", "unscheduled_care"),
        ("police_client", "police_investigation"),
        ("duty_officer", "out_of_hours_referral"),
    ],
)
async def test_each_demo_role_gets_the_readme_answers_and_nothing_more(
    client: httpx.AsyncClient, demo: dict[str, Any], role: str, purpose: str
) -> None:
    credentials = demo["credentials"][role]
    headers = {"Authorization": f"Bearer {await _token(client, credentials)}"}
    for subject, status, categories, unborn in README_TABLE:
        if subject.get("date_of_birth") == "SAM":
            subject = {**subject, "date_of_birth": _sam_taylor_born()}
        body: dict[str, Any] = {"subject": subject, "purpose": purpose, "reason": "demo check"}
        if "client_id" in credentials:
            body["enquirer"] = ENQUIRER
        response = await client.post("/v1/lookups", json=body, headers=headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == ANSWER_KEYS[status], subject
        assert answer["status"] == status, subject
        assert answer.get("categories") == categories
        assert answer.get("unborn") == unborn
