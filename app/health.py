"""Liveness and readiness for the load balancer."""

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from app.audit.models import AuditEvent
from app.db import DATABASE_ERRORS
from app.errors import ProblemError, responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    # What is wrong that is no reason to stop answering (status "degraded").
    problems: list[str] | None = None


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    response_model_exclude_none=True,
    responses=responses("not_ready"),
    summary="The database is reachable, acts as the configured role, and the audit log is writable",
)
async def readyz(request: Request) -> Health:
    settings = request.app.state.settings
    # A probe event is written and rolled back: it proves INSERT on the log works
    # without leaving anything behind. The connection must act as the configured role:
    # a connection acting as another could answer lookups the log's guards never saw.
    try:
        async with request.app.state.sessionmaker() as session:
            if not settings.is_sqlite and settings.database_role is not None:
                acting = await session.scalar(text("SELECT current_user"))
                if acting != settings.database_role:
                    raise ProblemError(
                        503,
                        "Not ready",
                        "The database connection does not act as its role.",
                        code="not_ready",
                    )
            session.add(AuditEvent(event_type="readiness_probe", outcome="probe"))
            await session.flush()
            await session.rollback()
    except DATABASE_ERRORS as exc:
        raise ProblemError(
            503, "Not ready", "The audit log is not writable.", code="not_ready"
        ) from exc
    # Checkpoints not reaching their directory are said, not failed: every replica out
    # of the load balancer would stop the lookups, and the checkpoints are safe in the
    # database meanwhile (the sequencer copies them as soon as it can).
    sequencer = request.app.state.sequencer
    if sequencer is not None and (problem := sequencer.checkpoint_copy_problem()) is not None:
        return Health(status="degraded", problems=[problem])
    return Health(status="ready")
