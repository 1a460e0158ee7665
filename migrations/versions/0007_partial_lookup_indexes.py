"""Lookup volume limits: partial indexes holding lookup events only.

Each lookup reads its client's lookups over the last minute and its enquirer's over
the last 15 minutes (app/lookup/limits.py), as "the limit-th newest lookup, if it is
in the window". These indexes hold lookups only (``WHERE event_type = 'lookup'``), so
each count walks just the entries it counts, at most the limit's worth, from the
index alone. They replace 0005's full index on (principal, enquirer_id, occurred_at).

They also keep PostgreSQL's generic plan of the prepared statement on them: with
only ``(principal, occurred_at)`` to choose from, it preferred walking
``ix_audit_events_occurred_at`` through every principal's events in the window.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLACED = (
    "ix_audit_events_principal_enquirer_id_occurred_at",
    ["principal", "enquirer_id", "occurred_at"],
)
LOOKUPS = "event_type = 'lookup'"
INDEXES = {
    "ix_audit_events_lookups_principal_occurred_at": ["principal", "occurred_at"],
    "ix_audit_events_lookups_principal_enquirer_id_occurred_at": [
        "principal",
        "enquirer_id",
        "occurred_at",
    ],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(
            name,
            "audit_events",
            columns,
            postgresql_where=sa.text(LOOKUPS),
            sqlite_where=sa.text(LOOKUPS),
        )
    op.drop_index(REPLACED[0], table_name="audit_events")


def downgrade() -> None:
    op.create_index(REPLACED[0], "audit_events", REPLACED[1])
    for name in INDEXES:
        op.drop_index(name, table_name="audit_events")
