"""The `cpr` command: database, demo bootstrap, keys, OpenAPI, and the operator's
organisation / client / user management (through the same service functions as
the admin API, so the same rules and the same audit events)."""

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from pydantic import BaseModel, ValidationError
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin import service as admin
from app.admin.schemas import Name, OrganisationCreate, Username
from app.apiclient import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    CommandError,
    progress,
    refusal,
    request,
    sign_in,
    sign_in_options,
)
from app.audit.archive import (
    Archived,
    ArchiveRefused,
    archived_event,
    delete_archived,
    verify_archive,
    write_archive,
)
from app.audit.chain import (
    CheckpointError,
    CheckpointSigner,
    CheckpointVerifier,
    ensure_key,
    rotate_key,
)
from app.audit.sealing import Sequencer, latest_copy, verifier_keys_path
from app.audit.verify import Report, verify_log, verify_since
from app.auth.assertions import InvalidPublicKey, public_jwks
from app.auth.lockout import unlock_event
from app.auth.models import AccessToken, UsedClientAssertion
from app.config import Settings, get_settings
from app.db import DATABASE_ERRORS, create_engine, create_sessionmaker, utcnow
from app.identity.models import Client, Organisation, OrganisationKind, Scope, User, UserRole
from app.logging import configure_logging
from app.lookup.schemas import Purpose
from app.register.cli import register_group
from app.register.csvformat import DATE_FORMATS, iso_date, plural
from app.register.identifiers import normalise_nhs_number
from app.register.retention import (
    BATCH_SIZE,
    MAX_BATCH_SIZE,
    PURGED,
    purge_batch,
    references,
    survey,
)
from app.register.retention import cutoff as retention_cutoff

if TYPE_CHECKING:  # imported where used: `cpr` starts fast for its other commands
    import httpx

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
ROOT = Path(__file__).resolve().parent.parent


def _with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def upgrade_database(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    if settings.is_sqlite:
        Path(settings.database_url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["settings"] = settings
    command.upgrade(config, "head")


@click.group()
def main() -> None:
    """cp-register: the child protection plan lookup service."""
    # Logs go to stderr as JSON; stdout carries what the command prints for people.
    try:
        settings = get_settings()
    except ValidationError as exc:
        wrong = "; ".join(_message(error) for error in exc.errors(include_input=False))
        raise CommandError(
            f"the settings (environment) are wrong: {wrong}", EXIT_BAD_INPUT
        ) from exc
    configure_logging(settings.log_level, "stderr")


def _message(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    text = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {text}" if where else text


main.add_command(register_group)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (SQLite file or PostgreSQL, from DATABASE_URL)."""
    upgrade_database(get_settings())
    click.echo("database is at the latest schema")


@main.group()
def demo() -> None:
    """Demonstration data."""


@demo.command("bootstrap")
@click.option(
    "--credentials",
    type=click.Path(path_type=Path),
    default=Path("var/demo-credentials.json"),
    show_default=True,
)
def demo_bootstrap(credentials: Path) -> None:
    """Create demo organisations, principals, keys and register entries (idempotent)."""
    from app.auth.keys import ensure_signing_key
    from app.demo import ACTOR, bootstrap

    settings = get_settings()

    saved = json.loads(credentials.read_text()) if credentials.exists() else {}

    async def work(session: AsyncSession) -> dict[str, Any]:
        await ensure_signing_key(session, settings.key_dir, actor=ACTOR)
        return await bootstrap(session, saved)

    created = _with_session(settings, work)
    credentials.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(created, file, indent=2)
        file.write("\n")
    credentials.chmod(0o600)
    click.echo(f"Demo credentials (also in {credentials}, mode 600):")
    click.echo(json.dumps(created, indent=2))


@main.group()
def keys() -> None:
    """Token signing keys."""


@keys.command("rotate")
@click.option(
    "--overlap-seconds",
    type=int,
    default=None,
    help="How long the old key keeps verifying (default: token lifetime + leeway).",
)
def keys_rotate(overlap_seconds: int | None) -> None:
    """Add a new signing key; the current one retires after the overlap window."""
    from app.auth.keys import rotate_signing_key

    settings = get_settings()
    overlap = overlap_seconds
    if overlap is None:
        overlap = settings.token_ttl_seconds + settings.token_leeway_seconds

    async def work(session: AsyncSession) -> str:
        key = await rotate_signing_key(
            session, settings.key_dir, overlap_seconds=overlap, actor="cli:keys-rotate"
        )
        await session.commit()
        return key.kid

    kid = _with_session(settings, work)
    click.echo(f"new signing key {kid}; private key in {settings.key_dir / (kid + '.pem')}")


@main.command("openapi")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=ROOT / "openapi" / "openapi.json",
    show_default=True,
)
def openapi(output: Path) -> None:
    """Write the OpenAPI document the app serves."""
    from app.main import create_app

    document = create_app(get_settings()).openapi()
    output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {output}")


@main.command("worker")
def worker() -> None:
    """Seal and checkpoint the log, derive notifications, deliver webhooks: one worker
    active at a time across replicas, the others standing by (app/worker.py). Its probes
    answer on CPR_WORKER_HEALTH_HOST:CPR_WORKER_HEALTH_PORT (GET /livez, /readyz)."""
    import uvicorn

    from app.worker import create_worker_app

    settings = get_settings()
    try:
        app = create_worker_app(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.worker_health_host,
            port=settings.worker_health_port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    server.run()
    if not server.started:
        sys.exit(3)


# --- organisations, clients, users -----------------------------------------------------

SHOWN_ONCE = "Shown this once: only a hash is stored. Hand it over securely now."


def _admin_work(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run one change and commit it, turning the service's refusals into CLI errors."""

    async def commit_after(session: AsyncSession) -> T:
        result = await work(session)
        await session.commit()
        return result

    try:
        return _with_session(get_settings(), commit_after)
    except (admin.NotPermitted, admin.WeakPassword) as exc:
        raise click.ClickException(str(exc)) from exc
    except IntegrityError as exc:
        raise click.ClickException("that name, ODS code or username is already taken") from exc


def _validated(model: type[M], **data: Any) -> M:
    """The admin API's own input rules, applied to command-line options."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'input'}: {err['msg']}"
            for err in exc.errors()
        )
        raise click.ClickException(problems) from exc


class _UserNames(BaseModel):
    """A user's names, checked by the same rules as the admin API's ``UserCreate``."""

    username: Username
    full_name: Name


def _as_uuid(reference: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(reference)
    except ValueError:
        return None


async def _organisation(session: AsyncSession, reference: str) -> Organisation:
    """An organisation by id or by exact name."""
    org_id = _as_uuid(reference)
    condition = Organisation.id == org_id if org_id else Organisation.name == reference
    organisation = await session.scalar(select(Organisation).where(condition))
    if organisation is None:
        raise click.ClickException(f"no organisation {reference!r}")
    return organisation


async def _client(session: AsyncSession, client_id: str) -> tuple[Client, Organisation]:
    client = await session.get(Client, client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    return client, await _organisation(session, str(client.organisation_id))


async def _user(session: AsyncSession, reference: str) -> tuple[User, Organisation]:
    """A user by id or by username."""
    user_id = _as_uuid(reference)
    condition = User.id == user_id if user_id else User.username == reference
    user = await session.scalar(select(User).where(condition))
    if user is None:
        raise click.ClickException(f"no user {reference!r}")
    return user, await _organisation(session, str(user.organisation_id))


def _echo_organisation(organisation: Organisation) -> None:
    state = "active" if organisation.active else "deactivated"
    ods = organisation.ods_code or "-"
    click.echo(f"{organisation.id}\t{organisation.kind}\t{state}\t{ods}\t{organisation.name}")


@main.group()
def org() -> None:
    """Organisations: reference points, local authorities, the operator."""


@org.command("create")
@click.option("--kind", type=click.Choice([kind.value for kind in OrganisationKind]), required=True)
@click.option("--name", required=True)
@click.option("--ods-code", default=None)
@click.option("--contact-name", required=True, help="Whom reference points are told to call.")
@click.option("--contact-phone", required=True, help="Their 24-hour number.")
def org_create(
    kind: str, name: str, ods_code: str | None, contact_name: str, contact_phone: str
) -> None:
    """Register an organisation."""
    data = _validated(
        OrganisationCreate,
        kind=kind,
        name=name,
        ods_code=ods_code,
        contact_name=contact_name,
        contact_phone=contact_phone,
    )

    async def work(session: AsyncSession) -> Organisation:
        organisation = admin.create_organisation(
            session, actor="cli:org-create", **data.model_dump()
        )
        await session.flush()
        return organisation

    _echo_organisation(_admin_work(work))


@org.command("list")
@click.option("--kind", type=click.Choice([kind.value for kind in OrganisationKind]))
def org_list(kind: str | None) -> None:
    """List organisations: id, kind, state, ODS code, name (tab-separated)."""

    async def work(session: AsyncSession) -> list[Organisation]:
        return await admin.list_organisations(session, kind=kind)

    for organisation in _with_session(get_settings(), work):
        _echo_organisation(organisation)


def _set_organisation_active(reference: str, *, active: bool, actor: str) -> None:
    async def work(session: AsyncSession) -> Organisation:
        organisation = await _organisation(session, reference)
        return await admin.update_organisation(
            session, actor=actor, organisation=organisation, changes={"active": active}
        )

    _echo_organisation(_admin_work(work))


@org.command("disable")
@click.argument("organisation")
def org_disable(organisation: str) -> None:
    """Deactivate an organisation (id or name): its clients and users stop working at once."""
    _set_organisation_active(organisation, active=False, actor="cli:org-disable")


@org.command("enable")
@click.argument("organisation")
def org_enable(organisation: str) -> None:
    """Reactivate an organisation (id or name)."""
    _set_organisation_active(organisation, active=True, actor="cli:org-enable")


@main.group("client")
def client_group() -> None:
    """System clients (OAuth2 client credentials)."""


def _echo_secret(client: Client, secret: str | None) -> None:
    click.echo(f"client_id: {client.id}")
    if secret is None:
        click.echo("client_auth: private_key_jwt (its secret is refused)")
        return
    click.echo(f"client_secret: {secret}")
    click.echo(SHOWN_ONCE, err=True)


def _read_public_key(path: Path) -> dict[str, Any]:
    """A JWKS or PEM public key file, as the JWKS the service stores."""
    try:
        return public_jwks(path.read_text(encoding="utf-8"))
    except (InvalidPublicKey, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


_PUBLIC_KEY_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@client_group.command("create")
@click.option("--org", "organisation", required=True, help="Organisation id or name.")
@click.option("--name", required=True, help="The system, e.g. 'Northshire General EPR'.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice([scope.value for scope in Scope]),
    default=[Scope.lookup.value],
    show_default=True,
)
@click.option(
    "--public-key",
    type=_PUBLIC_KEY_FILE,
    help="A JWKS or PEM public key: the client signs RFC 7523 assertions, no secret.",
)
def client_create(
    organisation: str, name: str, scopes: tuple[str, ...], public_key: Path | None
) -> None:
    """Register a system client and print its secret, once (none with --public-key)."""
    keys = _read_public_key(public_key) if public_key is not None else None

    async def work(session: AsyncSession) -> tuple[Client, str | None]:
        owner = await _organisation(session, organisation)
        granted = frozenset(Scope(scope) for scope in scopes)
        if keys is not None:
            client = admin.create_key_client(
                session,
                actor="cli:client-create",
                organisation=owner,
                name=name,
                scopes=granted,
                public_jwks=keys,
            )
            return client, None
        return admin.create_client(
            session, actor="cli:client-create", organisation=owner, name=name, scopes=granted
        )

    _echo_secret(*_admin_work(work))


@client_group.command("rotate")
@click.argument("client_id")
def client_rotate(client_id: str) -> None:
    """Give a client a new secret (printed once); the old one stops working."""

    async def work(session: AsyncSession) -> tuple[Client, str]:
        client, organisation = await _client(session, client_id)
        if not client.active:
            raise click.ClickException("the client is revoked; register a new one")
        secret = admin.reset_client_secret(
            session, actor="cli:client-rotate", client=client, organisation=organisation
        )
        return client, secret

    _echo_secret(*_admin_work(work))


@client_group.command("set-key")
@click.argument("client_id")
@click.argument("public_key", type=_PUBLIC_KEY_FILE)
@click.option(
    "--refuse-secret/--allow-secret",
    "refuse_secret",
    default=None,
    help="Refuse (or allow again) the client's shared secret. Default: unchanged.",
)
def client_set_key(client_id: str, public_key: Path, refuse_secret: bool | None) -> None:
    """Register or replace a client's public keys (JWKS or PEM) for private_key_jwt."""
    keys = _read_public_key(public_key)

    async def work(session: AsyncSession) -> Client:
        client, organisation = await _client(session, client_id)
        if not client.active:
            raise click.ClickException("the client is revoked; register a new one")
        return admin.set_client_key(
            session,
            actor="cli:client-set-key",
            client=client,
            organisation=organisation,
            public_jwks=keys,
            secret_allowed=None if refuse_secret is None else not refuse_secret,
        )

    client = _admin_work(work)
    allowed = "allowed" if client.secret_allowed else "refused"
    click.echo(f"{client.id}: {len(keys['keys'])} public key(s); secret {allowed}")


@client_group.command("revoke")
@click.argument("client_id")
def client_revoke(client_id: str) -> None:
    """Revoke a client for good: its tokens fail on their next request."""

    async def work(session: AsyncSession) -> Client:
        client, organisation = await _client(session, client_id)
        return admin.revoke_client(
            session, actor="cli:client-revoke", client=client, organisation=organisation
        )

    click.echo(f"revoked {_admin_work(work).id}")


@main.group()
def user() -> None:
    """Staff users (thin client and CLI sign-in)."""


def _create_user(
    organisation: str, username: str, full_name: str, role: UserRole, password: str, actor: str
) -> User:
    async def work(session: AsyncSession) -> User:
        owner = await _organisation(session, organisation)
        created = admin.create_user(
            session,
            actor=actor,
            organisation=owner,
            username=username,
            full_name=full_name,
            role=role,
            password=password,
        )
        await session.flush()
        return created

    return _admin_work(work)


@user.command("create")
@click.option("--org", "organisation", required=True, help="Organisation id or name.")
@click.option("--username", required=True)
@click.option("--full-name", required=True)
@click.option("--role", type=click.Choice([role.value for role in UserRole]), required=True)
@click.option(
    "--prompt-password",
    is_flag=True,
    help="Type the password (hidden) instead of having one generated and printed once.",
)
def user_create(
    organisation: str, username: str, full_name: str, role: str, prompt_password: bool
) -> None:
    """Register a user; their scopes follow from the role."""
    names = _validated(_UserNames, username=username, full_name=full_name)
    if prompt_password:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = admin.new_password(names.username)
    created = _create_user(
        organisation, names.username, names.full_name, UserRole(role), password, "cli:user-create"
    )
    click.echo(f"user {created.username} ({created.id}), role {created.role}")
    if not prompt_password:
        click.echo(f"password: {password}")
        click.echo(SHOWN_ONCE, err=True)


def _set_user_active(reference: str, *, active: bool, actor: str) -> None:
    async def work(session: AsyncSession) -> User:
        found, organisation = await _user(session, reference)
        return await admin.set_user_active(
            session, actor=actor, user=found, organisation=organisation, active=active
        )

    changed = _admin_work(work)
    click.echo(f"{'enabled' if active else 'disabled'} {changed.username} ({changed.id})")


@user.command("disable")
@click.argument("user_ref", metavar="USER")
def user_disable(user_ref: str) -> None:
    """Disable a user (username or id): their tokens fail on their next request."""
    _set_user_active(user_ref, active=False, actor="cli:user-disable")


@user.command("enable")
@click.argument("user_ref", metavar="USER")
def user_enable(user_ref: str) -> None:
    """Enable a disabled user (username or id)."""
    _set_user_active(user_ref, active=True, actor="cli:user-enable")


@user.command("unlock")
@click.argument("user_ref", metavar="USER")
def user_unlock(user_ref: str) -> None:
    """Lift a user's sign-in lockouts (username or id), per address and account-wide."""

    async def work(session: AsyncSession) -> User:
        found, organisation = await _user(session, user_ref)
        session.add(
            unlock_event(
                login_key=f"user:{found.id}",
                actor="cli:user-unlock",
                organisation_id=organisation.id,
                name=found.username,
            )
        )
        return found

    unlocked = _admin_work(work)
    click.echo(f"unlocked {unlocked.username} ({unlocked.id})")


@main.group("admin")
def admin_group() -> None:
    """Bootstrap of the service operator."""


@admin_group.command("create-operator")
@click.option("--username", required=True)
@click.option("--full-name", required=True)
@click.option(
    "--organisation", default="cp-register operations", show_default=True, help="Its name."
)
@click.option("--contact-name", default=None, help="Defaults to the organisation's name.")
@click.option("--contact-phone", required=True, help="The operator's 24-hour number.")
def admin_create_operator(
    username: str,
    full_name: str,
    organisation: str,
    contact_name: str | None,
    contact_phone: str,
) -> None:
    """Create an operator user (and the service_operator organisation if missing).

    The password is generated and printed once.
    """
    actor = "cli:admin-create-operator"
    spec = _validated(
        OrganisationCreate,
        kind=OrganisationKind.service_operator,
        name=organisation,
        contact_name=contact_name or organisation,
        contact_phone=contact_phone,
    )

    names = _validated(_UserNames, username=username, full_name=full_name)

    async def work(session: AsyncSession) -> tuple[User, Organisation, str]:
        owner = await session.scalar(select(Organisation).where(Organisation.name == spec.name))
        if owner is None:
            owner = admin.create_organisation(session, actor=actor, **spec.model_dump())
        elif owner.kind != OrganisationKind.service_operator:
            raise click.ClickException(f"{spec.name!r} exists and is a {owner.kind}")
        password = admin.new_password(names.username)
        created = admin.create_user(
            session,
            actor=actor,
            organisation=owner,
            username=names.username,
            full_name=names.full_name,
            role=UserRole.operator,
            password=password,
        )
        await session.flush()
        return created, owner, password

    created, owner, password = _admin_work(work)
    click.echo(f"operator {created.username} ({created.id}) in {owner.name} ({owner.id})")
    click.echo(f"password: {password}")
    click.echo(SHOWN_ONCE, err=True)


@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log."""


def _signer(settings: Settings, *, create: bool = False) -> CheckpointSigner:
    return CheckpointSigner.from_file(
        settings.checkpoint_key_path,
        settings.audit_log_origin,
        create=create,
        verifier_keys=verifier_keys_path(settings),
    )


@audit_group.command("keygen")
@click.option(
    "--rotate",
    is_flag=True,
    help="Replace the key with a new one. The old one stays in the verifier-key history "
    "(its public half only), valid for what it signed until it retires.",
)
@click.option(
    "--overlap-seconds",
    type=click.IntRange(min=0),
    default=600,
    show_default=True,
    help="With --rotate: how long the old key may still sign, for replicas that have not "
    "seen the new key yet. 0 when the old key may be compromised.",
)
def audit_keygen(rotate: bool, overlap_seconds: int) -> None:
    """Create the Ed25519 checkpoint key and its verifier-key history (if missing), or
    rotate the key; print the verifier key and the history to publish."""
    settings = get_settings()
    key_path, history_path = settings.checkpoint_key_path, verifier_keys_path(settings)
    try:
        if rotate:
            history, resumed = rotate_key(
                key_path, settings.audit_log_origin, history_path, overlap=overlap_seconds
            )
        else:
            history, resumed = ensure_key(key_path, settings.audit_log_origin, history_path), False
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"checkpoint key: {key_path}")
    click.echo(f"verifier keys (public; publish to auditors): {history_path}")
    if rotate:
        retired = history.keys[-2]
        when = datetime.fromtimestamp(retired.retired_at or 0, UTC).isoformat()
        done = "finished the interrupted rotation" if resumed else "rotated"
        click.echo(f"{done}: retired key (signs until {when}): {retired.vkey}")
    click.echo(f"verifier key (give this to auditors): {history.vkey}")


@audit_group.command("checkpoint")
def audit_checkpoint() -> None:
    """Seal every pending event now and sign a checkpoint."""
    settings = get_settings()

    async def run() -> str:
        engine = create_engine(settings)
        try:
            sequencer = Sequencer(create_sessionmaker(engine), _signer(settings), settings)
            _, signed = await sequencer.run_once(checkpoint=True)
        finally:
            await engine.dispose()
        return signed.note if signed else "the log is empty\n"

    click.echo(asyncio.run(run()), nl=False)


@audit_group.command("verify")
@click.option(
    "--checkpoint",
    "held",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A checkpoint note held outside the database.",
)
@click.option(
    "--verifier-key",
    default=None,
    help="Check signatures with this key (name+hash+key) instead of the local one; with "
    "--verifier-keys, the key the history must contain (the one you were first given).",
)
@click.option(
    "--verifier-keys",
    "verifier_keys",
    default=None,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A published verifier-key history (JSON): each checkpoint is checked with the key "
    "that signed it, within that key's validity. Public keys only: no private key needed.",
)
@click.option(
    "--since",
    "since",
    default=None,
    metavar="CHECKPOINT",
    help="Incremental: a signed checkpoint you hold (its file, or its text). Its signature "
    "is checked, and that the log still has its head at its size; then only the events "
    "sealed after it are verified.",
)
@click.option(
    "--keep",
    "keep",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="When the log verifies, write here the newest checkpoint it was found to extend: "
    "the one to verify --since next time (it may be the --since file itself).",
)
@click.option(
    "--archive",
    "archive",
    default=None,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Verify an archive file (cpr audit archive) on its own, without the database.",
)
def audit_verify(
    held: tuple[Path, ...],
    verifier_key: str | None,
    verifier_keys: Path | None,
    since: str | None,
    keep: Path | None,
    archive: Path | None,
) -> None:
    """Recompute every hash and signature (or, with --since, those after a checkpoint
    held); exit 1 naming the first problem.

    \b
    Exit codes: 0 the log verifies; 1 it does not (or the keys given do not);
    2 bad options; 4 the database cannot be reached (DATABASE_URL).
    """
    settings = get_settings()
    if archive is not None and (since is not None or held or keep is not None):
        raise click.UsageError(
            "--archive verifies the file alone: no --since, --checkpoint, --keep"
        )
    start = None if since is None else _held_note(since)
    try:
        verifier = _audit_verifier(settings, verifier_key, verifier_keys)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if archive is not None:
        _echo_report(verify_archive(archive, verifier), f" in {archive.name}")
        return
    notes = [path.read_text() for path in held]
    latest = latest_copy(settings.checkpoint_dir)
    notes += [] if latest is None else [latest]
    delay = timedelta(seconds=settings.sealing_delay_seconds)

    async def work(session: AsyncSession) -> Report:
        if start is None:
            return await verify_log(session, verifier, sealing_delay=delay, held_checkpoints=notes)
        return await verify_since(
            session, verifier, start, sealing_delay=delay, held_checkpoints=notes
        )

    try:
        report = _with_session(settings, work)
    except DATABASE_ERRORS as exc:
        raise _database_unreachable(settings, exc) from exc
    after = "" if start is None else f" after size {report.since}"
    origin = "" if start is None else f", from the checkpoint held at size {report.since}"
    _echo_report(report, after, origin)
    if keep is not None and report.newest is not None:
        try:
            _keep_checkpoint(keep, report.newest)
        except OSError as exc:
            raise click.ClickException(f"the log verifies, but {keep}: {exc}") from exc
        size = report.newest.split("\n")[1]
        click.echo(f"kept the checkpoint at size {size} in {keep}")


def _echo_report(report: Report, after: str = "", origin: str = "") -> None:
    """The verification's result; exit 1 (after naming each problem) unless it verifies."""
    click.echo(
        f"size {report.size}, head {report.head}, "
        f"{report.checkpoints_checked} checkpoints checked{origin}"
    )
    if report.ok:
        click.echo(f"OK: every event, hash and checkpoint{after} verifies")
        return
    for finding in report.findings:
        where = f"position {finding.position}" if finding.position else ""
        event = f"event {finding.event_id}" if finding.event_id else ""
        named = " ".join(part for part in (finding.kind, where, event) if part)
        click.echo(f"FAILED {named}: {finding.detail}")
    sys.exit(EXIT_FAILED)


@audit_group.command("archive")
@click.option(
    "--before",
    "before",
    required=True,
    metavar="CHECKPOINT",
    help="The signed checkpoint that closes the segment (its file, or its text): every "
    "event up to its size is written.",
)
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The file to write (never replaced): `cpr audit verify --archive` verifies it alone.",
)
def audit_archive(before: str, to: Path) -> None:
    """Write the closed segment of the log (after the last one archived) up to a
    checkpoint to a file that verifies on its own (events in canonical form, their seals,
    the checkpoints that open and close it); then, if every event in it is older than
    CPR_AUDIT_RETENTION_DAYS and the command runs as the schema owner, delete it from the
    database (docs/audit-log.md, "Retention"). Either is recorded in the log.

    \b
    Exit codes: 0 written; 1 the checkpoint or the chain up to it does not verify
    (nothing written), or the database refused the deletion; 2 bad options or the file
    exists; 4 the database cannot be reached.
    """
    settings = get_settings()
    closing = _held_note(before, "--before")
    if to.exists():
        raise CommandError(f"{to} exists: an archive is never replaced", EXIT_BAD_INPUT)
    try:
        verifier = _audit_verifier(settings, None, None)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc

    async def work(session: AsyncSession) -> tuple[Archived, int | None, str | None]:
        archived = await write_archive(session, verifier, closing, to)
        await session.rollback()  # the read's transaction; the rest is written apart
        kept = _kept_because(settings, archived)
        deleted = None
        if kept is None:
            try:
                deleted = await delete_archived(session, archived)
            except DBAPIError as exc:
                await session.rollback()
                raise CommandError(
                    f"the database refused the deletion ({type(exc.orig).__name__}); "
                    f"nothing was deleted, and {to} holds the segment",
                    EXIT_FAILED,
                ) from exc
        session.add(archived_event(archived, to, "cli:audit-archive", deleted=deleted))
        await session.commit()
        return archived, deleted, kept

    try:
        archived, deleted, kept = _with_session(settings, work)
    except ArchiveRefused as exc:
        click.echo(f"FAILED {exc}; nothing was written")
        sys.exit(EXIT_FAILED)
    except FileExistsError as exc:
        raise CommandError(f"{to} exists: an archive is never replaced", EXIT_BAD_INPUT) from exc
    except DATABASE_ERRORS as exc:
        raise _database_unreachable(settings, exc) from exc
    click.echo(
        f"wrote positions {archived.from_size + 1} to {archived.size} (head {archived.head}) "
        f"to {to}, sha256 {archived.sha256}"
    )
    if deleted is None:
        click.echo(f"nothing deleted: {kept}")
    else:
        click.echo(
            f"deleted {deleted} events from the database; the log now starts after "
            f"position {archived.size}"
        )


def _kept_because(settings: Settings, archived: Archived) -> str | None:
    """Why the segment stays in the database too, or None: it may be deleted."""
    days = settings.audit_retention_days
    if days is None:
        return "no retention period is set (CPR_AUDIT_RETENTION_DAYS)"
    if settings.database_role is not None:
        role = settings.database_role
        return (
            f"the command acts as the role {role}, which has no right to this deletion; "
            "run it as the schema owner (its DATABASE_URL, no CPR_DATABASE_ROLE)"
        )
    newest = archived.last_occurred_at
    if newest is None or newest > utcnow() - timedelta(days=days):
        return f"events in it are within the retention period ({days} days)"
    return None


# --- register retention --------------------------------------------------------------------


@register_group.command("purge-ended")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would be deleted (entries per authority) and delete nothing.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=BATCH_SIZE,
    show_default=True,
    help="Entries per transaction (each batch is one authority's, with its own audit event).",
)
def register_purge_ended(dry_run: bool, batch_size: int) -> None:
    """Delete the register entries that ended more than CPR_REGISTER_ENDED_RETENTION_DAYS
    ago, with their versions, unless another row still refers to them; as the schema
    owner (its DATABASE_URL, no CPR_DATABASE_ROLE), as for `cpr audit archive`. Each
    batch is recorded in the log (register.purged) in the transaction that deletes it
    (docs/audit-log.md, "Retention").

    \b
    Exit codes: 0 done (or nothing to do, or no retention period set: nothing
    deleted); 1 the database refused a deletion (that batch was not deleted);
    3 not run as the schema owner (nothing deleted); 4 the database cannot be reached.
    """
    settings = get_settings()
    days = settings.register_ended_retention_days
    if days is None:
        click.echo(
            "nothing deleted: no retention period is set (CPR_REGISTER_ENDED_RETENTION_DAYS)"
        )
        return
    if settings.database_role is not None and not dry_run:
        click.echo(
            f"nothing deleted: the command acts as the role {settings.database_role}, which "
            "has no right to this deletion; run it as the schema owner (its DATABASE_URL, "
            "no CPR_DATABASE_ROLE)"
        )
        sys.exit(EXIT_REFUSED)
    before = retention_cutoff(date.today(), days)

    async def work(session: AsyncSession) -> None:
        found = await references(session)
        authorities = await survey(session, before, found)
        await session.rollback()
        click.echo(
            f"entries that ended before {before.isoformat()} (more than {days} days ago):"
            + ("" if authorities else " none")
        )
        referring = ", ".join(reference.name for reference in found)
        for due in authorities:
            named = f"{due.authority} ({due.authority_id})"
            verb = "would delete" if dry_run else "to delete"
            click.echo(f"  {named}: {verb} {plural(due.due, 'entry')}")
            if due.kept:
                click.echo(
                    f"  {named}: keeping {plural(due.kept, 'entry')} that other rows still "
                    f"refer to ({referring})"
                )
        total = sum(due.due for due in authorities)
        if dry_run:
            click.echo("dry run: nothing deleted")
            return
        if total == 0:
            click.echo("nothing deleted: no entry is due")
            return
        deleted = versions = 0
        with progress("Deleting ended entries", total) as step:
            for due in authorities:
                while due.due:
                    try:
                        purged = await purge_batch(
                            session,
                            due.authority_id,
                            before=before,
                            days=days,
                            found=found,
                            batch_size=batch_size,
                        )
                        await session.commit()
                    except DBAPIError as exc:
                        await session.rollback()
                        raise CommandError(
                            f"the database refused the deletion ({type(exc.orig).__name__}); "
                            f"that batch was not deleted (before it: {plural(deleted, 'entry')} "
                            "deleted, each batch with its audit event)",
                            EXIT_FAILED,
                        ) from exc
                    if purged is None:
                        break
                    deleted += len(purged.entry_ids)
                    versions += purged.versions
                    step(len(purged.entry_ids))
        click.echo(
            f"deleted {plural(deleted, 'entry')} with {plural(versions, 'version')}; "
            f"each batch recorded in the log ({PURGED})"
        )

    try:
        _with_session(settings, work)
    except DATABASE_ERRORS as exc:
        raise _database_unreachable(settings, exc, "deleted") from exc


def _keep_checkpoint(path: Path, note: str) -> None:
    """Written aside and renamed into place: the file holds the old note or the new."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    aside.write_text(note, encoding="utf-8")
    os.replace(aside, path)


def _held_note(value: str, option: str = "--since") -> str:
    """A checkpoint note's file, or the note itself (it spans several lines)."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{value} cannot be read ({exc})", param_hint=option) from exc
    if "\n" in value:
        return value
    raise click.BadParameter(f"{value} is neither a file nor a checkpoint note", param_hint=option)


def _database_unreachable(
    settings: Settings, exc: BaseException, undone: str = "verified"
) -> CommandError:
    where = settings.database_url.split("@")[-1]  # never the password
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CommandError(
        f"cannot reach the database ({where}): {reason[:200]}; nothing was {undone}",
        EXIT_UNAVAILABLE,
    )


def _audit_verifier(
    settings: Settings, verifier_key: str | None, verifier_keys: Path | None
) -> CheckpointVerifier:
    """What `cpr audit verify` checks signatures with: what it was given, else the local
    history (public), else the local key."""
    if verifier_keys is not None:
        history = CheckpointVerifier.from_file(verifier_keys)
        if verifier_key is not None:
            pinned = CheckpointVerifier.from_vkey(verifier_key).current
            if history.key_for(pinned.name, pinned.public_key) is None:
                raise CheckpointError(f"{verifier_keys} does not contain the key {verifier_key}")
        return history
    if verifier_key is not None:
        return CheckpointVerifier.from_vkey(verifier_key)
    local = verifier_keys_path(settings)
    if local.exists():
        return CheckpointVerifier.from_file(local)
    return _signer(settings).verifier


@main.group("tokens")
def tokens_group() -> None:
    """Issued access tokens."""


@tokens_group.command("purge")
@click.option("--older-than-hours", type=int, default=24, show_default=True)
def tokens_purge(older_than_hours: int) -> None:
    """Forget tokens that expired long ago (run daily; their jti can never verify again)."""
    settings = get_settings()
    cutoff = utcnow() - timedelta(hours=older_than_hours)

    async def work(session: AsyncSession) -> int:
        result = await session.execute(delete(AccessToken).where(AccessToken.expires_at < cutoff))
        # Client assertions' jti: once expired they are refused whatever the table says.
        await session.execute(
            delete(UsedClientAssertion).where(UsedClientAssertion.expires_at < utcnow())
        )
        await session.commit()
        return cast(CursorResult[Any], result).rowcount  # a DELETE's result has one

    click.echo(f"purged {_with_session(settings, work)} expired tokens")


def _purposes_by_kind() -> str:
    """Which purpose each kind of reference point may give (CPR_PURPOSES_BY_KIND as the
    service is set up by default; the service's own list decides, and refuses others)."""
    default = Settings.model_fields["purposes_by_kind"].default
    return "\n".join(
        f"  {kind.replace('_', ' ')}: {', '.join(sorted(purposes))}"
        for kind, purposes in default.items()
    )


LOOKUP_EPILOG = f"""\b
Asks for whatever is not given: username and password (unless CPR_USERNAME,
CPR_PASSWORD are set), the child (NHS number, or names and date of birth),
the purpose and the reason.
\b
Purposes by kind of organisation:
{_purposes_by_kind()}
\b
Exit codes: 0 answered (on plan, not on plan, or refer to custodian);
2 bad input (an option, an NHS number or a date that is not one);
3 refused (sign-in, purpose, permission or volume limit: the message says
whom to call where the service says so); 4 the service cannot be reached or
is unavailable. Every error is one line on stderr.
"""


def _child(
    nhs_number: str | None, given_name: str | None, family_name: str | None, born: str | None
) -> dict[str, str]:
    """The subject of the lookup: what was given, and what was not asked for at the prompt."""
    if not (nhs_number or given_name or family_name or born):
        nhs_number = click.prompt(
            "NHS number (Enter to give names and date of birth instead)",
            default="",
            show_default=False,
        ).strip()
    if not nhs_number:
        given_name = given_name or click.prompt("Given name").strip()
        family_name = family_name or click.prompt("Family name").strip()
        born = born or click.prompt("Date of birth (DD/MM/YYYY)").strip()
    subject = {}
    if nhs_number:
        try:
            subject["nhs_number"] = normalise_nhs_number(nhs_number)
        except ValueError as exc:
            raise CommandError(f"NHS number: {exc}", EXIT_BAD_INPUT) from exc
    if born:
        date_of_birth = iso_date(born.strip())
        if date_of_birth is None:
            message = f"date of birth: not a date: give {DATE_FORMATS}"
            raise CommandError(message, EXIT_BAD_INPUT)
        subject["date_of_birth"] = date_of_birth
    subject["given_name"] = (given_name or "").strip()
    subject["family_name"] = (family_name or "").strip()
    return {key: value for key, value in subject.items() if value}


PURPOSES = [purpose.value for purpose in Purpose]


def _purpose(http: "httpx.Client", headers: dict[str, str], given: str | None) -> str:
    """The purpose, from the ones the service says the caller's organisation may give
    (GET /v1/lookups/purposes): asked for, its own offered first, when not given; one
    it may not give refused here, in one line, before anything is asked."""
    offered = request(http, "GET", "/v1/lookups/purposes", headers=headers)
    if offered.status_code != 200:
        raise refusal(offered)
    body = offered.json()
    codes = [purpose["code"] for purpose in body["purposes"]]
    kind = body["organisation_kind"].replace("_", " ")
    if given is not None:
        if given not in codes:
            raise CommandError(
                f"Your organisation ({kind}) may not give the purpose {given!r}: "
                f"use one of {', '.join(codes)}.",
                EXIT_REFUSED,
            )
        return given
    for number, purpose in enumerate(body["purposes"], start=1):
        click.echo(f"  {number}. {purpose['label']} ({purpose['code']})", err=True)
    choice = click.prompt(
        "Purpose (number or code)",
        type=click.Choice([*codes, *(str(n) for n in range(1, len(codes) + 1))]),
        default=body["default"] or None,
        show_choices=False,
    )
    return codes[int(choice) - 1] if choice.isdigit() else choice


@main.command("lookup", epilog=LOOKUP_EPILOG)
@sign_in_options
@click.option("--nhs-number", default=None, help="The child's (or, unborn, the mother's).")
@click.option("--given-name", default=None)
@click.option("--family-name", default=None)
@click.option("--date-of-birth", default=None, help="DD/MM/YYYY or YYYY-MM-DD.")
@click.option(
    "--purpose",
    type=click.Choice(PURPOSES),
    default=None,
    help="Of use: one your kind of organisation may give (below); asked for when not given.",
)
@click.option("--reason", default=None, help="Free text, recorded; asked for when not given.")
@click.option("--json", "as_json", is_flag=True, help="Print the service's answer as JSON.")
def lookup(
    url: str,
    username: str,
    password: str,
    nhs_number: str | None,
    given_name: str | None,
    family_name: str | None,
    date_of_birth: str | None,
    purpose: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Look a child up as a signed-in duty officer, through the API (so it is audited)."""
    import httpx

    subject = _child(nhs_number, given_name, family_name, date_of_birth)
    with httpx.Client(base_url=url, timeout=10) as http:
        headers = sign_in(http, username, password)
        purpose = _purpose(http, headers, purpose)
        while not reason or not reason.strip():
            reason = click.prompt("Reason (recorded)")
        answer = request(
            http,
            "POST",
            "/v1/lookups",
            headers=headers,
            json={"subject": subject, "purpose": purpose, "reason": reason.strip()},
        )
    if answer.status_code != 200:
        if as_json:
            click.echo(answer.text)
        raise refusal(answer)
    body = answer.json()
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    status = body["status"].replace("_", " ").upper()
    click.echo(status + (" (unborn child)" if body.get("unborn") else ""))
    if body.get("categories"):
        click.echo("categories: " + ", ".join(c.replace("_", " ") for c in body["categories"]))
    click.echo(f"call: {body['contact']['name']}, {body['contact']['phone']}")
    click.echo(f"lookup id: {body['lookup_id']}")
