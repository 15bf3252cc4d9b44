"""SQLAlchemy 2 models of the registry database (the source of truth).

Alembic migrations in ``migrations/`` create and upgrade this schema; ``SCHEMA_REVISION`` is the
head revision this code expects (a test keeps it equal to Alembic's head).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_REVISION = "0005"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class RegistryRow(Base):
    """Exactly one row: the model the registry is bound to, its settings, its identity and
    write generation (the sequence number of the last change in the change log)."""

    __tablename__ = "registry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_ref: Mapped[str] = mapped_column(Text)  # what to pass to the embedder to load it
    model_sha256: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold_source: Mapped[str | None] = mapped_column(Text, nullable=True)
    threshold_asnorm: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold_asnorm_source: Mapped[str | None] = mapped_column(Text, nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: Random identity of this registry (a copy or a re-created database gets another one), so
    #: an index cache can never be mistaken for another registry's at the same generation.
    uid: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Change(Base):
    """The change log: every write appends the speakers whose voiceprint it wrote or removed,
    under its sequence number (``registry.generation`` after the write). Index caches apply
    what is newer than their own sequence instead of rebuilding; old entries are pruned."""

    __tablename__ = "changes"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    speaker_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    op: Mapped[str] = mapped_column(String(1))  # "u": upserted, "r": removed


class Speaker(Base):
    __tablename__ = "speakers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    meta: Mapped[str | None] = mapped_column("metadata", Text, nullable=True)  # JSON object
    #: Re-normalized mean of the utterance embeddings (float32), kept in step in every write.
    voiceprint: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    utterances: Mapped[list[Utterance]] = relationship(
        back_populates="speaker", cascade="all, delete-orphan", passive_deletes=True
    )


class Utterance(Base):
    __tablename__ = "utterances"
    __table_args__ = (UniqueConstraint("speaker_id", "audio_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    speaker_id: Mapped[int] = mapped_column(
        ForeignKey("speakers.id", ondelete="CASCADE"), index=True
    )
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit norm
    source: Mapped[str | None] = mapped_column(Text, nullable=True)  # file name, never audio
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    audio_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    speaker: Mapped[Speaker] = relationship(back_populates="utterances")


class ApiKey(Base):
    """A key of the HTTP service: its name, scope and the sha256 of its secret (never the
    secret itself, which is shown once when the key is created)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    scope: Mapped[str] = mapped_column(String(16))  # read | write | admin
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
