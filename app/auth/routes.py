"""RFC 6749 token endpoint and the published key set.

The token endpoint answers every refusal in RFC 6749 §5.2 form
(``{"error": ..., "error_description": ...}``, 400, 401, or 429 for a lockout), as
OAuth clients expect, a malformed request (a missing grant_type, a body that is not
a form) included; not as problem documents. The exceptions are what RFC 6749 has no
code for and the whole service answers alike, as problem documents: 413 (a body over
the limit, refused before it is read) and 503 (the sign-in could not be recorded, so
no token is issued; or the database is unavailable), with Retry-After.
"""

import base64
import binascii
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.auth.assertions import (
    ASSERTION_TYPE,
    unverified_client_id,
)
from app.auth.sign_in import (
    CLIENT_FAILURE,
    NO_STORE,
    PRIVATE_KEY_JWT,
    WRONG_PASSWORD,
    Grant,
    SignInRefused,
    TokenResponse,
    find_client,
    find_user,
    finder,
    sign_in_one_at_a_time,
)
from app.deps import KeyRingDep, SessionDep, SettingsDep

router = APIRouter(tags=["auth"])

_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="cp-register"'}


class JWKS(BaseModel):
    keys: list[dict[str, Any]]


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return (unquote(client_id), unquote(secret)) if sep else ("", "")


FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
GRANT_TYPES = ("client_credentials", "password")
_MAX_PARAMETERS = 20
_PARAMETERS = (
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
    "username",
    "password",
)


class TokenRequestInvalid(Exception):
    """The request is not one RFC 6749 §3.2 admits: answered ``invalid_request``."""


def _oauth_error_schema(*errors: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "enum": list(errors)},
            "error_description": {"type": "string"},
        },
    }


def _oauth_error_response(description: str, *errors: str, **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": f"RFC 6749 §5.2 error ({', '.join(errors)}). {description}",
        "content": {"application/json": {"schema": _oauth_error_schema(*errors)}},
    }
    if headers:
        response["headers"] = {
            name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


_TOKEN_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": list(GRANT_TYPES)},
        "scope": {"type": "string", "description": "Space-separated; default: all granted."},
        "client_id": {"type": "string", "description": "Or HTTP Basic (clientSecretBasic)."},
        "client_secret": {"type": "string"},
        "client_assertion_type": {
            "type": "string",
            "enum": [ASSERTION_TYPE],
            "description": "RFC 7523 private_key_jwt, instead of a secret.",
        },
        "client_assertion": {
            "type": "string",
            "description": "A JWT signed (RS256 or ES256) with the client's registered key.",
        },
        "username": {"type": "string", "description": "The password grant's user."},
        "password": {"type": "string", "format": "password"},
    },
}


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={
        200: {"headers": {"Cache-Control": {"description": "no-store"}}},
        400: _oauth_error_response(
            "A malformed request (not form-encoded, a parameter twice, one missing), an "
            "unknown grant type, a wrong username or password, or a scope not granted.",
            "invalid_request",
            "unsupported_grant_type",
            "invalid_grant",
            "invalid_scope",
        ),
        401: _oauth_error_response(
            "The system client's id or secret is missing or wrong, or it is revoked; or "
            "its client assertion is not valid (bad signature, expired, wrong audience, "
            "replayed), or it is refused its secret.",
            "invalid_client",
            WWW_Authenticate='Basic realm="cp-register"',
        ),
        429: _oauth_error_response(
            "Locked out after failed attempts, or another sign-in of the account is in "
            "progress (app/auth/lockout.py).",
            "slow_down",
            Retry_After="Seconds to wait.",
        ),
    },
    summary="Issue an access token (client_credentials or password grant)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FORM_MEDIA_TYPE: {"schema": _TOKEN_FORM_SCHEMA}},
        },
        # Client authentication (RFC 6749 §2.3.1): HTTP Basic, or the form's parameters.
        "security": [{}, {"clientSecretBasic": []}],
    },
)
async def token(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Any:
    # The form is read here, not by FastAPI: every failure, a missing grant_type
    # included, is an RFC 6749 §5.2 error, never a problem document (a 422).
    try:
        form = await _token_parameters(request)
    except TokenRequestInvalid as exc:
        return _oauth_error(400, "invalid_request", str(exc))
    grant_type, scope = form.get("grant_type"), form.get("scope")
    if grant_type is None:
        return _oauth_error(400, "invalid_request", "grant_type is required.")
    method = "client_secret"
    failure: tuple[int, str, str, dict[str, str] | None]
    if grant_type == "client_credentials" and (
        "client_assertion_type" in form or "client_assertion" in form
    ):
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return _oauth_error(
                400,
                "invalid_request",
                f"client_assertion_type must be {ASSERTION_TYPE}, with a client_assertion.",
            )
        if "client_secret" in form or _basic_credentials(request) is not None:
            return _oauth_error(
                400, "invalid_request", "Use one client authentication method, not two."
            )
        claimed = form.get("client_id") or unverified_client_id(assertion) or ""
        find, secret, name = finder(find_client, session, claimed), assertion, claimed
        failure = CLIENT_FAILURE
        method = PRIVATE_KEY_JWT
    elif grant_type == "client_credentials":
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = _basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if not client_id or not client_secret:
            return _oauth_error(
                401, "invalid_client", "Client authentication failed.", _BASIC_CHALLENGE
            )
        find, secret, name = finder(find_client, session, client_id), client_secret, client_id
        failure = (
            401,
            "invalid_client",
            "Client authentication failed.",
            _BASIC_CHALLENGE,
        )
    elif grant_type == "password":
        username, password = form.get("username"), form.get("password")
        if not username or not password:
            return _oauth_error(400, "invalid_request", "username and password are required.")
        find, secret, name = finder(find_user, session, username), password, username
        failure = WRONG_PASSWORD
    else:
        return _oauth_error(400, "unsupported_grant_type", "Use client_credentials or password.")

    result = await sign_in_one_at_a_time(
        request,
        session,
        settings,
        keyring,
        find=find,
        secret=secret,
        grant=Grant(grant_type, name, scope, failure, method),
    )
    if isinstance(result, SignInRefused):
        return _oauth_error(result.status, result.error, result.description, result.headers)
    return JSONResponse(result.model_dump(), headers=NO_STORE)


async def _token_parameters(request: Request) -> dict[str, str]:
    """The token request's parameters (RFC 6749 §3.2): form-encoded UTF-8, none twice,
    none holding a NUL (no database stores one). An empty one counts as absent and an
    unknown one is ignored, as §3.1 says."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise TokenRequestInvalid(f"Send the parameters as {FORM_MEDIA_TYPE}.")
    try:
        pairs = parse_qsl(
            (await request.body()).decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_PARAMETERS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenRequestInvalid("The parameters are not a UTF-8 form.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMETERS:
            continue
        if name in form:
            raise TokenRequestInvalid(f"{name} is sent more than once.")
        if "\x00" in value:
            raise TokenRequestInvalid(f"{name} holds a NUL character.")
        form[name] = value
    return {name: value for name, value in form.items() if value}


@router.get("/.well-known/jwks.json", response_model=JWKS, summary="Public signing keys")
async def jwks(keyring: KeyRingDep) -> JWKS:
    return JWKS(keys=await keyring.public_jwks())
