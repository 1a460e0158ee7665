"""The per-client probing limit: a partial index of lookups referred to a custodian.

Each lookup reads its client's referrals (``refer_to_custodian`` answers) over the
probing window (app/lookup/limits.py), as "the limit-th newest, if in the window".
Referrals are rare for an honest client, so this index is small, and the count
walks at most the limit's worth of it.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_audit_events_referrals_principal_occurred_at"
REFERRALS = "event_type = 'lookup' AND outcome = 'refer_to_custodian'"


def upgrade() -> None:
    op.create_index(
        NAME,
        "audit_events",
        ["principal", "occurred_at"],
        postgresql_where=sa.text(REFERRALS),
        sqlite_where=sa.text(REFERRALS),
    )


def downgrade() -> None:
    op.drop_index(NAME, table_name="audit_events")
