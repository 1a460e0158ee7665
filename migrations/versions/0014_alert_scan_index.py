"""The alerts' national scans read an index, not the log (issue 18).

``GET /v1/audit/alerts`` counts every not-found lookup of the last 25 hours per
enquirer and per client (app/audit/alerts.py ``_busiest_windows``), whichever authority
they concern: 0.8-1.0 s at 2 million events, reading each lookup of the window from the
heap. This index holds the not-found lookups alone by the time as the other keyed
indexes hold it (``timezone('UTC', occurred_at)``, app.audit.models.IndexTime), and on
PostgreSQL carries every column the scans group, count and order by, so that both the
count per group and the suspects' events can be index-only scans of the window.
Partial on the answer, so that no count of the volume limits (app/lookup/limits.py)
can read it instead of its own (SQLite chose an index led by the answer for the
referrals' count). SQLite's is the column.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_audit_events_not_found_index_time"
NOT_FOUND = "event_type = 'lookup' AND outcome = 'not_on_plan'"
INCLUDED = ("organisation_id", "enquirer_id", "principal", "occurred_at", "id")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE INDEX {NAME} ON audit_events (timezone('UTC', occurred_at)) "
            f"INCLUDE ({', '.join(INCLUDED)}) WHERE {NOT_FOUND}"
        )
    else:
        op.create_index(NAME, "audit_events", ["occurred_at"], sqlite_where=sa.text(NOT_FOUND))


def downgrade() -> None:
    op.drop_index(NAME, table_name="audit_events")
