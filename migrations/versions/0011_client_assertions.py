"""RFC 7523 client assertions (private_key_jwt): clients' public keys, whether a client may
still use its secret, and the jti of every assertion accepted, so none is used twice.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The role the application connects as on PostgreSQL (docs/audit-log.md). It records each
# assertion's jti (INSERT; the primary key refuses a replay) and reads them; `cpr tokens
# purge` connects as it too and forgets the expired ones, as it does access tokens.
APP_ROLE = "cpr_app"
TABLE = "used_client_assertions"


def upgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_jwks", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("secret_allowed", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    op.create_table(
        TABLE,
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("jti", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_used_client_assertions")),
    )
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_used_client_assertions_expires_at"), ["expires_at"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT, DELETE ON {TABLE} TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"REVOKE ALL ON {TABLE} FROM {APP_ROLE}")
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_client_assertions_expires_at"))
    op.drop_table(TABLE)
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("secret_allowed")
        batch_op.drop_column("public_jwks")
