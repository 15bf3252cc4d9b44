"""The one place that knows the database backends: URLs, SQLite pragmas, write locks, migrations.

A registry lives in SQLite (a file: a plain path or ``sqlite:///PATH``, the default) or in
PostgreSQL (``postgresql+psycopg://user:pass@host:port/dbname``, psycopg 3). Everything above this
module is backend-neutral: it asks a :class:`Database` for a read session, a consistent snapshot
or a write transaction, and gets the right locking for free:

- SQLite: WAL, ``synchronous=FULL``, foreign keys on; writes are serialized across processes by
  an ``flock`` on ``<db>.lock`` held around the transaction.
- PostgreSQL: writes take ``pg_advisory_xact_lock`` inside their transaction (released by commit
  or rollback, also when the client dies), never a local file; readers use MVCC and never block
  writers. Snapshots run in a ``REPEATABLE READ READ ONLY`` transaction instead of under the lock.

The same Alembic migrations create and upgrade both; they run under the backend's write lock.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from ..errors import (
    InvalidInputError,
    RegistryCorruptError,
    RegistryError,
    RegistryLockedError,
    RegistryNotFoundError,
)
from .schema import SCHEMA_REVISION

log = logging.getLogger("speakerid")

LOCK_TIMEOUT_S = 120.0
#: A write of at least this many rows refreshes the planner's statistics afterwards
#: (:meth:`Database.refresh_statistics`): docs/scaling.md measured PostgreSQL right after a bulk
#: load of 1M speakers at 1.6x SQLite's p99 identify latency, and at 0.9x once analyzed.
BULK_ROWS = 10_000
#: Key of the PostgreSQL advisory lock that serializes a registry's writes (one registry per
#: database): the bytes of "speakrid" as a signed 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(b"speakrid", "big", signed=True)
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class DatabaseURL:
    """Where a registry lives. ``path`` is the SQLite file (None for PostgreSQL)."""

    backend: str  # "sqlite" | "postgresql"
    url: str  # SQLAlchemy URL, password included: never print it, print ``display``
    path: Path | None = None

    @classmethod
    def parse(cls, value: str | os.PathLike | DatabaseURL) -> DatabaseURL:
        """A plain path, ``sqlite:///PATH`` or ``postgresql[+psycopg]://...``."""
        if isinstance(value, DatabaseURL):
            return value
        raw = os.fspath(value)
        if "://" not in raw:
            path = Path(raw).expanduser()
            return cls("sqlite", f"sqlite:///{path}", path)
        scheme = raw.split("://", 1)[0].lower()
        if scheme == "sqlite":
            try:
                database = make_url(raw).database
            except ArgumentError:
                database = None
            if not database or database == ":memory:":
                raise InvalidInputError(f"{raw}: a SQLite registry needs a file: sqlite:///PATH")
            path = Path(database).expanduser()
            return cls("sqlite", f"sqlite:///{path}", path)
        if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
            rest = raw.split("://", 1)[1]
            url = f"postgresql+psycopg://{rest}"
            try:
                parsed = make_url(url)
            except ArgumentError as exc:
                raise InvalidInputError(f"not a database URL: {exc}") from None
            if not parsed.database:
                raise InvalidInputError(
                    f"{parsed.render_as_string(hide_password=True)}: the URL must name a "
                    f"database (postgresql+psycopg://user:pass@host:port/dbname)"
                )
            return cls("postgresql", url)
        raise InvalidInputError(
            f"unsupported database URL scheme {scheme!r}: use a file path, sqlite:///PATH or "
            f"postgresql+psycopg://user:pass@host:port/dbname"
        )

    @property
    def display(self) -> str:
        """For messages: the file path, or the URL with its password masked."""
        if self.path is not None:
            return str(self.path)
        return make_url(self.url).render_as_string(hide_password=True)

    def __str__(self) -> str:
        return self.display

    def index_path(self, home: Path) -> Path:
        """The FAISS cache file: ``<db>.index`` beside a SQLite file; for a server database a
        per-machine cache under ``home/index`` named by a hash of the URL (password left out)."""
        if self.path is not None:
            return self.path.with_name(self.path.name + ".index")
        u = make_url(self.url)
        key = f"{u.username}@{u.host}:{u.port}/{u.database}?{sorted(u.query.items())}"
        return home / "index" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.index"

    def exists(self) -> bool:
        """Whether a registry is there. A server database without speakerid's schema is not
        one (read-only commands refuse it and create nothing)."""
        if self.path is not None:
            return self.path.is_file()
        engine = _pg_engine(self.url, NullPool)
        try:
            return current_revision(engine, self) is not None
        finally:
            engine.dispose()


class FileLock:
    """An exclusive ``flock`` on a side file; re-entrant within one process."""

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        self._mutex = threading.RLock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RegistryLockedError(
                        f"registry is locked by another process (waited {self.timeout:.0f} s): "
                        f"{self.path}"
                    ) from None
                time.sleep(0.01)

    def _release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _pg_engine(url: str, poolclass=None) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise RegistryError(
            "a PostgreSQL registry needs psycopg 3: pip install 'psycopg[binary]>=3.1'"
        ) from None
    # No pre-ping (a round trip per checkout): a connection found broken is invalidated by
    # the failing call and replaced on the next one; idle ones are recycled.
    kw = {"poolclass": poolclass} if poolclass else {"pool_recycle": 600}
    return create_engine(url, connect_args={"connect_timeout": 10}, **kw)


def _pg_lock(conn, timeout: float | None = None) -> None:
    """Take the registry's transaction-scoped advisory lock (waits up to ``timeout``)."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    conn.execute(text(f"SET LOCAL lock_timeout = '{int(timeout * 1000)}ms'"))
    try:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            raise RegistryLockedError(
                f"registry is locked by another writer (waited {timeout:.0f} s)"
            ) from None
        raise
    conn.execute(text("SET LOCAL lock_timeout = 0"))


def migrations_dir() -> Path:
    """The Alembic script folder, shipped inside the package as ``speakerid.migrations``."""
    from .. import migrations

    return Path(migrations.__file__).resolve().parent


def upgrade(engine: Engine, revision: str = "head", lock: bool = False) -> None:
    """Run Alembic migrations on ``engine`` up to ``revision`` (``lock``: under PostgreSQL's
    advisory lock, taken in the migration's own transaction)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        if lock and engine.dialect.name == "postgresql":
            _pg_lock(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine, where: object = None) -> str | None:
    """The schema revision stored in the database, None when it has no registry schema."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            return row[0] if row else None
    except OperationalError as exc:
        if engine.dialect.name != "postgresql":
            raise
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise RegistryError(f"cannot reach the registry database {where}: {detail}") from None


class Database:
    """An open registry database: engine, sessions and the registry's write lock."""

    def __init__(self, location: str | os.PathLike | DatabaseURL, create: bool = True) -> None:
        self.location = DatabaseURL.parse(location)
        self.backend = self.location.backend
        if not create and not self.location.exists():
            raise RegistryNotFoundError(
                f"no registry at {self.location}: enroll a speaker first to create it "
                f"(speakerid enroll NAME FILE...), or pass --db PATH of an existing one"
            )
        self._file_lock: FileLock | None = None
        if self.location.path is not None:
            path = self.location.path
            self._file_lock = FileLock(path.with_name(path.name + ".lock"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.location.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _on_connect)
        else:
            self.engine = _pg_engine(self.location.url)
        self._migrate()
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        #: Sessions for reads. On PostgreSQL they run in autocommit (each statement sees the
        #: latest commits, no BEGIN/ROLLBACK round trips); write through :meth:`write`.
        reads = self.engine
        if self.backend == "postgresql":
            reads = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.Session = sessionmaker(reads, expire_on_commit=False)

    def _migrate(self) -> None:
        where = self.location
        try:
            rev = current_revision(self.engine, where)
            if rev == SCHEMA_REVISION:
                return
            with self._held():
                rev = current_revision(self.engine, where)
                if rev is not None and rev > SCHEMA_REVISION:
                    raise RegistryError(
                        f"{where}: registry schema {rev} is newer than this speakerid "
                        f"understands ({SCHEMA_REVISION}); upgrade speakerid"
                    )
                if rev != SCHEMA_REVISION:
                    log.info("migrating %s from %s to %s", where, rev, SCHEMA_REVISION)
                    upgrade(self.engine, lock=True)
        except (DatabaseError, OperationalError) as exc:
            self.engine.dispose()
            detail = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
            detail = " ".join(detail.split())
            raise RegistryCorruptError(
                f"{where}: not a usable registry database ({detail})"
            ) from None
        except RegistryError:
            self.engine.dispose()
            raise

    @contextmanager
    def _held(self) -> Iterator[None]:
        """The SQLite file lock (PostgreSQL locks inside each transaction instead)."""
        if self._file_lock is None:
            yield
        else:
            with self._file_lock.hold():
                yield

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction holding the registry lock: committed on success, rolled back
        on any exception; concurrent writers (any process, any machine) wait their turn."""
        with self._held(), self._writer.begin() as s:
            if self.backend == "postgresql":
                _pg_lock(s.connection())
            yield s

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A session whose reads all see one committed state (for backups and copies)."""
        if self.backend == "postgresql":
            with self._writer() as s:
                opts = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
                s.connection(execution_options=opts)
                yield s
                s.rollback()
        else:
            with self._held(), self.Session() as s:
                yield s

    def refresh_statistics(self) -> None:
        """After a bulk load: PostgreSQL ``VACUUM (ANALYZE)`` (planner statistics and the
        visibility map, instead of waiting for autovacuum to work beside the searches), SQLite
        ``ANALYZE``. The data is already committed, so a failure here is logged, not raised."""
        sql = "VACUUM (ANALYZE)" if self.backend == "postgresql" else "ANALYZE"
        t0 = time.perf_counter()
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text(sql))
        except DatabaseError as exc:  # OperationalError included
            log.warning("%s: %s after a bulk write failed: %s", self.location, sql, exc.orig)
            return
        log.info("%s: %s after a bulk write (%.1f s)", self.location, sql, time.perf_counter() - t0)

    def close(self) -> None:
        self.engine.dispose()
