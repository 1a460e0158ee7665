"""Where the notifier has got to, on the notifications too; and archived segments of the
log, which alone may leave it.

``notifications.last_position``: the seal position of the last enquiry that raised or
repeated each notification, indexed, so the notifier's start is
``max(notifier_cursor.position, max(notifications.last_position))``: one read of the
cursor row and one of this index. A cursor row lost or set back (a restore of some
tables, a hand edit) no longer makes the notifier read the log again from the start,
nor count repeats twice. Rows written before this migration have none (NULL; the
cursor row covers them).

``audit_archives``: each segment of the log written to an archive file and then deleted
(`cpr audit archive`, docs/audit-log.md "Retention"): its closing checkpoint's size,
head and note, the file's SHA-256, and the newest event time in it. Append-only. The
guards on ``audit_seals``, ``audit_events`` and ``audit_event_authorities`` still refuse
every UPDATE, and every DELETE except of a row an archive covers: a seal at or below
the newest archive's size; an event (or its authorities' row) that has neither a seal
nor a queue row, dated no later than the newest event archived. The application role
may only read the table, and has no DELETE on the log at all.

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
ARCHIVES = "audit_archives"
APP_ROLE = "cpr_app"
DELETABLE = ("audit_seals", "audit_events", "audit_event_authorities")

# SQLite: when each table's DELETE guard refuses (the row is not archived).
_SQLITE_REFUSE_DELETE = {
    "audit_seals": "OLD.position > (SELECT coalesce(max(size), 0) FROM audit_archives)",
    "audit_events": (
        "(SELECT max(last_occurred_at) FROM audit_archives) IS NULL "
        "OR OLD.occurred_at > (SELECT max(last_occurred_at) FROM audit_archives) "
        "OR EXISTS (SELECT 1 FROM audit_seals WHERE event_id = OLD.id) "
        "OR EXISTS (SELECT 1 FROM audit_unsealed WHERE event_id = OLD.id)"
    ),
    "audit_event_authorities": (
        "NOT EXISTS (SELECT 1 FROM audit_archives) "
        "OR EXISTS (SELECT 1 FROM audit_seals WHERE event_id = OLD.event_id) "
        "OR EXISTS (SELECT 1 FROM audit_unsealed WHERE event_id = OLD.event_id)"
    ),
}

_POSTGRESQL_GUARD = """
CREATE FUNCTION cpr_refuse_unarchived() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    archived bigint;
    newest timestamptz;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT max(size), max(last_occurred_at) INTO archived, newest FROM audit_archives;
        IF archived IS NOT NULL THEN
            IF TG_TABLE_NAME = 'audit_seals' THEN
                IF OLD.position <= archived THEN
                    RETURN OLD;
                END IF;
            ELSIF TG_TABLE_NAME = 'audit_events' THEN
                IF OLD.occurred_at <= newest
                   AND NOT EXISTS (SELECT 1 FROM audit_seals WHERE event_id = OLD.id)
                   AND NOT EXISTS (SELECT 1 FROM audit_unsealed WHERE event_id = OLD.id) THEN
                    RETURN OLD;
                END IF;
            ELSIF TG_TABLE_NAME = 'audit_event_authorities' THEN
                IF NOT EXISTS (SELECT 1 FROM audit_seals WHERE event_id = OLD.event_id)
                   AND NOT EXISTS (SELECT 1 FROM audit_unsealed WHERE event_id = OLD.event_id) THEN
                    RETURN OLD;
                END IF;
            END IF;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$
"""


def upgrade() -> None:
    op.add_column("notifications", sa.Column("last_position", sa.BigInteger(), nullable=True))
    op.create_index(NAME, "notifications", ["last_position"])
    op.create_table(
        ARCHIVES,
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("last_occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f(f"pk_{ARCHIVES}")),
    )
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {ARCHIVES}_no_{action.lower()} BEFORE {action} ON {ARCHIVES} "
                f"BEGIN SELECT RAISE(ABORT, '{ARCHIVES} is append-only'); END"
            )
        for table, refuse in _SQLITE_REFUSE_DELETE.items():
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} WHEN {refuse} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
        return
    for trigger, when in (("append_only", "UPDATE OR DELETE"), ("no_truncate", "TRUNCATE")):
        level = "STATEMENT" if when == "TRUNCATE" else "ROW"
        op.execute(
            f"CREATE TRIGGER {ARCHIVES}_{trigger} BEFORE {when} ON {ARCHIVES} "
            f"FOR EACH {level} EXECUTE FUNCTION cpr_refuse_change()"
        )
        op.execute(f"ALTER TABLE {ARCHIVES} ENABLE ALWAYS TRIGGER {ARCHIVES}_{trigger}")
    op.execute(f"GRANT SELECT ON {ARCHIVES} TO {APP_ROLE}")
    op.execute(_POSTGRESQL_GUARD)
    for table in DELETABLE:
        _replace_guard(table, "cpr_refuse_unarchived")


def _replace_guard(table: str, function: str) -> None:
    op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()"
    )
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in DELETABLE:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    else:
        for table in DELETABLE:
            _replace_guard(table, "cpr_refuse_change")
        op.execute("DROP FUNCTION IF EXISTS cpr_refuse_unarchived()")
    op.drop_table(ARCHIVES)
    op.drop_index(NAME, table_name="notifications")
    with op.batch_alter_table("notifications") as batch_op:
        batch_op.drop_column("last_position")
