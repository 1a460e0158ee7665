"""The enquiries about one child, a walk that stops at the page (issue 18).

A custodian's search by NHS number and an entry's enquiries found every enquiry about
the child through the NHS-number index (migration 0012) and the entry index, read each
one by primary key, checked it, and sorted them all for every page: 4,685 buffers a
page for a child asked about 1,100 times. Each way of finding the child now has an
index in the pages' order, the key then the time as the keyed indexes hold it
(app.audit.models.IndexTime) then the id, and each is walked newest first, checked as
it goes, and cut at the page (app/audit/review.py ``Enquiries.halves``):

- ``ix_audit_events_lookups_asked_nhs_number_index_time`` replaces
  ``ix_audit_events_lookups_asked_nhs_number`` (the same expression, then the time as
  the plain column, no id);
- ``ix_audit_events_lookups_entry_id_index_time``: lookups answered with an entry.
  ``ix_audit_events_entry_id`` stays, for every kind of event (the register's purge
  asks whether any event still names an entry).

Building them reads the log once each, and new events wait for it: 4.7 s and 1.0 s at
2 million events on this project's 2-core bench, so about 30 s at 10 million, during
which lookups fail closed (503) at their lock timeout. Run it in a quiet hour.

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOOKUPS = "event_type = 'lookup'"
ENTRY_LOOKUPS = "event_type = 'lookup' AND entry_id IS NOT NULL"
OLD_NHS_NUMBER = "ix_audit_events_lookups_asked_nhs_number"
NHS_NUMBER = "ix_audit_events_lookups_asked_nhs_number_index_time"
ENTRY = "ix_audit_events_lookups_entry_id_index_time"
# As SQLAlchemy compiles app.audit.models.AskedNhsNumber and IndexTime for each database.
ASKED_NHS_NUMBER = {
    "postgresql": "(query ->> 'nhs_number')",
    "sqlite": """json_extract("query", '$.nhs_number')""",
}
INDEX_TIME = {"postgresql": "timezone('UTC', occurred_at)", "sqlite": "occurred_at"}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    time = INDEX_TIME[dialect]
    op.execute(
        f"CREATE INDEX {NHS_NUMBER} ON audit_events "
        f"({ASKED_NHS_NUMBER[dialect]}, {time}, id) WHERE {LOOKUPS}"
    )
    op.drop_index(OLD_NHS_NUMBER, table_name="audit_events")
    op.execute(f"CREATE INDEX {ENTRY} ON audit_events (entry_id, {time}, id) WHERE {ENTRY_LOOKUPS}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index(ENTRY, table_name="audit_events")
    op.execute(
        f"CREATE INDEX {OLD_NHS_NUMBER} ON audit_events "
        f"({ASKED_NHS_NUMBER[dialect]}, occurred_at) WHERE {LOOKUPS}"
    )
    op.drop_index(NHS_NUMBER, table_name="audit_events")
