"""Register upkeep: last review date, one live plan per NHS number per authority,
the custodian's review-date index.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_WITH_NHS = "ended_on IS NULL AND subject_nhs_number IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("register_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_review", sa.Date(), nullable=True))
        batch_op.create_index(
            "ix_register_entries_authority_next_review", ["authority_id", "next_review"]
        )
        batch_op.create_index(
            "uq_register_entries_live_nhs_number",
            ["authority_id", "subject_nhs_number", "unborn"],
            unique=True,
            sqlite_where=sa.text(LIVE_WITH_NHS),
            postgresql_where=sa.text(LIVE_WITH_NHS),
        )


def downgrade() -> None:
    with op.batch_alter_table("register_entries", schema=None) as batch_op:
        batch_op.drop_index("uq_register_entries_live_nhs_number")
        batch_op.drop_index("ix_register_entries_authority_next_review")
        batch_op.drop_column("last_review")
