"""PostgreSQL: an index on speakers' names in code-point order (``COLLATE "C"``).

Pages of ``GET /v1/speakers`` and the "did you mean" lookups of large registries order and
compare names by code point on every backend. SQLite's name index already does (it compares
UTF-8 bytes); this one lets PostgreSQL do it through an index whatever the database's
collation, so a page costs its own rows instead of a sort of every name.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('CREATE INDEX ix_speakers_name_c ON speakers (name COLLATE "C")')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_speakers_name_c")
