"""Change log (index caches follow the database instead of rebuilding) and registry identity.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("speaker_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("op", sa.String(1), nullable=False),
    )
    with op.batch_alter_table("registry") as batch:
        batch.add_column(sa.Column("uid", sa.String(32), nullable=True))
    op.get_bind().execute(
        sa.text("UPDATE registry SET uid = :uid WHERE uid IS NULL"), {"uid": uuid.uuid4().hex}
    )


def downgrade() -> None:
    with op.batch_alter_table("registry") as batch:
        batch.drop_column("uid")
    op.drop_table("changes")
