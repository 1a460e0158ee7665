"""Who is calling: the bearer token resolved to an active client or user.

The principal and its organisation are read from the database on every
request, so disabling either takes effect at once, not at token expiry.
"""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from fastapi import Depends, Request
from sqlalchemy import exists, select

from app.admin.models import SCOPES_BY_KIND, Client, Organisation, OrganisationKind, Scope, User
from app.audit.models import AuditEvent
from app.audit.service import refuse, request_context
from app.auth.keys import KeyRing
from app.auth.models import AccessToken
from app.auth.tokens import InvalidToken, TokenClaims, verify_token
from app.config import Settings
from app.db import SessionDep
from app.errors import ProblemError


@dataclass(frozen=True)
class Principal:
    kind: Literal["client", "user"]
    id: str
    display_name: str
    role: str | None
    organisation_id: uuid.UUID
    organisation_kind: OrganisationKind
    organisation_name: str
    scopes: frozenset[str]

    @property
    def subject(self) -> str:
        return f"{self.kind}:{self.id}"


# async: FastAPI would run a plain function in a worker thread on every request.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_keyring(request: Request) -> KeyRing:
    return request.app.state.keyring


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]

_UNAUTHENTICATED = ProblemError(
    401,
    "Unauthorized",
    "A valid bearer access token is required.",
    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
)


async def get_principal(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Principal:
    event = AuditEvent(event_type="auth.refused", outcome="refused", **request_context(request))
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ProblemError(
            401,
            "Unauthorized",
            "A bearer access token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        claims = await verify_token(keyring, settings, token.strip())
    except InvalidToken as exc:
        event.refusal = "invalid_token"
        event.detail = {"problem": str(exc), "path": request.url.path}
        await refuse(session, event, _UNAUTHENTICATED)

    principal = await _load(session, claims)
    event.principal = claims.subject
    event.detail = {"path": request.url.path}
    if principal is None or str(principal.organisation_id) != claims.organisation_id:
        # Disabled, revoked, moved to another organisation, or a token we never issued.
        event.refusal = "principal_inactive"
        await refuse(session, event, _UNAUTHENTICATED)
    event.organisation_id = principal.organisation_id
    # Scopes are what the token carries, narrowed to what the principal holds now.
    allowed = principal.scopes & SCOPES_BY_KIND[principal.organisation_kind]
    return replace(principal, scopes=claims.scopes & allowed)


async def _load(session: SessionDep, claims: TokenClaims) -> Principal | None:
    """The active principal the token names, in one query that also proves we issued
    the token (its ``jti``) and have not revoked it."""
    kind, _, principal_id = claims.subject.partition(":")
    issued = exists().where(
        AccessToken.jti == claims.token_id,
        AccessToken.subject == claims.subject,
        AccessToken.revoked_at.is_(None),
    )
    if kind == "client":
        row = (
            await session.execute(
                select(Client, Organisation)
                .join(Organisation, Client.organisation_id == Organisation.id)
                .where(Client.id == principal_id, Client.active, Organisation.active, issued)
            )
        ).first()
        if row is None:
            return None
        client, org = row
        return Principal(
            kind="client",
            id=client.id,
            display_name=client.name,
            role=None,
            organisation_id=org.id,
            organisation_kind=OrganisationKind(org.kind),
            organisation_name=org.name,
            scopes=frozenset(client.scopes),
        )
    if kind == "user":
        try:
            user_id = uuid.UUID(principal_id)
        except ValueError:
            return None
        row = (
            await session.execute(
                select(User, Organisation)
                .join(Organisation, User.organisation_id == Organisation.id)
                .where(User.id == user_id, User.active, Organisation.active, issued)
            )
        ).first()
        if row is None:
            return None
        user, org = row
        return Principal(
            kind="user",
            id=str(user.id),
            display_name=user.full_name,
            role=user.role,
            organisation_id=org.id,
            organisation_kind=OrganisationKind(org.kind),
            organisation_name=org.name,
            scopes=frozenset(user.scopes),
        )
    return None


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_scope(
    scope: Scope,
    *,
    kinds: frozenset[OrganisationKind],
    event_type: str,
    kind_refusal: str = "wrong_organisation_kind",
) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting a principal of one of ``kinds`` whose token carries ``scope``.

    Both must hold: a token's scope alone would let a mis-issued client in, and
    the kind alone would let in any token of that organisation. Each refusal is
    an audit event (``event_type``), committed before the 403 leaves.
    """
    kinds_text = " or ".join(sorted(kind.value.replace("_", " ") for kind in kinds))

    async def dependency(
        request: Request, principal: CurrentPrincipal, session: SessionDep
    ) -> Principal:
        event = AuditEvent(
            event_type=event_type,
            principal=principal.subject,
            organisation_id=principal.organisation_id,
            detail={"method": request.method, "path": request.url.path, "scope": scope.value},
            **request_context(request),
        )
        if principal.organisation_kind not in kinds:
            event.refusal = kind_refusal
            detail = f"Only {kinds_text} organisations may do this."
            await refuse(session, event, ProblemError(403, "Forbidden", detail))
        if scope.value not in principal.scopes:
            event.refusal = "missing_scope"
            detail = f"The token does not carry the {scope.value} scope."
            await refuse(session, event, ProblemError(403, "Forbidden", detail))
        return principal

    return dependency
