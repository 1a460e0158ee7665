"""Reads of the audit log bounded by what they return, not by the log (issue 18).

- The volume limits' three indexes are rebuilt so that a count reads its window, never
  the caller's history, whatever the statistics (app/lookup/limits.py):
  the enquirer's is led by the enquirer, ``(enquirer_id, principal, time)``, where
  ``(principal, enquirer_id, occurred_at)`` also served the *client's* count and with
  no statistics PostgreSQL chose it, reading the client's whole history (33 buffers for
  a window of three lookups); and on PostgreSQL the time is ``timezone('UTC',
  occurred_at)`` (app.audit.models.IndexTime), which no other index holds: with a plain
  ``occurred_at`` the planner, once ANALYZE showed the log's append order, read the
  window of every principal from ix_audit_events_occurred_at instead. ``INCLUDE
  (occurred_at)`` keeps each count an index-only read. SQLite's are the columns.
- A custodian's reads (app/audit/review.py) each have an index led by the authority
  and ending in their newest-first order ``(time, id)``, the time as the limit
  indexes hold it (the planner walked ix_audit_events_occurred_at otherwise): the list
  and time range ``(authority_id, time, id)``, the enquirer and purpose filters
  ``(authority_id, enquirer_id | purpose, time, id)``. Partial: lookups about one
  authority's child only (``authority_id IS NOT NULL``), a third of the log.
- The child's NHS number as asked, an expression index on ``query.nhs_number`` (the
  same expression the search writes, app.audit.models.AskedNhsNumber): built from the
  events already in the log, kept by the database for new ones, and nothing written
  to the append-only log itself.

- The notifications list, unacknowledged first: a partial index per status on
  ``notifications (authority_id, first_occurred_at, id)``, so each is a walk cut at the
  page (app/notifications/routes.py).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOOKUPS = "event_type = 'lookup'"
AUTHORITY_LOOKUPS = "event_type = 'lookup' AND authority_id IS NOT NULL"
REFERRALS = "event_type = 'lookup' AND outcome = 'refer_to_custodian'"
# (name, columns, rows) of the limit indexes of migrations 0007 and 0009, and of theirs.
REPLACED = (
    ("ix_audit_events_lookups_principal_occurred_at", ["principal", "occurred_at"], LOOKUPS),
    (
        "ix_audit_events_lookups_principal_enquirer_id_occurred_at",
        ["principal", "enquirer_id", "occurred_at"],
        LOOKUPS,
    ),
    ("ix_audit_events_referrals_principal_occurred_at", ["principal", "occurred_at"], REFERRALS),
)
LIMITS = (
    ("ix_audit_events_lookups_principal_limit_time", ["principal"], LOOKUPS),
    (
        "ix_audit_events_lookups_enquirer_id_principal_limit_time",
        ["enquirer_id", "principal"],
        LOOKUPS,
    ),
    ("ix_audit_events_referrals_principal_limit_time", ["principal"], REFERRALS),
)
AUTHORITY = (
    ("ix_audit_events_lookups_authority_id_index_time", []),
    ("ix_audit_events_lookups_authority_id_enquirer_id_index_time", ["enquirer_id"]),
    ("ix_audit_events_lookups_authority_id_purpose_index_time", ["purpose"]),
)
NHS_NUMBER = "ix_audit_events_lookups_asked_nhs_number"
# As SQLAlchemy compiles app.audit.models.AskedNhsNumber for each database.
ASKED_NHS_NUMBER = {
    "postgresql": "(query ->> 'nhs_number')",
    "sqlite": """json_extract("query", '$.nhs_number')""",
}


NOTIFICATIONS = {
    "ix_notifications_unacknowledged": "acknowledged_at IS NULL",
    "ix_notifications_acknowledged": "acknowledged_at IS NOT NULL",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, rows in NOTIFICATIONS.items():
        op.create_index(
            name,
            "notifications",
            ["authority_id", "first_occurred_at", "id"],
            postgresql_where=sa.text(rows),
            sqlite_where=sa.text(rows),
        )
    for name, keys, rows in LIMITS:
        if dialect == "postgresql":
            op.execute(
                f"CREATE INDEX {name} ON audit_events "
                f"({', '.join(keys)}, timezone('UTC', occurred_at)) INCLUDE (occurred_at) "
                f"WHERE {rows}"
            )
        else:
            op.create_index(
                name, "audit_events", [*keys, "occurred_at"], sqlite_where=sa.text(rows)
            )
    for name, _, _ in REPLACED:
        op.drop_index(name, table_name="audit_events")
    for name, keys in AUTHORITY:
        time = "timezone('UTC', occurred_at)" if dialect == "postgresql" else "occurred_at"
        op.execute(
            f"CREATE INDEX {name} ON audit_events "
            f"({', '.join(['authority_id', *keys, time, 'id'])}) WHERE {AUTHORITY_LOOKUPS}"
        )
    op.execute(
        f"CREATE INDEX {NHS_NUMBER} ON audit_events ({ASKED_NHS_NUMBER[dialect]}, occurred_at) "
        f"WHERE {LOOKUPS}"
    )


def downgrade() -> None:
    for name in NOTIFICATIONS:
        op.drop_index(name, table_name="notifications")
    op.drop_index(NHS_NUMBER, table_name="audit_events")
    for name, _ in AUTHORITY:
        op.drop_index(name, table_name="audit_events")
    for name, columns, rows in REPLACED:
        op.create_index(
            name,
            "audit_events",
            columns,
            postgresql_where=sa.text(rows),
            sqlite_where=sa.text(rows),
        )
    for name, _, _ in LIMITS:
        op.drop_index(name, table_name="audit_events")
