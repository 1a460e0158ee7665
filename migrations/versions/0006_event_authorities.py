"""Enquiries that concern several authorities: audit_event_authorities, filled by a
trigger on audit_events from the event's matched entries.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "cpr_app"
TABLE = "audit_event_authorities"
# Only a lookup whose matches span authorities has no single authority_id.
CONCERNS_SEVERAL = (
    "NEW.event_type = 'lookup' AND NEW.authority_id IS NULL AND NEW.detail IS NOT NULL"
)


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("authority_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["audit_events.id"], name=op.f(f"fk_{TABLE}_event_id_audit_events")
        ),
        sa.PrimaryKeyConstraint("authority_id", "event_id", name=op.f(f"pk_{TABLE}")),
    )
    # A notification per authority concerned, no longer one per event.
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint("uq_notifications_event_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_notifications_event_id_authority_id", ["event_id", "authority_id"]
        )
    if op.get_bind().dialect.name == "sqlite":
        # SQLAlchemy keeps UUIDs on SQLite as 32 hex digits; the JSON holds them dashed.
        op.execute(
            "CREATE TRIGGER audit_events_authorities AFTER INSERT ON audit_events "
            "WHEN NEW.event_type = 'lookup' AND NEW.authority_id IS NULL "
            "AND NEW.detail IS NOT NULL BEGIN "
            "INSERT INTO audit_event_authorities (authority_id, event_id) "
            "SELECT DISTINCT replace(json_extract(m.value, '$.authority_id'), '-', ''), NEW.id "
            "FROM json_each(NEW.detail, '$.matched') AS m; END"
        )
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {TABLE}_no_{action.lower()} BEFORE {action} ON {TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END"
            )
        return
    op.execute(
        """
        CREATE FUNCTION cpr_link_authorities() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.event_type = 'lookup' AND NEW.authority_id IS NULL
               AND NEW.detail IS NOT NULL THEN
                INSERT INTO audit_event_authorities (authority_id, event_id)
                SELECT DISTINCT (m ->> 'authority_id')::uuid, NEW.id
                FROM json_array_elements(NEW.detail -> 'matched') AS m;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_authorities AFTER INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION cpr_link_authorities()"
    )
    op.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_authorities")
    op.execute(
        f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
        "FOR EACH ROW EXECUTE FUNCTION cpr_refuse_change()"
    )
    op.execute(
        f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
        "FOR EACH STATEMENT EXECUTE FUNCTION cpr_refuse_change()"
    )
    op.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {TABLE}_append_only")
    op.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {TABLE}_no_truncate")
    op.execute(f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_authorities")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_authorities ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS cpr_link_authorities()")
    op.drop_table(TABLE)
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint("uq_notifications_event_id_authority_id", type_="unique")
        batch_op.create_unique_constraint("uq_notifications_event_id", ["event_id"])
