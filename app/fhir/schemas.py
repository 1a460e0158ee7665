"""The `$cp-lookup` operation's Parameters, translated into the JSON API's LookupRequest
body. Nothing is checked here that app/lookup/ checks: what cannot be translated is put
into the body under its FHIR parameter name, so that the one lookup refuses it (and
audits the refusal) as an unknown field, and the OperationOutcome names the parameter."""

import re
from typing import Any

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"
SDS_JOB_ROLE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
_ODS_CODE = re.compile(r"^[A-Z0-9]{3,10}$")
_PARAMETER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

# JSON API field (its location in LookupRequest) -> the Parameters parameter that carries it.
PARAMETER_OF: dict[tuple[str, ...], str] = {
    ("subject", "nhs_number"): "nhsNumber",
    ("subject", "given_name"): "given",
    ("subject", "family_name"): "family",
    ("subject", "date_of_birth"): "birthDate",
    ("subject",): "nhsNumber",
    ("purpose",): "purpose",
    ("reason",): "reason",
    ("enquirer",): "practitioner",
    ("enquirer", "id"): "practitioner.id",
    ("enquirer", "name"): "practitioner.name",
    ("enquirer", "role"): "practitioner.role",
}


class Malformed(Exception):
    """A part of the Parameters that cannot be translated, by parameter name."""


def _value(parameter: dict[str, Any], kind: str) -> Any:
    key = "value" + kind
    extra = set(parameter) - {"name", key}
    if extra or key not in parameter:
        raise Malformed(parameter.get("name"))
    return parameter[key]


def _identifier(value: Any, system: str, name: str) -> Any:
    """The value of an Identifier of ``system`` (nothing else in it)."""
    if not isinstance(value, dict) or value.get("system") != system:
        raise Malformed(name)
    if set(value) - {"system", "value"}:
        raise Malformed(name)
    return value.get("value")


def _role(value: dict[str, Any]) -> Any:
    if "valueString" in value:
        return _value(value, "String")
    coding = _value(value, "Coding")
    if not isinstance(coding, dict) or coding.get("system") != SDS_JOB_ROLE_SYSTEM:
        raise Malformed("practitioner.role")
    return coding.get("display") or coding.get("code")


def _practitioner(parameter: dict[str, Any]) -> dict[str, Any]:
    parts = parameter.get("part")
    if set(parameter) != {"name", "part"} or not isinstance(parts, list):
        raise Malformed("practitioner")
    enquirer: dict[str, Any] = {}
    for part in parts:
        name = part.get("name") if isinstance(part, dict) else None
        if name in enquirer or name not in {"id", "name", "role"}:
            raise Malformed(f"practitioner.{name}")
        try:
            if name == "id":
                enquirer["id"] = _identifier(_value(part, "Identifier"), SDS_USER_SYSTEM, "")
            elif name == "name":
                enquirer["name"] = _value(part, "String")
            else:
                enquirer["role"] = _role(part)
        except Malformed as exc:
            raise Malformed(f"practitioner.{name}") from exc
    return enquirer


def lookup_body(document: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The LookupRequest body for a Parameters resource, and what the audit event's
    ``detail`` records beside the channel (the patient's location, an ODS code)."""
    body: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    if not isinstance(document, dict) or document.get("resourceType") != "Parameters":
        return {"resourceType": None}, detail
    if set(document) - {"resourceType", "id", "parameter"}:
        return {"Parameters": None}, detail
    parameters = document.get("parameter", [])
    if not isinstance(parameters, list):
        return {"parameter": None}, detail
    subject: dict[str, Any] = {}
    for parameter in parameters:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(name, str):
            body["parameter"] = None
            continue
        try:
            if name == "practitioner" and "enquirer" not in body:
                body["enquirer"] = _practitioner(parameter)
            elif name == "nhsNumber" and "nhs_number" not in subject:
                value = _value(parameter, "Identifier")
                subject["nhs_number"] = _identifier(value, NHS_NUMBER_SYSTEM, name)
            elif name == "given" and "given_name" not in subject:
                subject["given_name"] = _value(parameter, "String")
            elif name == "family" and "family_name" not in subject:
                subject["family_name"] = _value(parameter, "String")
            elif name == "birthDate" and "date_of_birth" not in subject:
                subject["date_of_birth"] = _value(parameter, "Date")
            elif name == "purpose" and "purpose" not in body:
                body["purpose"] = _value(parameter, "Code")
            elif name == "reason" and "reason" not in body:
                body["reason"] = _value(parameter, "String")
            elif name == "location" and "location" not in detail:
                code = _identifier(_value(parameter, "Identifier"), ODS_SYSTEM, name)
                if not isinstance(code, str) or not _ODS_CODE.match(code):
                    raise Malformed(name)
                detail["location"] = {"ods_code": code}
            else:
                raise Malformed(name)  # unknown, or given twice
        except Malformed as exc:
            # Refused by the lookup as an unknown field, named after the parameter (a
            # name that is no plain name is not repeated: it goes on record and back).
            named = str(exc.args[0] or name)
            body[named if _PARAMETER_NAME.match(named) else "parameter"] = None
    # The date travels as JSON text; the lookup's strict model reads ISO dates from JSON.
    body["subject"] = subject
    return body, detail
