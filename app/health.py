"""Liveness and readiness for the load balancer."""

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from app.audit.models import AuditEvent
from app.errors import ProblemError, responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses=responses(503),
    summary="The database is reachable and the audit log writable",
)
async def readyz(request: Request) -> Health:
    # A probe event is written and rolled back: it proves INSERT on the log works
    # without leaving anything behind.
    try:
        async with request.app.state.sessionmaker() as session:
            session.add(AuditEvent(event_type="readiness_probe", outcome="probe"))
            await session.flush()
            await session.rollback()
    except SQLAlchemyError as exc:
        raise ProblemError(503, "Not ready", "The audit log is not writable.") from exc
    return Health(status="ready")
