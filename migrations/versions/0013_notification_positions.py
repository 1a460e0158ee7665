"""Where the notifier has got to, kept on the notifications too: ``last_position``.

Each notification records the seal position of the last enquiry that raised or
repeated it, indexed, so the notifier's start is ``max(notifier_cursor.position,
max(notifications.last_position))``: one read of the cursor row and one of this index.
A cursor row that was lost or set back (a restore of some tables, a hand edit) no
longer makes the notifier read the log again from the start, nor count repeats twice.
Rows written before this migration have none (NULL; the cursor row covers them).

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_notifications_last_position"


def upgrade() -> None:
    op.add_column("notifications", sa.Column("last_position", sa.BigInteger(), nullable=True))
    op.create_index(NAME, "notifications", ["last_position"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="notifications")
    with op.batch_alter_table("notifications") as batch_op:
        batch_op.drop_column("last_position")
