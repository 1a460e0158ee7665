"""Who is calling: the bearer token resolved to an active client or user.

The principal and its organisation are read from the database on every
request, so disabling either takes effect at once, not at token expiry.
"""

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from sqlalchemy import RowMapping, Select, bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent
from app.audit.service import principal_event, refuse, request_context
from app.auth.certificates import presented_thumbprint
from app.auth.keys import KeyRing
from app.auth.models import AccessToken
from app.auth.tokens import InvalidToken, TokenClaims, verify_token
from app.config import Settings
from app.db import READ_ONLY_OPTION
from app.deps import KeyRingDep, SessionDep, SettingsDep
from app.errors import ProblemError, raises
from app.identity.models import SCOPES_BY_KIND, Client, Organisation, OrganisationKind, Scope, User


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


_UNAUTHENTICATED = ProblemError(
    401,
    "Unauthorized",
    "A valid bearer access token is required.",
    code="invalid_token",
    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
)


def unauthenticated() -> ProblemError:
    """The 401 for a token that is invalid or names no active principal."""
    return _UNAUTHENTICATED


def bearer_token(request: Request) -> str:
    """The bearer token of the request; 401 (not audited: no caller to name) without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ProblemError(
            401,
            "Unauthorized",
            "A bearer access token is required.",
            code="token_required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


def _principal_statement(kind: Literal["client", "user"]) -> Select[*tuple[Any, ...]]:
    """The active principal the token names, in one query that also proves we issued
    the token (its ``jti``) and have not revoked it. Built once; values are bound."""
    issued = exists().where(
        AccessToken.jti == bindparam("jti"),
        AccessToken.subject == bindparam("subject"),
        AccessToken.revoked_at.is_(None),
    )
    organisation = (
        Organisation.id.label("organisation_id"),
        Organisation.kind.label("organisation_kind"),
        Organisation.name.label("organisation_name"),
    )
    if kind == "client":
        return (
            select(Client.id, Client.name.label("display_name"), Client.scopes, *organisation)
            .join(Organisation, Client.organisation_id == Organisation.id)
            .where(Client.id == bindparam("principal_id"), Client.active, Organisation.active)
            .where(issued)
        )
    return (
        select(User.id, User.full_name.label("display_name"), User.role, User.scopes, *organisation)
        .join(Organisation, User.organisation_id == Organisation.id)
        .where(User.id == bindparam("principal_id"), User.active, Organisation.active)
        .where(issued)
    )


PRINCIPAL_STATEMENTS: dict[str, Select[*tuple[Any, ...]]] = {
    "client": _principal_statement("client"),
    "user": _principal_statement("user"),
}


@dataclass(frozen=True)
class PrincipalQuery:
    """Which statement of PRINCIPAL_STATEMENTS loads the token's principal, with what."""

    kind: Literal["client", "user"]
    subject: str  # as Principal.subject will spell it
    parameters: dict[str, Any]


def principal_query(claims: TokenClaims) -> PrincipalQuery | None:
    """None when the token's subject names no kind of principal we have."""
    prefix, _, principal_id = claims.subject.partition(":")
    kind: Literal["client", "user"]
    key: str | uuid.UUID
    if prefix == "client":
        kind, key = "client", principal_id
    elif prefix == "user":
        kind = "user"
        try:
            key = uuid.UUID(principal_id)
        except ValueError:
            return None
    else:
        return None
    parameters = {"principal_id": key, "jti": claims.token_id, "subject": claims.subject}
    return PrincipalQuery(kind, f"{kind}:{key}", parameters)


def principal_from_row(
    query: PrincipalQuery, row: RowMapping | Mapping[str, Any] | None, claims: TokenClaims
) -> Principal | None:
    """The principal of a PRINCIPAL_STATEMENTS row, its scopes narrowed to what the token
    carries and what the principal and its organisation's kind hold now; None when there
    is no row (disabled, revoked, or a token we never issued) or the principal has moved
    to another organisation since the token was issued."""
    if row is None or str(row["organisation_id"]) != claims.organisation_id:
        return None
    kind = OrganisationKind(row["organisation_kind"])
    allowed = frozenset(row["scopes"]) & SCOPES_BY_KIND[kind]
    return Principal(
        kind=query.kind,
        id=str(row["id"]),
        display_name=row["display_name"],
        role=row["role"] if query.kind == "user" else None,
        organisation_id=row["organisation_id"],
        organisation_kind=kind,
        organisation_name=row["organisation_name"],
        scopes=claims.scopes & allowed,
    )


@raises("token_required", "invalid_token")
async def get_principal(
    request: Request, session: SessionDep, settings: SettingsDep, keyring: KeyRingDep
) -> Principal:
    return await authenticate(request, session, settings, keyring, bearer_token(request))


async def authenticate(
    request: Request, session: AsyncSession, settings: Settings, keyring: KeyRing, token: str
) -> Principal:
    """The active principal ``token`` names, or 401 (audited). The API takes the token
    from the Authorization header, the web client from its session cookie."""
    event = AuditEvent(event_type="auth.refused", outcome="refused", **request_context(request))
    try:
        claims = await verify_token(
            keyring, settings, token, certificate=presented_thumbprint(request, settings)
        )
    except InvalidToken as exc:
        event.refusal = "invalid_token"
        event.detail = {"problem": str(exc), "path": request.url.path}
        await refuse(session, event, _UNAUTHENTICATED)

    # Read in a transaction that takes no write lock, and end it: on SQLite an endpoint
    # then holds the database's one write lock for its own writes only, not while its
    # caller uploads a body or it works on one (every lookup needs that lock).
    await session.connection(execution_options={READ_ONLY_OPTION: True})
    principal = await _load(session, claims)
    await session.commit()
    event.principal = claims.subject
    event.detail = {"path": request.url.path}
    if principal is None:
        # Disabled, revoked, moved to another organisation, or a token we never issued.
        event.refusal = "principal_inactive"
        await refuse(session, event, _UNAUTHENTICATED)
    event.organisation_id = principal.organisation_id
    return principal


async def _load(session: AsyncSession, claims: TokenClaims) -> Principal | None:
    query = principal_query(claims)
    if query is None:
        return None
    result = await session.execute(PRINCIPAL_STATEMENTS[query.kind], query.parameters)
    return principal_from_row(query, result.mappings().first(), claims)


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

    @raises(kind_refusal, "missing_scope")
    async def dependency(
        request: Request, principal: CurrentPrincipal, session: SessionDep
    ) -> Principal:
        event = principal_event(
            request,
            principal,
            event_type,
            detail={"method": request.method, "path": request.url.path, "scope": scope.value},
        )
        if principal.organisation_kind not in kinds:
            event.refusal = kind_refusal
            detail = f"Only {kinds_text} organisations may do this."
            await refuse(session, event, ProblemError(403, "Forbidden", detail, code=kind_refusal))
        if scope.value not in principal.scopes:
            event.refusal = "missing_scope"
            detail = f"The token does not carry the {scope.value} scope."
            problem = ProblemError(403, "Forbidden", detail, code="missing_scope")
            await refuse(session, event, problem)
        return principal

    dependency.required_scope = scope.value  # for OpenAPI
    return dependency
