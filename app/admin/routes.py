"""/v1/admin: the service operator registers organisations, clients and users.

Every route is behind ``require_operator``: a service_operator principal whose
token carries ``admin``; anyone else gets 403 and the refusal is audited.
Every change is an audit event committed with the change, before the answer.
"""

import uuid
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin import service
from app.admin.schemas import (
    ClientCreate,
    ClientCreated,
    ClientKeySet,
    ClientRead,
    OrganisationCreate,
    OrganisationRead,
    OrganisationUpdate,
    UserCreate,
    UserRead,
)
from app.audit.service import commit_or_fail_closed, request_context
from app.auth.principals import Principal, require_scope
from app.deps import SessionDep
from app.errors import ProblemError, responses
from app.identity.models import Client, Organisation, OrganisationKind, Scope, User

require_operator = require_scope(
    Scope.admin,
    kinds=frozenset({OrganisationKind.service_operator}),
    event_type="admin.refused",
    kind_refusal="not_operator",
)
Operator = Annotated[Principal, Depends(require_operator)]

# Refused by default: a route added here without naming the operator is still guarded.
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_operator)])

Row = TypeVar("Row", Organisation, Client, User)
Limit = Annotated[int, Query(ge=1, le=1000)]
# Far beyond any list the operator keeps, and far inside the databases' 64-bit OFFSET:
# unbounded, 2**63 overflowed the driver (a 500) rather than being refused.
MAX_OFFSET = 1_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


# --- loading and committing ------------------------------------------------------------


async def _get(session: AsyncSession, model: type[Row], row_id: Any, what: str) -> Row:
    row = await session.get(model, row_id)
    if row is None:
        raise ProblemError(404, "Not found", f"No {what} with that id.", code=f"{what}_not_found")
    return row


async def _flush_or_conflict(session: AsyncSession, detail: str, code: str) -> None:
    """Surface a unique violation as 409 before the commit that would turn it into 503."""
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise ProblemError(409, "Conflict", detail, code=code) from exc


def _unprocessable(exc: ValueError) -> ProblemError:
    """A rule of the service refused the request (a scope, a role, a password)."""
    if isinstance(exc, service.WeakPassword):
        return ProblemError(422, "Weak password", str(exc), code="weak_password")
    return ProblemError(422, "Not permitted", str(exc), code="not_permitted")


def _client_read(client: Client) -> ClientRead:
    return ClientRead(
        client_id=client.id,
        organisation_id=client.organisation_id,
        name=client.name,
        scopes=client.scopes,
        active=client.active,
        created_at=client.created_at,
        secret_allowed=client.secret_allowed,
        public_jwks=client.public_jwks,
    )


def _client_created(client: Client, secret: str | None) -> ClientCreated:
    return ClientCreated(**_client_read(client).model_dump(), client_secret=secret)


# --- organisations ---------------------------------------------------------------------

_ORG_CONFLICT = "An organisation with that name or ODS code already exists."


@router.post(
    "/organisations",
    response_model=OrganisationRead,
    status_code=status.HTTP_201_CREATED,
    responses=responses("organisation_exists"),
    summary="Register an organisation",
)
async def create_organisation(
    body: OrganisationCreate, request: Request, operator: Operator, session: SessionDep
) -> OrganisationRead:
    organisation = service.create_organisation(
        session,
        actor=operator.subject,
        context=request_context(request),
        **body.model_dump(),
    )
    await _flush_or_conflict(session, _ORG_CONFLICT, "organisation_exists")
    await commit_or_fail_closed(session)
    return OrganisationRead.model_validate(organisation, from_attributes=True)


@router.get(
    "/organisations",
    response_model=list[OrganisationRead],
    summary="List organisations",
)
async def list_organisations(
    session: SessionDep,
    kind: OrganisationKind | None = None,
    active: bool | None = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[OrganisationRead]:
    rows = await service.list_organisations(
        session, kind=kind.value if kind else None, active=active, limit=limit, offset=offset
    )
    return [OrganisationRead.model_validate(row, from_attributes=True) for row in rows]


@router.get(
    "/organisations/{organisation_id}",
    response_model=OrganisationRead,
    responses=responses("organisation_not_found"),
    summary="Read an organisation",
)
async def read_organisation(organisation_id: uuid.UUID, session: SessionDep) -> OrganisationRead:
    organisation = await _get(session, Organisation, organisation_id, "organisation")
    return OrganisationRead.model_validate(organisation, from_attributes=True)


@router.patch(
    "/organisations/{organisation_id}",
    response_model=OrganisationRead,
    responses=responses("organisation_not_found", "own_organisation", "organisation_exists"),
    summary="Change an organisation's name or contact, or deactivate it (revokes it at once)",
)
async def update_organisation(
    organisation_id: uuid.UUID,
    body: OrganisationUpdate,
    request: Request,
    operator: Operator,
    session: SessionDep,
) -> OrganisationRead:
    organisation = await _get(session, Organisation, organisation_id, "organisation")
    if body.active is False and organisation.id == operator.organisation_id:
        # The operator would lock itself out; the CLI can still do it deliberately.
        raise ProblemError(
            409,
            "Conflict",
            "You may not deactivate your own organisation.",
            code="own_organisation",
        )
    await service.update_organisation(
        session,
        actor=operator.subject,
        organisation=organisation,
        changes=body.changes(),
        context=request_context(request),
    )
    await _flush_or_conflict(session, _ORG_CONFLICT, "organisation_exists")
    await commit_or_fail_closed(session)
    return OrganisationRead.model_validate(organisation, from_attributes=True)


# --- clients ---------------------------------------------------------------------------


async def _active_organisation(session: AsyncSession, organisation_id: uuid.UUID) -> Organisation:
    organisation = await _get(session, Organisation, organisation_id, "organisation")
    if not organisation.active:
        raise ProblemError(
            409, "Conflict", "The organisation is deactivated.", code="organisation_inactive"
        )
    return organisation


@router.post(
    "/clients",
    response_model=ClientCreated,
    status_code=status.HTTP_201_CREATED,
    responses=responses("organisation_not_found", "organisation_inactive", "not_permitted"),
    summary="Register a system client; its secret (if any) is in this answer only",
)
async def create_client(
    body: ClientCreate, request: Request, operator: Operator, session: SessionDep
) -> ClientCreated:
    organisation = await _active_organisation(session, body.organisation_id)
    secret: str | None = None
    try:
        if body.public_key is not None:
            client = service.create_key_client(
                session,
                actor=operator.subject,
                organisation=organisation,
                name=body.name,
                scopes=frozenset(body.scopes),
                public_jwks=body.public_key,
                context=request_context(request),
            )
        else:
            client, secret = service.create_client(
                session,
                actor=operator.subject,
                organisation=organisation,
                name=body.name,
                scopes=frozenset(body.scopes),
                context=request_context(request),
            )
    except service.NotPermitted as exc:
        raise _unprocessable(exc) from exc
    await commit_or_fail_closed(session)
    return _client_created(client, secret)


@router.put(
    "/clients/{client_id}/public-key",
    response_model=ClientRead,
    responses=responses("client_not_found", "organisation_not_found", "client_revoked"),
    summary="Register or replace a client's public keys (RFC 7523 private_key_jwt)",
)
async def set_client_public_key(
    client_id: str, body: ClientKeySet, request: Request, operator: Operator, session: SessionDep
) -> ClientRead:
    client, organisation = await _client_and_organisation(session, client_id)
    if not client.active:
        raise ProblemError(
            409, "Conflict", "The client is revoked; register a new one.", code="client_revoked"
        )
    service.set_client_key(
        session,
        actor=operator.subject,
        client=client,
        organisation=organisation,
        public_jwks=body.public_key,
        secret_allowed=body.secret_allowed,
        context=request_context(request),
    )
    await commit_or_fail_closed(session)
    return _client_read(client)


@router.get(
    "/clients",
    response_model=list[ClientRead],
    summary="List system clients (never their secrets)",
)
async def list_clients(
    session: SessionDep,
    organisation_id: uuid.UUID | None = None,
    active: bool | None = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[ClientRead]:
    rows = await service.list_clients(
        session, organisation_id=organisation_id, active=active, limit=limit, offset=offset
    )
    return [_client_read(row) for row in rows]


async def _client_and_organisation(
    session: AsyncSession, client_id: str
) -> tuple[Client, Organisation]:
    client = await _get(session, Client, client_id, "client")
    organisation = await _get(session, Organisation, client.organisation_id, "organisation")
    return client, organisation


@router.post(
    "/clients/{client_id}/rotate-secret",
    response_model=ClientCreated,
    responses=responses("client_not_found", "organisation_not_found", "client_revoked"),
    summary="Give a client a new secret (in this answer only); the old one stops working",
)
async def rotate_client_secret(
    client_id: str, request: Request, operator: Operator, session: SessionDep
) -> ClientCreated:
    client, organisation = await _client_and_organisation(session, client_id)
    if not client.active:
        raise ProblemError(
            409, "Conflict", "The client is revoked; register a new one.", code="client_revoked"
        )
    secret = service.reset_client_secret(
        session,
        actor=operator.subject,
        client=client,
        organisation=organisation,
        context=request_context(request),
    )
    await commit_or_fail_closed(session)
    return _client_created(client, secret)


@router.post(
    "/clients/{client_id}/revoke",
    response_model=ClientRead,
    responses=responses("client_not_found", "organisation_not_found"),
    summary="Revoke a client for good; its tokens fail on their next request",
)
async def revoke_client(
    client_id: str, request: Request, operator: Operator, session: SessionDep
) -> ClientRead:
    client, organisation = await _client_and_organisation(session, client_id)
    service.revoke_client(
        session,
        actor=operator.subject,
        client=client,
        organisation=organisation,
        context=request_context(request),
    )
    await commit_or_fail_closed(session)
    return _client_read(client)


# --- users -----------------------------------------------------------------------------


@router.post(
    "/users",
    response_model=UserRead,
    status_code=status.HTTP_201_CREATED,
    responses=responses(
        "organisation_not_found",
        "organisation_inactive",
        "not_permitted",
        "weak_password",
        "username_taken",
    ),
    summary="Register a user; scopes follow from the role",
)
async def create_user(
    body: UserCreate, request: Request, operator: Operator, session: SessionDep
) -> UserRead:
    organisation = await _active_organisation(session, body.organisation_id)
    try:
        user = service.create_user(
            session,
            actor=operator.subject,
            organisation=organisation,
            username=body.username,
            full_name=body.full_name,
            role=body.role,
            password=body.password.get_secret_value(),
            context=request_context(request),
        )
    except (service.NotPermitted, service.WeakPassword) as exc:
        raise _unprocessable(exc) from exc
    await _flush_or_conflict(session, "A user with that username already exists.", "username_taken")
    await commit_or_fail_closed(session)
    return UserRead.model_validate(user, from_attributes=True)


@router.get(
    "/users",
    response_model=list[UserRead],
    summary="List users (never their passwords)",
)
async def list_users(
    session: SessionDep,
    organisation_id: uuid.UUID | None = None,
    active: bool | None = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[UserRead]:
    rows = await service.list_users(
        session, organisation_id=organisation_id, active=active, limit=limit, offset=offset
    )
    return [UserRead.model_validate(row, from_attributes=True) for row in rows]


async def _set_user_active(
    session: AsyncSession, request: Request, operator: Principal, user_id: uuid.UUID, active: bool
) -> UserRead:
    user = await _get(session, User, user_id, "user")
    if not active and operator.kind == "user" and operator.id == str(user.id):
        raise ProblemError(409, "Conflict", "You may not disable yourself.", code="own_account")
    organisation = await _get(session, Organisation, user.organisation_id, "organisation")
    await service.set_user_active(
        session,
        actor=operator.subject,
        user=user,
        organisation=organisation,
        active=active,
        context=request_context(request),
    )
    await commit_or_fail_closed(session)
    return UserRead.model_validate(user, from_attributes=True)


@router.post(
    "/users/{user_id}/disable",
    response_model=UserRead,
    responses=responses("user_not_found", "organisation_not_found", "own_account"),
    summary="Disable a user; their tokens fail on their next request",
)
async def disable_user(
    user_id: uuid.UUID, request: Request, operator: Operator, session: SessionDep
) -> UserRead:
    return await _set_user_active(session, request, operator, user_id, active=False)


@router.post(
    "/users/{user_id}/enable",
    response_model=UserRead,
    responses=responses("user_not_found", "organisation_not_found"),
    summary="Enable a disabled user",
)
async def enable_user(
    user_id: uuid.UUID, request: Request, operator: Operator, session: SessionDep
) -> UserRead:
    return await _set_user_active(session, request, operator, user_id, active=True)
