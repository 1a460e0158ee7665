"""FHIR R4 resources as plain dicts (tests/test_fhir.py validates each with the
fhir.resources models): the runtime needs no FHIR library."""

import uuid
from typing import Any

from app.errors import PROBLEMS
from app.fhir.schemas import (
    NHS_NUMBER_SYSTEM,
)
from app.lookup.purposes import PURPOSE_WORDS
from app.lookup.schemas import LookupAnswer
from app.register.models import CATEGORY_WORDS

FHIR_MEDIA_TYPE = "application/fhir+json"
FHIR_VERSION = "4.0.1"
# The service's own code systems: canonical URLs that identify, served at
# /fhir/R4/CodeSystem/{id}. No SNOMED CT or national codes are claimed for the
# categories: the service publishes its own.
CANONICAL = "https://cp-register.example/fhir/R4"
CATEGORY_SYSTEM = f"{CANONICAL}/CodeSystem/cp-category"
LOOKUP_SYSTEM = f"{CANONICAL}/CodeSystem/cp-lookup"
PROBLEM_SYSTEM = f"{CANONICAL}/CodeSystem/cp-problem"
OPERATION = f"{CANONICAL}/OperationDefinition/Patient-cp-lookup"
LOOKUP_ID_SYSTEM = "urn:ietf:rfc:3986"

_STATUS_DISPLAY = {
    "on_plan": "Subject to a child protection plan",
    "not_on_plan": "Not subject to a child protection plan",
    "refer_to_custodian": "Refer to the custodian: the identifiers need resolving",
}
_LOOKUP_CONCEPTS = {
    "cp-plan-status": "Child protection plan status",
    "category": "Category of a child protection plan",
    "unborn": "The plan is an unborn child's, held against the mother",
    **_STATUS_DISPLAY,
    **PURPOSE_WORDS,
}


def _code_system(system_id: str, url: str, title: str, concepts: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": system_id,
        "url": url,
        "name": system_id.replace("-", "_").upper(),
        "title": title,
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": code, "display": display} for code, display in concepts.items()],
    }


CODE_SYSTEMS = {
    "cp-category": _code_system(
        "cp-category",
        CATEGORY_SYSTEM,
        "Categories of a child protection plan",
        CATEGORY_WORDS,
    ),
    "cp-lookup": _code_system(
        "cp-lookup",
        LOOKUP_SYSTEM,
        "cp-register lookup answers and purposes of use",
        _LOOKUP_CONCEPTS,
    ),
    "cp-problem": _code_system(
        "cp-problem",
        PROBLEM_SYSTEM,
        "cp-register refusals (the JSON API's problem codes)",
        {kind.code: kind.title for kind in PROBLEMS.values()},
    ),
}


def _in(name: str, kind: str, documentation: str, *, min_: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "use": "in",
        "min": min_,
        "max": "1",
        "type": kind,
        "documentation": documentation,
    }


OPERATION_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition",
    "id": "Patient-cp-lookup",
    "url": OPERATION,
    "name": "CpLookup",
    "title": "Is this child on a child protection plan, and under which category?",
    "status": "active",
    "kind": "operation",
    "code": "cp-lookup",
    "resource": ["Patient"],
    "system": False,
    "type": True,
    "instance": False,
    "affectsState": True,  # every enquiry is an audit event
    "description": "The JSON API's POST /v1/lookups in FHIR: the same checks, limits, audit "
    "event and need-to-know answer. Give nhsNumber, or given, family and birthDate.",
    "parameter": [
        _in("nhsNumber", "Identifier", "System https://fhir.nhs.uk/Id/nhs-number."),
        _in("given", "string", "With family and birthDate, instead of nhsNumber."),
        _in("family", "string", "With given and birthDate."),
        _in("birthDate", "date", "With given and family."),
        _in("purpose", "code", "A purpose of use from cp-lookup.", min_=1),
        _in("reason", "string", "Why you ask, 3-500 characters.", min_=1),
        _in("location", "Identifier", "Where the patient is: an ODS code."),
        {
            "name": "practitioner",
            "use": "in",
            "min": 0,
            "max": "1",
            "documentation": "Required from a system client, refused for a user's token: "
            "the member of staff who asked.",
            "part": [
                _in("id", "Identifier", "SDS user id.", min_=1),
                _in("name", "string", "Their name.", min_=1),
                _in("role", "string", "Their role (or a Coding of an SDS job role).", min_=1),
            ],
        },
        {
            "name": "return",
            "use": "out",
            "min": 1,
            "max": "1",
            "type": "Bundle",
            "documentation": "An Observation (status, categories, unborn; its id the lookup "
            "id) and the Organization to call, 24 hours a day.",
        },
    ],
}


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-01",
        "kind": "instance",
        "software": {"name": "cp-register", "version": software_version},
        "implementation": {
            "description": "Child protection plan register: need-to-know lookup",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_MEDIA_TYPE, "application/json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "OAuth",
                                }
                            ]
                        }
                    ],
                    "description": "OAuth2 bearer tokens from POST /oauth/token "
                    "(client_credentials for hospital systems), scope register:lookup; "
                    "AuditEvent: a custodian's token with scope audit:read.",
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                            "oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base_url}/oauth/token"}],
                        }
                    ],
                },
                "resource": [
                    {
                        "type": "Patient",
                        "operation": [
                            {
                                "name": "cp-lookup",
                                "definition": OPERATION,
                                "documentation": "Is this child (or this pregnant woman's "
                                "unborn child) on a child protection plan, and under which "
                                "category? Parameters: nhsNumber (Identifier) or given, "
                                "family, birthDate; purpose (code); reason (string); "
                                "practitioner (parts id, name, role) for system clients; "
                                "location (ODS code Identifier). Answers a Bundle.",
                            }
                        ],
                    },
                    {
                        "type": "AuditEvent",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [
                            {"name": "patient.identifier", "type": "token"},
                            {"name": "date", "type": "date"},
                            {"name": "_count", "type": "number"},
                        ],
                    },
                    {"type": "CodeSystem", "interaction": [{"code": "read"}]},
                ],
            }
        ],
    }


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display}


def lookup_bundle(answer: LookupAnswer) -> dict[str, Any]:
    """The need-to-know answer and nothing else: an Observation (status, categories,
    unborn; its id the lookup id) and the Organization to call, 24 hours a day."""
    lookup_urn = f"urn:uuid:{answer.lookup_id}"
    contact_urn = f"urn:uuid:{uuid.uuid5(answer.lookup_id, 'contact')}"
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(answer.lookup_id),
        "identifier": [{"system": LOOKUP_ID_SYSTEM, "value": lookup_urn}],
        "status": "final",
        "code": {
            "coding": [_coding(LOOKUP_SYSTEM, "cp-plan-status", "Child protection plan status")]
        },
        "valueCodeableConcept": {
            "coding": [_coding(LOOKUP_SYSTEM, answer.status, _STATUS_DISPLAY[answer.status])]
        },
        "performer": [{"reference": contact_urn}],
    }
    components: list[dict[str, Any]] = [
        {
            "code": {"coding": [_coding(LOOKUP_SYSTEM, "category", "Category")]},
            "valueCodeableConcept": {
                "coding": [_coding(CATEGORY_SYSTEM, category.value, CATEGORY_WORDS[category])]
            },
        }
        for category in answer.categories or ()
    ]
    if answer.unborn is not None:
        components.append(
            {
                "code": {"coding": [_coding(LOOKUP_SYSTEM, "unborn", "Unborn")]},
                "valueBoolean": answer.unborn,
            }
        )
    if components:
        observation["component"] = components
    organization = {
        "resourceType": "Organization",
        "name": answer.contact.name,
        "telecom": [{"system": "phone", "value": answer.contact.phone, "use": "work"}],
    }
    return {
        "resourceType": "Bundle",
        "identifier": {"system": LOOKUP_ID_SYSTEM, "value": lookup_urn},
        "type": "collection",
        "entry": [
            {"fullUrl": lookup_urn, "resource": observation},
            {"fullUrl": contact_urn, "resource": organization},
        ],
    }


# FHIR's issue type for each HTTP status of a refusal.
_ISSUE_TYPE = {
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}


def operation_outcome(
    code: str,
    status: int,
    title: str,
    detail: str | None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A refusal: the JSON API's problem code as the issue's details coding."""
    issue_type = _ISSUE_TYPE.get(status, "exception")
    details: dict[str, Any] = {"coding": [_coding(PROBLEM_SYSTEM, code, PROBLEMS[code].title)]}
    if detail:
        details["text"] = detail
    if not errors:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": issue_type, "details": details}],
        }
    issues = []
    for error in errors:
        issue: dict[str, Any] = {
            "severity": "error",
            "code": issue_type,
            "details": details | {"text": error.get("msg") or title},
        }
        if error.get("expression"):
            issue["expression"] = [error["expression"]]
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}


def audit_event(event: Any) -> dict[str, Any]:
    """One enquiry (app/audit/review.py's AuditEventRead) as an AuditEvent shaped after
    IHE Basic Audit Log Patterns' Query event."""
    enquirer = event.enquirer
    agents: list[dict[str, Any]] = []
    if enquirer is not None:
        # As the enquiring system named them: an SDS user id over FHIR, a local id over JSON.
        who: dict[str, Any] = {"identifier": {"value": enquirer.id}}
        if enquirer.name:
            who["display"] = enquirer.name
        agent: dict[str, Any] = {"who": who, "requestor": True}
        if enquirer.role:
            agent["role"] = [{"text": enquirer.role}]
        agents.append(agent)
    if event.organisation_id is not None:
        org: dict[str, Any] = {
            "identifier": {"system": LOOKUP_ID_SYSTEM, "value": f"urn:uuid:{event.organisation_id}"}
        }
        if event.organisation_name:
            org["display"] = event.organisation_name
        agents.append({"who": org, "requestor": enquirer is None})
    entities: list[dict[str, Any]] = []
    identifiers = event.identifiers
    if identifiers is not None and identifiers.nhs_number:
        entities.append(
            {
                "what": {
                    "identifier": {"system": NHS_NUMBER_SYSTEM, "value": identifiers.nhs_number}
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
    query_detail = [{"type": "outcome", "valueString": event.outcome}]
    if identifiers is not None:
        for name in ("given_name", "family_name", "date_of_birth"):
            value = getattr(identifiers, name)
            if value:
                query_detail.append({"type": name, "valueString": value})
    if event.disclosed is not None:
        query_detail.append({"type": "disclosed_status", "valueString": event.disclosed.status})
        for category in event.disclosed.categories or ():
            query_detail.append({"type": "disclosed_category", "valueString": category})
    entities.append(
        {
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "24",
                "display": "Query",
            },
            "detail": query_detail,
        }
    )
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.id),
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110112",
            "display": "Query",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "operation"}],
        "action": "E",
        "recorded": event.occurred_at.isoformat(),
        "outcome": "4" if event.outcome == "refused" else "0",
        "agent": agents or [{"who": {"display": "unidentified"}, "requestor": True}],
        "source": {"observer": {"display": "cp-register"}},
        "entity": entities,
    }
    if event.purpose:
        resource["purposeOfEvent"] = [
            {
                "coding": [{"system": LOOKUP_SYSTEM, "code": event.purpose}],
                **({"text": event.reason} if event.reason else {}),
            }
        ]
    return resource


def searchset(resources: list[dict[str, Any]], next_url: str | None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle
