"""Lookup volume limits: an index for the per-enquirer count.

The enquirer's limit counts one enquirer's lookups of one client over 15 minutes.
On ``(principal, occurred_at)`` alone that walks every event of the client in the
window and reads each row to filter on ``enquirer_id``; with ``enquirer_id`` in the
index it reads only the enquirer's own, at most the limit's worth
(app/lookup/limits.py).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_audit_events_principal_enquirer_id_occurred_at"


def upgrade() -> None:
    op.create_index(INDEX, "audit_events", ["principal", "enquirer_id", "occurred_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="audit_events")
