"""Opening a registry database: SQLite pragmas, Alembic migrations, the cross-process write lock."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, OperationalError

from ..errors import RegistryCorruptError, RegistryError, RegistryLockedError
from .schema import SCHEMA_REVISION

log = logging.getLogger("speakerid")

LOCK_TIMEOUT_S = 120.0


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


def migrations_dir() -> Path:
    """The Alembic script folder, shipped inside the package as ``speakerid.migrations``."""
    from .. import migrations

    return Path(migrations.__file__).resolve().parent


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations on ``engine`` up to ``revision``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        has = conn.execute(
            text("SELECT name FROM sqlite_master WHERE type='table' AND name='alembic_version'")
        ).first()
        if not has:
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None


def open_engine(path: Path, lock: FileLock) -> Engine:
    """Create (or upgrade) the database at ``path`` and return a configured engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    event.listen(engine, "connect", _on_connect)
    try:
        rev = current_revision(engine)
        if rev != SCHEMA_REVISION:
            with lock.hold():
                rev = current_revision(engine)
                if rev is not None and rev > SCHEMA_REVISION:
                    raise RegistryError(
                        f"{path}: registry schema {rev} is newer than this speakerid "
                        f"understands ({SCHEMA_REVISION}); upgrade speakerid"
                    )
                if rev != SCHEMA_REVISION:
                    log.info("migrating %s from %s to %s", path, rev, SCHEMA_REVISION)
                    upgrade(engine)
    except (DatabaseError, OperationalError) as exc:
        engine.dispose()
        detail = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
        raise RegistryCorruptError(f"{path}: not a usable registry database ({detail})") from None
    return engine
