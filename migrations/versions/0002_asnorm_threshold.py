"""Registry-level threshold for AS-Norm scores (z-scores need their own threshold).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry") as batch:
        batch.add_column(sa.Column("threshold_asnorm", sa.Float, nullable=True))
        batch.add_column(sa.Column("threshold_asnorm_source", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry") as batch:
        batch.drop_column("threshold_asnorm_source")
        batch.drop_column("threshold_asnorm")
