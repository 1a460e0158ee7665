"""Builds the FastAPI app."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from app import health
from app.auth import routes as auth_routes
from app.auth.keys import KeyRing
from app.config import Settings, get_settings
from app.db import create_engine, create_sessionmaker
from app.errors import install_handlers
from app.logging import configure_logging
from app.lookup import routes as lookup_routes
from app.lookup.schemas import LookupRequest
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware

API_VERSION = "1.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.keyring = KeyRing(app.state.sessionmaker, settings.key_dir)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="cp-register",
        version=API_VERSION,
        summary="Is this child subject to a child protection plan, and under which category?",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health.router)
    app.include_router(auth_routes.router)
    app.include_router(lookup_routes.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas of bodies that routes parse themselves."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(LookupRequest, "validation")], ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema
