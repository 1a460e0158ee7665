"""Builds the FastAPI app."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import health
from app.admin import routes as admin_routes
from app.audit import alert_routes as audit_alerts
from app.audit import review_routes as audit_review
from app.audit import routes as audit_routes
from app.auth import routes as auth_routes
from app.auth.keys import KeyRing
from app.auth.lockout import Gate
from app.background import Background, checkpoint_verifier, shut_down
from app.config import Environment, Settings, get_settings
from app.db import (
    DATABASE_ERRORS,
    WrongRole,
    check_acting_role,
    create_engine,
    create_sessionmaker,
)
from app.errors import install_handlers
from app.fhir import routes as fhir_routes
from app.heap import settle_heap
from app.logging import configure_logging
from app.lookup import routes as lookup_routes
from app.lookup.schemas import LookupRequest
from app.middleware import BodyLimitMiddleware, DeadlineMiddleware, RequestContextMiddleware
from app.notifications import routes as notification_routes
from app.notifications import webhook_routes as notification_webhooks
from app.openapi import build_document
from app.register import routes as register_routes
from app.web import register_routes as web_register
from app.web import review_routes as web_review_routes
from app.web import routes as web_routes
from app.web.pages import install_error_pages

API_VERSION = "1.0.0"
log = structlog.get_logger()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_keys_to_serve()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        try:
            await _check_database(engine, settings)
        except BaseException:
            await engine.dispose()
            raise
        app.state.sessionmaker = create_sessionmaker(engine)
        # This process's lookups queue here for SQLite's one write lock (app/db.py).
        app.state.sqlite_writers = asyncio.Lock() if settings.is_sqlite else None
        # This process's sign-ins queue here per account name (app/auth/lockout.py).
        app.state.sign_in_gate = Gate()
        app.state.keyring = KeyRing(app.state.sessionmaker, settings.key_dir)
        # Sealing and notifying here, unless `cpr worker` does them (app/worker.py).
        background = (
            Background(settings, app.state.sessionmaker) if settings.background_in_api else None
        )
        app.state.sequencer = background.sequencer if background is not None else None
        app.state.notifier = background.notifier if background is not None else None
        app.state.checkpoint_verifier = checkpoint_verifier(settings, app.state.sequencer)
        if background is not None:
            background.start()
        settle_heap()
        try:
            yield
        finally:
            await shut_down(settings, engine, background.stop if background else None)

    app = FastAPI(
        title="cp-register",
        version=API_VERSION,
        summary="Is this child subject to a child protection plan, and under which category?",
        lifespan=lifespan,
        # The interactive pages load their scripts from a CDN, outside the site's CSP:
        # not served in production (the document itself is, at /openapi.json).
        docs_url=None if settings.environment is Environment.production else "/docs",
        redoc_url=None if settings.environment is Environment.production else "/redoc",
    )
    app.state.settings = settings
    install_handlers(app)
    install_error_pages(app)  # after: it wraps the API handlers
    app.add_middleware(
        DeadlineMiddleware,
        settings=settings,
        by_path=dict.fromkeys(
            ("/v1/register/imports", "/web/register/import", "/v1/audit/verify", "/web/log"),
            settings.long_request_timeout_seconds,
        )
        | dict.fromkeys(("/oauth/token", "/web/sign-in"), settings.sign_in_timeout_seconds),
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        by_path=dict.fromkeys(
            ("/v1/register/imports", "/web/register/import"), settings.import_max_bytes
        ),
    )
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health.router)
    app.include_router(auth_routes.router)
    app.include_router(lookup_routes.router)
    app.include_router(fhir_routes.router)
    app.include_router(register_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(audit_review.router)
    app.include_router(audit_alerts.router)
    app.include_router(notification_webhooks.router)
    app.include_router(notification_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(web_routes.router)
    app.include_router(web_review_routes.router)
    app.include_router(web_register.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


async def _check_database(engine: AsyncEngine, settings: Settings) -> None:
    """Refuse to start acting as a role that could change the log (production), or as
    another role than the configured one (always: WrongRole). A database that cannot
    be reached yet is no reason not to start: readiness says so until it can."""
    try:
        acting = await check_acting_role(engine, settings)
    except DATABASE_ERRORS as exc:
        if _misconfigured(exc):
            raise
        log.warning("database_unreachable_at_start", error_type=type(exc).__name__)
        return
    if acting is None:
        return
    if settings.environment is Environment.production:
        raise WrongRole(
            f"the service acts as {acting!r}, which can change the audit log; set "
            "CPR_DATABASE_ROLE to the application role (docs/audit-log.md)"
        )
    log.warning("acting_role_can_change_the_log", role=acting)


# Refusals that no waiting will cure: the login, its password, or its right to act as
# the configured role. The service must not start answering 503 forever.
_MISCONFIGURED = (
    WrongRole,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)


def _misconfigured(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, _MISCONFIGURED):
            return True
        exc = exc.__cause__ or getattr(exc, "orig", None)
    return False


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus what it cannot see (app/openapi.py): the schemas of bodies
    that routes parse themselves, each operation's security and every problem it answers."""
    if app.openapi_schema is None:
        app.openapi_schema = build_document(app, extra_models=(LookupRequest,))
    return app.openapi_schema
