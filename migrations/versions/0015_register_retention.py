"""Ended register entries may leave the register, as the schema owner alone, and only
with all their versions (`cpr register purge-ended`, docs/audit-log.md "Retention").

The service role ``cpr_app`` loses DELETE on ``register_entries`` (it never deleted
one; on ``register_entry_versions`` it never had it). The guards, on both databases:
``register_entries`` refuses to delete a live plan (not ended, and the child not yet
18: app/register/queries.py ``live``) and, on PostgreSQL, any TRUNCATE; ``register_entry_versions`` still refuses every UPDATE and
every DELETE except of a version of an ended entry deleted in the same transaction.

How "deleted with it" is held: on SQLite the purge defers foreign keys (``PRAGMA
defer_foreign_keys``) and deletes the entries first, so a version may go only once its
entry is gone. On PostgreSQL (whose foreign key is not deferrable) the versions go
first, each only if its entry is no longer live, and a deferred constraint trigger refuses the
commit if any such entry is still there; the foreign key refuses an entry whose
versions are not all gone. Every guard is ENABLE ALWAYS.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "cpr_app"
ENTRIES = "register_entries"
VERSIONS = "register_entry_versions"
LIVE_REFUSED = "register_entries: a live plan is never deleted"

# Written out, not formatted: the names and messages above, as they are.
_POSTGRESQL_GUARD = """
CREATE FUNCTION cpr_refuse_unpurged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF TG_TABLE_NAME = 'register_entries' THEN
            IF OLD.ended_on IS NOT NULL OR OLD.adult_on <= current_date THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'register_entries: a live plan is never deleted'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF EXISTS (
            SELECT 1 FROM register_entries WHERE id = OLD.entry_id
            AND (ended_on IS NOT NULL OR adult_on <= current_date)
        ) THEN
            RETURN OLD;
        END IF;
    ELSIF TG_OP = 'TRUNCATE' AND TG_TABLE_NAME = 'register_entries' THEN
        RAISE EXCEPTION 'register_entries is never truncated'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'register_entry_versions is append-only: only the versions of an ended entry deleted with it may go'
        USING ERRCODE = 'insufficient_privilege';
END $$
"""

# At the commit (deferred): a version deleted, its entry must be gone too.
_POSTGRESQL_DELETED_WITH_ENTRY = """
CREATE FUNCTION cpr_versions_left_with_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM register_entries WHERE id = OLD.entry_id) THEN
        RAISE EXCEPTION 'register_entry_versions is append-only: only the versions of an ended entry deleted with it may go'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$
"""

# SQLite: a version may go only once its entry has (the purge defers foreign keys).
_SQLITE_VERSIONS_GUARD = (
    "CREATE TRIGGER register_entry_versions_no_delete BEFORE DELETE ON register_entry_versions "
    "WHEN EXISTS (SELECT 1 FROM register_entries WHERE id = OLD.entry_id) "
    "BEGIN SELECT RAISE(ABORT, 'register_entry_versions is append-only: only the versions "
    "of an ended entry deleted with it may go'); END"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"CREATE TRIGGER {ENTRIES}_no_delete BEFORE DELETE ON {ENTRIES} "
            "WHEN OLD.ended_on IS NULL AND (OLD.adult_on IS NULL OR OLD.adult_on > date('now')) "
            f"BEGIN SELECT RAISE(ABORT, '{LIVE_REFUSED}'); END"
        )
        op.execute(f"DROP TRIGGER IF EXISTS {VERSIONS}_no_delete")
        op.execute(_SQLITE_VERSIONS_GUARD)
        return
    op.execute(f"REVOKE DELETE, TRUNCATE ON {ENTRIES} FROM {APP_ROLE}")
    op.execute(_POSTGRESQL_GUARD)
    op.execute(_POSTGRESQL_DELETED_WITH_ENTRY)
    for function in ("cpr_refuse_unpurged", "cpr_versions_left_with_entry"):
        op.execute(f"REVOKE ALL ON FUNCTION {function}() FROM PUBLIC")
    _trigger(ENTRIES, "no_live_delete", "BEFORE DELETE", "ROW", "cpr_refuse_unpurged")
    _trigger(ENTRIES, "no_truncate", "BEFORE TRUNCATE", "STATEMENT", "cpr_refuse_unpurged")
    op.execute(f"DROP TRIGGER {VERSIONS}_append_only ON {VERSIONS}")
    _trigger(VERSIONS, "append_only", "BEFORE UPDATE OR DELETE", "ROW", "cpr_refuse_unpurged")
    op.execute(
        f"CREATE CONSTRAINT TRIGGER {VERSIONS}_deleted_with_entry AFTER DELETE ON {VERSIONS} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "EXECUTE FUNCTION cpr_versions_left_with_entry()"
    )
    op.execute(f"ALTER TABLE {VERSIONS} ENABLE ALWAYS TRIGGER {VERSIONS}_deleted_with_entry")


def _trigger(table: str, name: str, when: str, level: str, function: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_{name} {when} ON {table} "
        f"FOR EACH {level} EXECUTE FUNCTION {function}()"
    )
    # ALWAYS: session_replication_role = replica must not switch the guard off.
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_{name}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {ENTRIES}_no_delete")
        op.execute(f"DROP TRIGGER IF EXISTS {VERSIONS}_no_delete")
        op.execute(
            f"CREATE TRIGGER {VERSIONS}_no_delete BEFORE DELETE ON {VERSIONS} "
            f"BEGIN SELECT RAISE(ABORT, '{VERSIONS} is append-only'); END"
        )
        return
    op.execute(f"DROP TRIGGER IF EXISTS {VERSIONS}_deleted_with_entry ON {VERSIONS}")
    op.execute(f"DROP TRIGGER {VERSIONS}_append_only ON {VERSIONS}")
    _trigger(VERSIONS, "append_only", "BEFORE UPDATE OR DELETE", "ROW", "cpr_refuse_change")
    op.execute(f"DROP TRIGGER IF EXISTS {ENTRIES}_no_truncate ON {ENTRIES}")
    op.execute(f"DROP TRIGGER IF EXISTS {ENTRIES}_no_live_delete ON {ENTRIES}")
    op.execute("DROP FUNCTION IF EXISTS cpr_versions_left_with_entry()")
    op.execute("DROP FUNCTION IF EXISTS cpr_refuse_unpurged()")
    op.execute(f"GRANT DELETE ON {ENTRIES} TO {APP_ROLE}")
