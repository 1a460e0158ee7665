"""GET /v1/audit/alerts: what the log shows a custodian should look at (app/audit/alerts.py)."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.audit.alerts import AlertQuery, AlertReport, alert_report
from app.audit.deps import Reviewer
from app.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get(
    "/alerts",
    response_model=AlertReport,
    summary=(
        "Alerts from the log: enumeration and probing, volume and purpose refusals, "
        "repeat presentation"
    ),
)
async def alerts(
    reviewer: Reviewer,
    session: SessionDep,
    settings: SettingsDep,
    query: Annotated[AlertQuery, Query()],
) -> AlertReport:
    return await alert_report(session, settings, reviewer, query)
