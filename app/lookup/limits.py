"""Volume limits per client and per enquirer (DESIGN.md check 7).

Every lookup event, answered or refused, counts: a caller past the limit stays
refused until its oldest counted lookup leaves the window.
"""

import math
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import recent_events
from app.config import Settings
from app.db import utcnow


@dataclass(frozen=True)
class OverLimit:
    refusal: str
    retry_after_seconds: int


async def check_volume(
    session: AsyncSession, settings: Settings, *, principal: str, enquirer_id: str
) -> OverLimit | None:
    limits = (
        (
            "volume_limit_client",
            None,
            settings.lookup_limit_per_client,
            settings.lookup_client_window_seconds,
        ),
        (
            "volume_limit_enquirer",
            enquirer_id,
            settings.lookup_limit_per_enquirer,
            settings.lookup_enquirer_window_seconds,
        ),
    )
    now = utcnow()
    for refusal, enquirer, limit, window in limits:
        since = now - timedelta(seconds=window)
        count, oldest, _ = await recent_events(
            session,
            principal=principal,
            event_type="lookup",
            since=since,
            enquirer_id=enquirer,
            newest_only=limit,
        )
        if count >= limit and oldest is not None:
            frees_at = oldest + timedelta(seconds=window)
            return OverLimit(refusal, max(1, math.ceil((frees_at - now).total_seconds())))
    return None
