"""Autovacuum keeps up with the audit log, whatever its size (issue 18).

The log is only ever appended to. PostgreSQL's defaults vacuum a table after inserts of
20 % of its size and analyse it after changes of 10 %: at ten million events a year,
every two to three months once the log is years deep. Until then:

- the pages written since are not marked all-visible, so the alerts' and the reviews'
  index-only scans (migrations 0014 and 0016) check every entry of their window in the
  heap (at 2 million events the alert report read 15,500 buffers where it reads 4,100);
- the statistics describe the log as it was (the reads' plans no longer depend on them,
  but nothing else should be planned on a log weeks out of date).

Here both are counted in events, not in a share of the table: a vacuum after every
VACUUM_EVENTS new events (at the national rate, a few times a day; minutes apart in a
burst) and statistics after every ANALYZE_EVENTS (a week at the national rate: the
reads' plans no longer depend on them, and ANALYZE samples pages across the whole
table), so what the scans find not yet visible is bounded by VACUUM_EVENTS at any
size. A vacuum of an append-only table reads only the
pages written since the last one. The link rows of ``audit_event_authorities`` (read by
the same index-only scans) likewise. The settings are the table's own, so they hold in
every deployment; a cluster's own defaults (deploy/) do not override them.

SQLite has no autovacuum and no visibility map: nothing to do.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VACUUM_EVENTS = 10_000
ANALYZE_EVENTS = 200_000
TABLES = ("audit_events", "audit_event_authorities")
SETTINGS = {
    "autovacuum_vacuum_insert_threshold": VACUUM_EVENTS,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_analyze_threshold": ANALYZE_EVENTS,
    "autovacuum_analyze_scale_factor": 0,
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    settings = ", ".join(f"{name} = {value}" for name, value in SETTINGS.items())
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET ({settings})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET ({', '.join(SETTINGS)})")
