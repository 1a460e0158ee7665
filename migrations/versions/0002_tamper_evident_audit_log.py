"""Tamper-evident audit log: sealing queue, hash chain, signed checkpoints, app role.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = ("audit_seals", "audit_checkpoints")
# The role the application connects as on PostgreSQL (docs/audit-log.md).
APP_ROLE = "cpr_app"
APP_WRITABLE = (
    "organisations",
    "clients",
    "users",
    "signing_keys",
    "access_tokens",
    "register_entries",
    "alembic_version",
)
APP_APPEND_ONLY = ("audit_events", "audit_seals", "audit_checkpoints", "register_entry_versions")


def upgrade() -> None:
    op.create_table(
        "audit_unsealed",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_unsealed")),
    )
    op.create_table(
        "audit_seals",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("leaf_hash", sa.String(length=64), nullable=False),
        sa.Column("chain_hash", sa.String(length=64), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["audit_events.id"],
            name=op.f("fk_audit_seals_event_id_audit_events"),
        ),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_audit_seals")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_seals_event_id")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_audit_checkpoints")),
    )
    # Events written before this migration wait for sealing like any other.
    op.execute(
        "INSERT INTO audit_unsealed (event_id, occurred_at) SELECT id, occurred_at FROM audit_events"
    )
    if op.get_bind().dialect.name == "sqlite":
        _sqlite()
    else:
        _postgresql()


def _sqlite() -> None:
    op.execute(
        "CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events BEGIN "
        "INSERT INTO audit_unsealed (event_id, occurred_at) VALUES (NEW.id, NEW.occurred_at); END"
    )
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def _postgresql() -> None:
    op.execute(
        """
        CREATE FUNCTION cpr_queue_for_sealing() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO audit_unsealed (event_id, occurred_at) VALUES (NEW.id, NEW.occurred_at);
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION cpr_queue_for_sealing()"
    )
    op.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_queue")
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION cpr_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION cpr_refuse_change()"
        )
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")

    # The application's role: owns nothing; only INSERT and SELECT on the log.
    # Roles are cluster-wide, so create it only once.
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN;
            END IF;
        END $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    for table in APP_WRITABLE:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")
    for table in APP_APPEND_ONLY:
        op.execute(f"GRANT SELECT, INSERT ON {table} TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON audit_unsealed TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_queue")
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_queue ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS cpr_queue_for_sealing()")
        for table in ("audit_events", "register_entry_versions", *APP_WRITABLE):
            op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_seals")
    op.drop_table("audit_unsealed")
