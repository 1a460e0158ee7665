"""Logs never carry a child's identifiers or a secret (app/logging.py): those belong in
the audit log only. What a request does leave is one JSON access line with its
request id and status, which the test requires too, so that it cannot pass by
capturing nothing."""

import json
import uuid
from typing import Any

import httpx
import pytest

from app.register.identifiers import normalise_name
from tests.conftest import BORN, NHS, World

GIVEN, FAMILY = "Amara", "Quinn-Lowe"  # the child on a plan for neglect (conftest)
BAD_NHS = "9991000012"  # fails the modulus 11 check


def _body(subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "subject": subject,
        "purpose": "unscheduled_care",
        "reason": "attended ED with unexplained bruising",
        "enquirer": {"id": f"L-{uuid.uuid4().hex[:10]}", "name": "Dr A Jones", "role": "registrar"},
    }


def _log_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            lines.append(record)
    return lines


async def test_logs_carry_no_identifiers_and_no_secrets(
    client: httpx.AsyncClient,
    world: World,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hospital, officer = world["hospital_client"], world["duty_officer"]
    capfd.readouterr()

    responses: list[httpx.Response] = []

    issued = await client.post("/oauth/token", data=hospital.credentials)
    assert issued.status_code == 200
    token = issued.json()["access_token"]
    responses.append(issued)
    user_issued = await client.post("/oauth/token", data=officer.credentials)
    assert user_issued.status_code == 200
    responses.append(user_issued)
    wrong_password = {**officer.credentials, "password": "Wr0ng-but-secret-" + uuid.uuid4().hex}
    refused_login = await client.post("/oauth/token", data=wrong_password)
    assert refused_login.status_code == 400
    responses.append(refused_login)

    headers = {"Authorization": f"Bearer {token}"}
    by_nhs = await client.post(
        "/v1/lookups", json=_body({"nhs_number": "999 100 0011"}), headers=headers
    )
    assert by_nhs.json()["status"] == "on_plan"
    by_names = await client.post(
        "/v1/lookups",
        json=_body(
            {
                "given_name": GIVEN,
                "family_name": FAMILY,
                "date_of_birth": BORN["neglect"].isoformat(),
            }
        ),
        headers=headers,
    )
    assert by_names.json()["status"] == "on_plan"
    invalid = await client.post(
        "/v1/lookups",
        json=_body({"nhs_number": BAD_NHS, "given_name": GIVEN, "family_name": FAMILY}),
        headers=headers,
    )
    assert invalid.status_code == 422
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    bad_token = await client.post(
        "/v1/lookups",
        json=_body({"nhs_number": NHS["neglect"]}),
        headers={"Authorization": f"Bearer {tampered}"},
    )
    assert bad_token.status_code == 401
    responses += [by_nhs, by_names, invalid, bad_token]

    out, err = capfd.readouterr()
    captured = out + err + caplog.text

    never = {
        "NHS number": NHS["neglect"],
        "NHS number as sent": "999 100 0011",
        "invalid NHS number": BAD_NHS,
        "given name": GIVEN,
        "family name": FAMILY,
        "normalised given name": normalise_name(GIVEN),
        "normalised family name": normalise_name(FAMILY),
        "date of birth": BORN["neglect"].isoformat(),
        "client secret": hospital.credentials["client_secret"],
        "password": officer.credentials["password"],
        "wrong password": wrong_password["password"],
        "access token": token,
        "access token signature": token.rsplit(".", 1)[1],
        "user access token": user_issued.json()["access_token"],
        "tampered token": tampered,
    }
    for what, value in never.items():
        assert value.casefold() not in captured.casefold(), f"the {what} was logged"

    lines = _log_lines(out)
    assert lines, f"no JSON log line captured: {out!r}"
    for response in responses:
        request_id = response.headers["x-request-id"]
        access = [line for line in lines if line.get("request_id") == request_id]
        assert access, f"no log line for request {request_id}"
        assert any(line.get("status") == response.status_code for line in access), access
