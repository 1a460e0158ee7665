"""The sealing queue is the database's own: stamped by its clock, left only by sealing.

``audit_unsealed`` is what the sequencer reads to find events to seal, and what the
verifier reads to tell an event waiting its turn from one that never will be sealed.
Until now the application role could insert and delete its rows: an event dated in
the future with its queue row deleted was never sealed and never reported. Now:

- ``queued_at``: when the row was queued, by the database's clock (PostgreSQL
  ``clock_timestamp()``; SQLite the same UTC text SQLAlchemy writes), never the
  caller's. The verifier measures the sealing delay from it, not from the event's own
  ``occurred_at``, which the writer chooses.
- The application role loses INSERT and DELETE on the queue. The queue row is written
  by the ``audit_events_queue`` trigger (on PostgreSQL now a SECURITY DEFINER
  function) and removed only by a trigger on INSERT into ``audit_seals``: the only
  way out of the queue is into the chain.
- Guards on the queue itself (for SQLite, which has no roles, and for the owner):
  UPDATE is refused, and DELETE of an event that has no seal.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "cpr_app"
QUEUE = "audit_unsealed"
# SQLite: now, in UTC, as SQLAlchemy's DateTime stores it ('YYYY-MM-DD HH:MM:SS.ffffff';
# SQLite's clock gives milliseconds). PostgreSQL: clock_timestamp(), the time of the
# insert itself (now() would be its transaction's start). The PostgreSQL functions that
# write the queue run as their owner (SECURITY DEFINER) with a fixed search path, so
# nothing the caller puts on its path is resolved in their place.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_upgrade()
    else:
        _postgresql_upgrade()


def _sqlite_upgrade() -> None:
    # The queue trigger names the table: drop it while the table is rebuilt (SQLite
    # checks triggers when the rebuilt table is renamed into place).
    op.execute("DROP TRIGGER IF EXISTS audit_events_queue")
    with op.batch_alter_table(QUEUE, recreate="always") as batch_op:
        batch_op.add_column(
            sa.Column(
                "queued_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text(f"({SQLITE_NOW})"),
            )
        )
    op.execute(
        "CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events BEGIN "
        "INSERT INTO audit_unsealed (event_id, occurred_at, queued_at) "
        "VALUES (NEW.id, NEW.occurred_at, strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_seals_dequeue AFTER INSERT ON audit_seals BEGIN "
        "DELETE FROM audit_unsealed WHERE event_id = NEW.event_id; END"
    )
    op.execute(
        f"CREATE TRIGGER {QUEUE}_no_update BEFORE UPDATE ON {QUEUE} "
        f"BEGIN SELECT RAISE(ABORT, '{QUEUE} is append-only'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_unsealed_no_delete BEFORE DELETE ON audit_unsealed "
        "WHEN NOT EXISTS (SELECT 1 FROM audit_seals WHERE event_id = OLD.event_id) "
        "BEGIN SELECT RAISE(ABORT, "
        "'audit_unsealed: only sealing removes an event from the queue'); END"
    )


def _postgresql_upgrade() -> None:
    # Rows already queued are stamped now: their delay starts with this migration.
    op.execute(f"ALTER TABLE {QUEUE} ADD COLUMN queued_at timestamptz")
    op.execute("UPDATE audit_unsealed SET queued_at = clock_timestamp()")
    op.execute(f"ALTER TABLE {QUEUE} ALTER COLUMN queued_at SET NOT NULL")
    op.execute(f"ALTER TABLE {QUEUE} ALTER COLUMN queued_at SET DEFAULT clock_timestamp()")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION cpr_queue_for_sealing() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        BEGIN
            INSERT INTO audit_unsealed (event_id, occurred_at, queued_at)
            VALUES (NEW.id, NEW.occurred_at, clock_timestamp());
            RETURN NEW;
        END $$
        """
    )
    # One statement per batch of seals: the sequencer inserts a batch in one INSERT.
    op.execute(
        """
        CREATE FUNCTION cpr_dequeue_sealed() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        BEGIN
            DELETE FROM audit_unsealed AS q USING sealed AS s WHERE q.event_id = s.event_id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_seals_dequeue AFTER INSERT ON audit_seals "
        "REFERENCING NEW TABLE AS sealed "
        "FOR EACH STATEMENT EXECUTE FUNCTION cpr_dequeue_sealed()"
    )
    op.execute(
        """
        CREATE FUNCTION cpr_refuse_unsealed_dequeue() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM audit_seals WHERE event_id = OLD.event_id) THEN
                RAISE EXCEPTION 'audit_unsealed: only sealing removes an event from the queue'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN OLD;
        END $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {QUEUE}_only_sealed_leave BEFORE DELETE ON {QUEUE} "
        "FOR EACH ROW EXECUTE FUNCTION cpr_refuse_unsealed_dequeue()"
    )
    op.execute(
        f"CREATE TRIGGER {QUEUE}_append_only BEFORE UPDATE ON {QUEUE} "
        "FOR EACH ROW EXECUTE FUNCTION cpr_refuse_change()"
    )
    op.execute(
        f"CREATE TRIGGER {QUEUE}_no_truncate BEFORE TRUNCATE ON {QUEUE} "
        "FOR EACH STATEMENT EXECUTE FUNCTION cpr_refuse_change()"
    )
    # ALWAYS: session_replication_role = replica must not switch them off.
    op.execute("ALTER TABLE audit_seals ENABLE ALWAYS TRIGGER audit_seals_dequeue")
    for trigger in ("only_sealed_leave", "append_only", "no_truncate"):
        op.execute(f"ALTER TABLE {QUEUE} ENABLE ALWAYS TRIGGER {QUEUE}_{trigger}")
    # Trigger functions are never called directly; nobody needs EXECUTE on them.
    for function in ("cpr_queue_for_sealing", "cpr_dequeue_sealed", "cpr_refuse_unsealed_dequeue"):
        op.execute(f"REVOKE ALL ON FUNCTION {function}() FROM PUBLIC")
    op.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {QUEUE} FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT ON {QUEUE} TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("audit_events_queue", "audit_seals_dequeue"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute(f"DROP TRIGGER IF EXISTS {QUEUE}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {QUEUE}_no_delete")
        with op.batch_alter_table(QUEUE, recreate="always") as batch_op:
            batch_op.drop_column("queued_at")
        op.execute(
            "CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events BEGIN "
            "INSERT INTO audit_unsealed (event_id, occurred_at) "
            "VALUES (NEW.id, NEW.occurred_at); END"
        )
        return
    op.execute("DROP TRIGGER IF EXISTS audit_seals_dequeue ON audit_seals")
    for trigger in ("only_sealed_leave", "append_only", "no_truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS {QUEUE}_{trigger} ON {QUEUE}")
    op.execute("DROP FUNCTION IF EXISTS cpr_dequeue_sealed()")
    op.execute("DROP FUNCTION IF EXISTS cpr_refuse_unsealed_dequeue()")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION cpr_queue_for_sealing() RETURNS trigger
        LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
            INSERT INTO audit_unsealed (event_id, occurred_at) VALUES (NEW.id, NEW.occurred_at);
            RETURN NEW;
        END $$
        """
    )
    op.execute("GRANT EXECUTE ON FUNCTION cpr_queue_for_sealing() TO PUBLIC")
    op.execute(f"ALTER TABLE {QUEUE} DROP COLUMN queued_at")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON {QUEUE} TO {APP_ROLE}")
