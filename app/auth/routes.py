"""RFC 6749 token endpoint and the published key set.

The token endpoint answers errors in RFC 6749 §5.2 form (``{"error": ...}``),
as OAuth clients expect, rather than as problem documents.
"""

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select

from app.admin.models import SCOPES_BY_KIND, Client, Organisation, OrganisationKind, User
from app.audit.models import AuditEvent
from app.audit.service import record, request_context
from app.auth.hashing import verify_secret
from app.auth.principals import KeyRingDep, SettingsDep
from app.auth.tokens import issue_token
from app.db import SessionDep

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105  (not a secret)
    expires_in: int
    scope: str


class OAuthError(BaseModel):
    error: str
    error_description: str | None = None


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


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={400: {"model": OAuthError}, 401: {"model": OAuthError}},
    summary="Issue an access token (client_credentials or password grant)",
)
async def token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    keyring: KeyRingDep,
    grant_type: Annotated[str, Form()],
    scope: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
) -> Any:
    requested = set(scope.split()) if scope else None
    failure = AuditEvent(
        event_type="auth.login_failed", outcome="refused", **request_context(request)
    )

    if grant_type == "client_credentials":
        basic = _basic_credentials(request)
        if basic is not None:
            client_id, client_secret = basic
        if not client_id or not client_secret:
            return _oauth_error(
                401,
                "invalid_client",
                "Client authentication failed.",
                {"WWW-Authenticate": 'Basic realm="cp-register"'},
            )
        row = (
            await session.execute(
                select(Client, Organisation)
                .join(Organisation, Client.organisation_id == Organisation.id)
                .where(Client.id == client_id)
            )
        ).first()
        client, org = row if row else (None, None)
        await session.commit()  # release SQLite's write lock before the slow hash check
        secret_ok = verify_secret(client_secret, client.secret_hash if client else None)
        if client is None or org is None or not (secret_ok and client.active and org.active):
            failure.refusal = "invalid_client"
            failure.principal = f"client:{client.id}" if client else None
            failure.detail = {"grant_type": grant_type, "client_id": client_id[:64]}
            await record(session, failure)
            return _oauth_error(
                401,
                "invalid_client",
                "Client authentication failed.",
                {"WWW-Authenticate": 'Basic realm="cp-register"'},
            )
        subject, held, kind = f"client:{client.id}", set(client.scopes), org.kind

    elif grant_type == "password":
        if not username or not password:
            return _oauth_error(400, "invalid_request", "username and password are required.")
        row = (
            await session.execute(
                select(User, Organisation)
                .join(Organisation, User.organisation_id == Organisation.id)
                .where(User.username == username)
            )
        ).first()
        user, org = row if row else (None, None)
        await session.commit()  # release SQLite's write lock before the slow hash check
        password_ok = verify_secret(password, user.password_hash if user else None)
        if user is None or org is None or not (password_ok and user.active and org.active):
            failure.refusal = "invalid_grant"
            failure.principal = f"user:{user.id}" if user else None
            failure.detail = {"grant_type": grant_type, "username": username[:100]}
            await record(session, failure)
            return _oauth_error(400, "invalid_grant", "Wrong username or password.")
        subject, held, kind = f"user:{user.id}", set(user.scopes), org.kind

    else:
        return _oauth_error(400, "unsupported_grant_type", "Use client_credentials or password.")

    grantable = held & SCOPES_BY_KIND[OrganisationKind(kind)]
    if requested is not None and not requested <= grantable:
        return _oauth_error(400, "invalid_scope", "A requested scope is not granted to you.")
    scopes = sorted(requested if requested is not None else grantable)
    access_token = await issue_token(
        keyring, settings, subject=subject, organisation_id=str(org.id), scopes=scopes
    )
    body = TokenResponse(
        access_token=access_token, expires_in=settings.token_ttl_seconds, scope=" ".join(scopes)
    )
    return JSONResponse(body.model_dump(), headers=NO_STORE)


@router.get("/.well-known/jwks.json", response_model=JWKS, summary="Public signing keys")
async def jwks(keyring: KeyRingDep) -> JWKS:
    return JWKS(keys=await keyring.public_jwks())
