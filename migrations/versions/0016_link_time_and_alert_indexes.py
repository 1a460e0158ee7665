"""Reads bounded by what they return, whatever the log's size (issue 18): the link rows'
time, and an index for each alert that still read every lookup of its window.

``audit_event_authorities``: the event's time, enquirer, enquiring organisation and
purpose on its link row, copied by the trigger that writes the row, and an index of the
authority and the time. A review's page of an authority's enquiries walks its
multi-authority referrals newest first from that index, with the page's filters on the
link row itself, and stops at the page, where it read every one of them on every page.
Existing rows are filled from their events (the append-only guard is set aside for that
one statement, inside the migration's transaction, and put back as it was).

Alerts (app/audit/alerts.py):

- ``ix_audit_events_refused_index_time``: refused lookups only, by the time as the keyed
  indexes hold it (app.audit.models.IndexTime), carrying what the refusals alert groups
  by; they read every lookup of the window from the heap, three times.
- ``ix_audit_events_authority_referrals_time``: an authority's referrals by time, for
  the client mismatch alert, which walked all the authority's lookups of the window.
- ``ix_audit_events_authority_entries_time``: an authority's answers that named an entry,
  by time, carrying the entry and the enquiring organisation, so that the repeat
  presentations' two scans of the days' window are read from the index alone.

On SQLite the time is the column, and there is no INCLUDE.

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINKS = "audit_event_authorities"
LINK_INDEX = "ix_audit_event_authorities_authority_id_occurred_at"
REFUSED = "event_type = 'lookup' AND refusal IS NOT NULL"
# The answer through coalesce, as the alert writes it: so that no condition on the plain
# column (the volume limits' national index of referrals) can read this one, and the
# alert's cannot read that one, which holds no authority.
AUTHORITY_REFERRALS = (
    "event_type = 'lookup' AND authority_id IS NOT NULL "
    "AND coalesce(outcome, '') = 'refer_to_custodian'"
)
AUTHORITY_ENTRIES = "event_type = 'lookup' AND authority_id IS NOT NULL AND entry_id IS NOT NULL"
# name: (key columns before the time, after it, PostgreSQL's INCLUDE, rows)
INDEXES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str]] = {
    "ix_audit_events_refused_index_time": (
        (),
        ("refusal",),
        ("organisation_id", "principal", "enquirer_id", "purpose", "occurred_at"),
        REFUSED,
    ),
    "ix_audit_events_authority_referrals_time": (
        ("authority_id",),
        ("id",),
        (),
        AUTHORITY_REFERRALS,
    ),
    "ix_audit_events_authority_entries_time": (
        ("authority_id",),
        ("entry_id", "organisation_id"),
        ("occurred_at",),
        AUTHORITY_ENTRIES,
    ),
}

# Copied from the event onto its link rows (besides occurred_at, the filters' columns).
COPIED = ("occurred_at", "enquirer_id", "organisation_id", "purpose")

_POSTGRESQL_LINK = """
CREATE OR REPLACE FUNCTION cpr_link_authorities() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'lookup' AND NEW.authority_id IS NULL
       AND NEW.detail IS NOT NULL THEN
        INSERT INTO audit_event_authorities (authority_id, event_id, occurred_at,
            enquirer_id, organisation_id, purpose)
        SELECT DISTINCT (m ->> 'authority_id')::uuid, NEW.id, NEW.occurred_at,
            NEW.enquirer_id, NEW.organisation_id, NEW.purpose
        FROM json_array_elements(NEW.detail -> 'matched') AS m;
    END IF;
    RETURN NEW;
END $$
"""
_POSTGRESQL_LINK_BEFORE = """
CREATE OR REPLACE FUNCTION cpr_link_authorities() RETURNS trigger LANGUAGE plpgsql AS $$
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


# SQLAlchemy keeps UUIDs on SQLite as 32 hex digits; the JSON holds them dashed.
_SQLITE_LINK = (
    "CREATE TRIGGER audit_events_authorities AFTER INSERT ON audit_events "
    "WHEN NEW.event_type = 'lookup' AND NEW.authority_id IS NULL "
    "AND NEW.detail IS NOT NULL BEGIN "
    "INSERT INTO audit_event_authorities (authority_id, event_id, occurred_at, "
    "enquirer_id, organisation_id, purpose) "
    "SELECT DISTINCT replace(json_extract(m.value, '$.authority_id'), '-', ''), NEW.id, "
    "NEW.occurred_at, NEW.enquirer_id, NEW.organisation_id, NEW.purpose "
    "FROM json_each(NEW.detail, '$.matched') AS m; END"
)
# As migration 0006 wrote it.
_SQLITE_LINK_BEFORE = (
    "CREATE TRIGGER audit_events_authorities AFTER INSERT ON audit_events "
    "WHEN NEW.event_type = 'lookup' AND NEW.authority_id IS NULL "
    "AND NEW.detail IS NOT NULL BEGIN "
    "INSERT INTO audit_event_authorities (authority_id, event_id) "
    "SELECT DISTINCT replace(json_extract(m.value, '$.authority_id'), '-', ''), NEW.id "
    "FROM json_each(NEW.detail, '$.matched') AS m; END"
)

_FILL = (
    "UPDATE audit_event_authorities SET (occurred_at, enquirer_id, organisation_id, purpose) "
    "= (SELECT e.occurred_at, e.enquirer_id, e.organisation_id, e.purpose "
    "FROM audit_events e WHERE e.id = audit_event_authorities.event_id)"
)
_COLUMNS = (
    ("enquirer_id", sa.String(length=64)),
    ("organisation_id", sa.Uuid()),
    ("purpose", sa.String(length=64)),
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # SQLite adds a NOT NULL column only with a default; every row is filled next.
        op.execute(
            f"ALTER TABLE {LINKS} ADD COLUMN occurred_at DATETIME NOT NULL "
            "DEFAULT '1970-01-01 00:00:00.000000'"
        )
        for name, type_ in _COLUMNS:
            op.add_column(LINKS, sa.Column(name, type_, nullable=True))
        op.execute(f"DROP TRIGGER {LINKS}_no_update")
        op.execute(_FILL)
        op.execute(
            f"CREATE TRIGGER {LINKS}_no_update BEFORE UPDATE ON {LINKS} "
            f"BEGIN SELECT RAISE(ABORT, '{LINKS} is append-only'); END"
        )
        op.execute("DROP TRIGGER audit_events_authorities")
        op.execute(_SQLITE_LINK)
    else:
        op.add_column(LINKS, sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True))
        for name, type_ in _COLUMNS:
            op.add_column(LINKS, sa.Column(name, type_, nullable=True))
        op.execute(f"ALTER TABLE {LINKS} DISABLE TRIGGER {LINKS}_append_only")
        op.execute(_FILL)
        op.execute(f"ALTER TABLE {LINKS} ENABLE ALWAYS TRIGGER {LINKS}_append_only")
        op.alter_column(LINKS, "occurred_at", nullable=False)
        op.execute(_POSTGRESQL_LINK)
    op.create_index(LINK_INDEX, LINKS, ["authority_id", "occurred_at", "event_id"])
    for name, (lead, trail, included, rows) in INDEXES.items():
        if sqlite:
            columns = [*lead, "occurred_at", *trail]
            op.create_index(name, "audit_events", columns, sqlite_where=sa.text(rows))
        else:
            key = ", ".join([*lead, "timezone('UTC', occurred_at)", *trail])
            include = f" INCLUDE ({', '.join(included)})" if included else ""
            op.execute(f"CREATE INDEX {name} ON audit_events ({key}){include} WHERE {rows}")


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="audit_events")
    op.drop_index(LINK_INDEX, table_name=LINKS)
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_events_authorities")
        op.execute(_SQLITE_LINK_BEFORE)
        # SQLite (3.35 and later) drops a column in place: the guards stay.
        for name in COPIED:
            op.execute(f"ALTER TABLE {LINKS} DROP COLUMN {name}")
    else:
        op.execute(_POSTGRESQL_LINK_BEFORE)
        for name in COPIED:
            op.drop_column(LINKS, name)
