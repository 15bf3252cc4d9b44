"""Initial schema: registry binding, speakers, utterance embeddings.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_ref", sa.Text, nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("threshold_source", sa.Text, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "speakers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("voiceprint", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
    )
    op.create_index("ix_speakers_name", "speakers", ["name"], unique=True)
    op.create_table(
        "utterances",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "speaker_id",
            sa.Integer,
            sa.ForeignKey("speakers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("duration", sa.Float, nullable=True),
        sa.Column("audio_sha256", sa.String(64), nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.UniqueConstraint("speaker_id", "audio_sha256"),
    )
    op.create_index("ix_utterances_speaker_id", "utterances", ["speaker_id"])
    op.create_index("ix_utterances_audio_sha256", "utterances", ["audio_sha256"])


def downgrade() -> None:
    op.drop_table("utterances")
    op.drop_table("speakers")
    op.drop_table("registry")
