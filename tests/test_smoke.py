"""The slice end to end: a token from /oauth/token, a lookup, an answer."""

import httpx

from tests.conftest import NHS, World


async def test_hospital_finds_child_on_plan(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post(
        "/v1/lookups",
        headers=world["hospital_client"].headers,
        json={
            "subject": {"nhs_number": NHS["neglect"]},
            "purpose": "unscheduled_care",
            "reason": "attended ED with unexplained bruising",
            "enquirer": {"id": "C123456", "name": "Dr A Jones", "role": "ED registrar"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "on_plan"
    assert response.json()["categories"] == ["neglect"]
