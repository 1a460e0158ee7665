"""FHIR R4 (/fhir/R4): the lookup as `Patient/$cp-lookup` through the same checks, limits
and audit event as POST /v1/lookups; refusals as OperationOutcome; custodians' enquiries
as AuditEvent. Every resource is validated with the fhir.resources (R4B) models."""

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.config import Settings
from tests.conftest import BORN, NHS, World
from tests.faults import audit_log_unwritable
from tests.security.test_token_attacks import Forge, forge, real_key  # noqa: F401 (fixtures)
from tests.test_cli_lookup import served  # noqa: F401 (a fixture)

FHIR = "application/fhir+json"
GOLDEN = Path(__file__).parent.parent / "docs" / "fhir"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PATH = "/fhir/R4/Patient/$cp-lookup"


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource, once the R4B models have parsed and validated it."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def parameters(
    nhs: str | None = None,
    *,
    purpose: str = "unscheduled_care",
    enquirer: bool = True,
    names: tuple[str, str, str] | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if nhs is not None:
        params.append(
            {"name": "nhsNumber", "valueIdentifier": {"system": NHS_SYSTEM, "value": nhs}}
        )
    if names is not None:
        params += [
            {"name": "given", "valueString": names[0]},
            {"name": "family", "valueString": names[1]},
            {"name": "birthDate", "valueDate": names[2]},
        ]
    params += [
        {"name": "purpose", "valueCode": purpose},
        {"name": "reason", "valueString": "attended ED with unexplained bruising"},
        {
            "name": "location",
            "valueIdentifier": {
                "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                "value": "RAL01",
            },
        },
    ]
    if enquirer:
        params.append(
            {
                "name": "practitioner",
                "part": [
                    {
                        "name": "id",
                        "valueIdentifier": {
                            "system": "https://fhir.nhs.uk/Id/sds-user-id",
                            "value": "555123456789",
                        },
                    },
                    {"name": "name", "valueString": "Dr A Jones"},
                    {
                        "name": "role",
                        "valueCoding": {
                            "system": "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode",
                            "code": "R8000",
                            "display": "Clinical Practitioner Access Role",
                        },
                    },
                ],
            }
        )
    params += extra or []
    return valid({"resourceType": "Parameters", "parameter": params})


async def lookup(
    client: httpx.AsyncClient, token: str | None, body: dict[str, Any] | bytes
) -> httpx.Response:
    headers = {"Content-Type": FHIR, "Accept": FHIR}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(PATH, content=content, headers=headers)
    assert response.headers["content-type"].startswith(FHIR), response.text
    valid(response.json())
    return response


def answer_of(bundle: dict[str, Any]) -> dict[str, Any]:
    observation, organization = (entry["resource"] for entry in bundle["entry"])
    return {
        "status": observation["valueCodeableConcept"]["coding"][0]["code"],
        "categories": [
            c["valueCodeableConcept"]["coding"][0]["code"]
            for c in observation.get("component", [])
            if c["code"]["coding"][0]["code"] == "category"
        ],
        "unborn": [
            c["valueBoolean"]
            for c in observation.get("component", [])
            if c["code"]["coding"][0]["code"] == "unborn"
        ],
        "contact": (organization["name"], organization["telecom"][0]["value"]),
        "lookup_id": observation["id"],
    }


def issue_code(response: httpx.Response) -> str:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome["issue"][0]["details"]["coding"][0]["code"]


async def event(sessionmaker: async_sessionmaker[AsyncSession], lookup_id: str) -> AuditEvent:
    async with sessionmaker() as session:
        found = await session.get(AuditEvent, uuid.UUID(lookup_id))
    assert found is not None
    return found


async def event_of_request(
    sessionmaker: async_sessionmaker[AsyncSession], response: httpx.Response
) -> AuditEvent:
    async with sessionmaker() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
            )
        ).all()
    assert len(events) == 1
    return events[0]


def golden(name: str, resource: dict[str, Any]) -> None:
    """docs/fhir/ is written from real responses when CPR_WRITE_FHIR_GOLDEN=1."""
    if os.environ.get("CPR_WRITE_FHIR_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        text = json.dumps(resource, indent=2, ensure_ascii=False) + "\n"
        (GOLDEN / f"{name}.json").write_text(text)


# --- the lookup ------------------------------------------------------------------------


async def test_metadata_is_a_public_capability_statement(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/R4/metadata")
    assert response.status_code == 200
    statement = valid(response.json())
    assert FHIR in statement["format"]
    rest = statement["rest"][0]
    assert rest["security"]["service"][0]["coding"][0]["code"] == "OAuth"
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["operation"][0]["name"] == "cp-lookup"
    golden("metadata", statement)


async def test_the_operation_is_defined(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/R4/OperationDefinition/Patient-cp-lookup")
    assert response.status_code == 200
    definition = valid(response.json())
    assert definition["code"] == "cp-lookup"
    golden("operationdefinition", definition)


async def test_category_code_system_is_published(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/R4/CodeSystem/cp-category")
    system = valid(response.json())
    assert {c["code"] for c in system["concept"]} == {
        "neglect",
        "physical_abuse",
        "sexual_abuse",
        "emotional_abuse",
    }
    missing = await client.get("/fhir/R4/CodeSystem/nope")
    assert missing.status_code == 404
    assert issue_code(missing) == "not_found"


async def test_on_plan_bundle_holds_need_to_know_only(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    request = parameters(NHS["multi"])
    response = await lookup(client, world["hospital_client"].token, request)
    assert response.status_code == 200, response.text
    bundle = response.json()
    answer = answer_of(bundle)
    assert answer["status"] == "on_plan"
    assert sorted(answer["categories"]) == ["emotional_abuse", "neglect"]
    assert answer["unborn"] == [False]
    assert answer["contact"] == ("authority_a safeguarding", "020 7946 0101")
    # Exactly these fields, nothing more: no names, dates, notes or identifiers.
    assert set(bundle) == {"resourceType", "identifier", "type", "entry"}
    observation, organization = (entry["resource"] for entry in bundle["entry"])
    assert set(observation) == {
        "resourceType",
        "id",
        "identifier",
        "status",
        "code",
        "valueCodeableConcept",
        "component",
        "performer",
    }
    assert set(organization) == {"resourceType", "name", "telecom"}
    text = response.text
    for secret in (
        "Zoë",
        "Dúbois",
        "custodian-only",
        "Lead Professional",
        BORN["multi"].isoformat(),
    ):
        assert secret not in text
    recorded = await event(sessionmaker, answer["lookup_id"])
    assert recorded.outcome == "on_plan"
    assert recorded.detail["channel"] == "fhir"
    assert recorded.detail["location"] == {"ods_code": "RAL01"}
    assert recorded.enquirer == {
        "id": "555123456789",
        "name": "Dr A Jones",
        "role": "Clinical Practitioner Access Role",
    }
    golden("parameters-request", request)
    golden("bundle-on-plan", bundle)


async def test_not_on_plan(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await lookup(client, world["hospital_client"].token, parameters(NHS["never"]))
    assert response.status_code == 200
    bundle = response.json()
    answer = answer_of(bundle)
    assert answer["status"] == "not_on_plan"
    assert answer["categories"] == []
    assert answer["unborn"] == []
    assert answer["contact"] == ("Test duty desk", "020 7946 0999")
    observation = bundle["entry"][0]["resource"]
    assert "component" not in observation
    recorded = await event(sessionmaker, answer["lookup_id"])
    assert recorded.outcome == "not_on_plan"
    assert recorded.detail["channel"] == "fhir"
    golden("bundle-not-on-plan", bundle)


async def test_unborn_child_plan_held_against_the_mother(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await lookup(client, world["hospital_client"].token, parameters(NHS["mother"]))
    answer = answer_of(response.json())
    assert answer["status"] == "on_plan"
    assert answer["categories"] == ["physical_abuse"]
    assert answer["unborn"] == [True]


async def test_by_names_and_birth_date(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    names = ("amara", "QUINN LOWE", BORN["neglect"].isoformat())
    response = await lookup(client, world["hospital_client"].token, parameters(names=names))
    assert response.status_code == 200, response.text
    answer = answer_of(response.json())
    assert answer["status"] == "on_plan"
    assert answer["categories"] == ["neglect"]
    assert (await event(sessionmaker, answer["lookup_id"])).detail["channel"] == "fhir"


async def test_json_and_fhir_answer_alike(client: httpx.AsyncClient, world: World) -> None:
    token = world["police_client"].token
    fhir = answer_of(
        (
            await lookup(client, token, parameters(NHS["neglect"], purpose="police_investigation"))
        ).json()
    )
    json_answer = (
        await client.post(
            "/v1/lookups",
            json={
                "subject": {"nhs_number": NHS["neglect"]},
                "purpose": "police_investigation",
                "reason": "attended ED with unexplained bruising",
                "enquirer": {"id": "555123456789", "name": "Dr A Jones", "role": "DC"},
            },
            headers={"Authorization": f"Bearer {token}"},
        )
    ).json()
    assert fhir["status"] == json_answer["status"]
    assert fhir["categories"] == json_answer["categories"]
    assert fhir["contact"] == tuple(json_answer["contact"].values())


# --- refusals --------------------------------------------------------------------------


async def test_no_token_is_401(client: httpx.AsyncClient) -> None:
    response = await lookup(client, None, parameters(NHS["multi"]))
    assert response.status_code == 401
    assert issue_code(response) == "token_required"
    assert response.json()["issue"][0]["code"] == "login"


async def test_a_custodian_may_not_look_up(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await lookup(
        client, world["custodian_a"].token, parameters(NHS["multi"], enquirer=False)
    )
    assert response.status_code == 403
    assert issue_code(response) == "not_a_reference_point"
    golden("operationoutcome-refusal", response.json())


async def test_purpose_not_allowed(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await lookup(
        client,
        world["hospital_client"].token,
        parameters(NHS["multi"], purpose="police_investigation"),
    )
    assert response.status_code == 403
    assert issue_code(response) == "purpose_not_allowed"
    refused = await event_of_request(sessionmaker, response)
    assert refused.refusal == "purpose_not_allowed"
    assert refused.outcome == "refused"
    assert refused.detail["channel"] == "fhir"


async def test_token_without_the_lookup_scope(
    client: httpx.AsyncClient,
    forge: Forge,  # noqa: F811
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    response = await lookup(client, await forge(scope=""), parameters(NHS["multi"]))
    assert response.status_code == 403
    assert issue_code(response) == "missing_scope"
    assert (await event_of_request(sessionmaker, response)).detail["channel"] == "fhir"


async def test_a_forged_token_is_401_and_audited_with_the_channel(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await lookup(client, "not.a.token", parameters(NHS["multi"]))
    assert response.status_code == 401
    assert issue_code(response) == "invalid_token"
    refused = await event_of_request(sessionmaker, response)
    assert refused.event_type == "auth.refused"
    assert refused.detail["channel"] == "fhir"


async def test_system_client_must_name_the_enquirer(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await lookup(
        client, world["hospital_client"].token, parameters(NHS["multi"], enquirer=False)
    )
    assert response.status_code == 422
    assert issue_code(response) == "enquirer_required"


@pytest.mark.parametrize(
    ("extra", "body", "expression"),
    [
        ([{"name": "favouriteColour", "valueString": "red"}], None, "favouriteColour"),
        (
            [],
            {"name": "nhsNumber", "valueIdentifier": {"system": NHS_SYSTEM, "value": "1234567890"}},
            "nhsNumber",
        ),
        ([], {"name": "purpose", "valueCode": "curiosity"}, "purpose"),
        ([{"name": "x') or (1=1", "valueString": "red"}], None, "parameter"),
    ],
)
async def test_malformed_parameters_are_422_naming_the_parameter(
    client: httpx.AsyncClient,
    world: World,
    sessionmaker: async_sessionmaker[AsyncSession],
    extra: list[dict[str, Any]],
    body: dict[str, Any] | None,
    expression: str,
) -> None:
    request = parameters(
        NHS["multi"] if body is None or body["name"] != "nhsNumber" else None, extra=extra
    )
    if body is not None:
        request["parameter"] = [p for p in request["parameter"] if p["name"] != body["name"]] + [
            body
        ]
    response = await lookup(client, world["hospital_client"].token, request)
    assert response.status_code == 422, response.text
    assert issue_code(response) == "invalid_request"
    expressions = [e for issue in response.json()["issue"] for e in issue.get("expression", [])]
    if expression == "parameter":  # a name that is not repeated back
        assert "Parameters.parameter" in expressions
    else:
        assert f"Parameters.parameter.where(name='{expression}')" in expressions


async def test_a_practitioner_part_at_fault_is_named(
    client: httpx.AsyncClient, world: World
) -> None:
    request = parameters(NHS["multi"])
    practitioner = next(p for p in request["parameter"] if p["name"] == "practitioner")
    practitioner["part"][1] = {"name": "name", "valueString": "Dr\u200bA Jones"}
    response = await lookup(client, world["hospital_client"].token, request)
    assert response.status_code == 422
    expressions = [e for issue in response.json()["issue"] for e in issue.get("expression", [])]
    assert expressions == [
        "Parameters.parameter.where(name='practitioner').part.where(name='name')"
    ]


async def test_not_parameters_is_422(client: httpx.AsyncClient, world: World) -> None:
    response = await lookup(client, world["hospital_client"].token, {"resourceType": "Patient"})
    assert response.status_code == 422
    assert issue_code(response) == "invalid_request"
    broken = await lookup(client, world["hospital_client"].token, b"{not json")
    assert broken.status_code == 422


# --- AuditEvent ------------------------------------------------------------------------


async def test_custodian_searches_audit_events_of_own_children(
    client: httpx.AsyncClient, world: World
) -> None:
    answered = await lookup(client, world["hospital_client"].token, parameters(NHS["multi"]))
    lookup_id = answer_of(answered.json())["lookup_id"]
    query = {"patient.identifier": f"{NHS_SYSTEM}|{NHS['multi']}", "date": "ge2026-01-01"}
    response = await client.post(
        "/fhir/R4/AuditEvent/_search", data=query, headers=world["custodian_a"].headers
    )
    assert response.status_code == 200, response.text
    bundle = valid(response.json())
    assert bundle["type"] == "searchset"
    ids = [entry["resource"]["id"] for entry in bundle["entry"]]
    assert lookup_id in ids
    found = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == lookup_id)
    assert found["type"]["code"] == "110112"
    assert found["entity"][0]["what"]["identifier"]["value"] == NHS["multi"]
    golden(
        "auditevent-searchset",
        bundle | {"entry": [e for e in bundle["entry"] if e["resource"]["id"] == lookup_id]},
    )

    other = await client.post(
        "/fhir/R4/AuditEvent/_search", data=query, headers=world["custodian_b"].headers
    )
    assert other.status_code == 200
    assert valid(other.json()).get("entry") == []


async def test_audit_events_by_post_search_and_paged(
    client: httpx.AsyncClient, world: World
) -> None:
    for _ in range(2):
        await lookup(client, world["hospital_client"].token, parameters(NHS["neglect"]))
    form = {"patient.identifier": f"{NHS_SYSTEM}|{NHS['neglect']}", "_count": "1"}
    headers = world["custodian_a"].headers
    first = await client.post("/fhir/R4/AuditEvent/_search", data=form, headers=headers)
    assert first.status_code == 200, first.text
    page = valid(first.json())
    assert len(page["entry"]) == 1
    (link,) = page["link"]
    assert NHS["neglect"] not in link["url"]
    second = await client.post(link["url"], data=form, headers=headers)
    page_two = valid(second.json())
    assert page_two["entry"][0]["resource"]["id"] != page["entry"][0]["resource"]["id"]


async def test_audit_event_search_refuses_another_identifier_system(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        "/fhir/R4/AuditEvent/_search",
        data={"patient.identifier": f"urn:other|{NHS['neglect']}"},
        headers=world["custodian_a"].headers,
    )
    assert response.status_code == 422
    assert issue_code(response) == "invalid_request"


async def test_a_child_identifier_in_a_search_url_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    """DESIGN: identifiers travel only in request bodies, never in URLs."""
    response = await client.get(
        "/fhir/R4/AuditEvent",
        params={"patient.identifier": f"{NHS_SYSTEM}|{NHS['neglect']}"},
        headers=world["custodian_a"].headers,
    )
    assert response.status_code == 422
    assert issue_code(response) == "invalid_request"
    assert "_search" in response.text
    by_date = await client.get(
        "/fhir/R4/AuditEvent", params={"date": "ge2026-01-01"}, headers=world["custodian_a"].headers
    )
    assert by_date.status_code == 200, by_date.text


async def test_audit_events_are_for_custodians_only(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get("/fhir/R4/AuditEvent", headers=world["hospital_client"].headers)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith(FHIR)
    valid(response.json())
    anonymous = await client.get("/fhir/R4/AuditEvent")
    assert anonymous.status_code == 401
    assert issue_code(anonymous) == "token_required"


# --- golden files and a real FHIR client ------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "metadata",
        "operationdefinition",
        "parameters-request",
        "bundle-on-plan",
        "bundle-not-on-plan",
        "operationoutcome-refusal",
        "auditevent-searchset",
    ],
)
def test_golden_examples_still_validate(name: str) -> None:
    valid(json.loads((GOLDEN / f"{name}.json").read_text()))


async def test_fhirclient_reads_metadata_and_calls_the_operation(
    served: str,  # noqa: F811
    world: World,
) -> None:
    from fhirclient import client as fhir_client
    from fhirclient.models.parameters import Parameters

    def run() -> dict[str, Any]:
        smart = fhir_client.FHIRClient(
            settings={"app_id": "cp-register-test", "api_base": f"{served}/fhir/R4"}
        )
        smart.prepare()  # reads /metadata
        assert smart.server.capabilityStatement.fhirVersion == "4.0.1"
        request = Parameters(parameters(NHS["neglect"]))
        session = smart.server.session
        session.headers["Authorization"] = f"Bearer {world['hospital_client'].token}"
        return smart.server.post_json("Patient/$cp-lookup", request.as_json()).json()

    bundle = await asyncio.to_thread(run)
    assert answer_of(valid(bundle))["status"] == "on_plan"


async def test_a_body_sent_as_anything_but_json_is_415(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.post(
        PATH,
        content=json.dumps(parameters(NHS["multi"])).encode(),
        headers={"Content-Type": "text/plain", **world["hospital_client"].headers},
    )
    assert response.status_code == 415
    assert issue_code(response) == "unsupported_media_type"


async def test_fails_closed_when_the_audit_log_cannot_be_written(
    client: httpx.AsyncClient,
    world: World,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with audit_log_unwritable(admin_sessionmaker, settings):
        response = await lookup(client, world["hospital_client"].token, parameters(NHS["neglect"]))
    assert response.status_code == 503
    assert issue_code(response) == "service_unavailable"
    assert int(response.headers["retry-after"]) > 0
    for marker in ("on_plan", "neglect", "Observation", "Organization", NHS["neglect"]):
        assert marker not in response.text
    async with sessionmaker() as session:
        written = await session.scalars(
            select(AuditEvent.id).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
        assert written.all() == []
