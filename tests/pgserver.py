"""A throw-away PostgreSQL server for the test run (started once, stopped at the end).

PostgreSQL refuses to run as root: as root the server runs as the unprivileged ``postgres`` user
(``runuser``), in a temporary directory owned by it, on a free port of 127.0.0.1 with its socket
in that directory. The binaries come from ``/usr/lib/postgresql/*/bin`` (Debian's package, which
``.ci/run`` installs) or the ``PATH``. ``SPEAKERID_TEST_PG_URL`` points the tests at an existing
server instead (a URL whose user may create databases).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PgUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).resolve().parent
    raise PgUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """``start()`` a cluster, ``create_database()`` per test, ``stop()`` at the end."""

    def __init__(self) -> None:
        self.external = os.environ.get("SPEAKERID_TEST_PG_URL")
        self.dir: Path | None = None
        self.port = 0

    def _run(self, *cmd: str) -> None:
        prefix = []
        if os.geteuid() == 0:
            prefix = ["runuser", "-u", "postgres", "--"]
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, cwd="/")
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout)[-800:]
            raise PgUnavailable(f"{Path(cmd[0]).name} failed: {detail}")

    def start(self) -> None:
        if self.external:
            return
        bindir = self.bindir = _bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="speakerid-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no 'postgres' user") from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        data = self.dir / "data"
        self._run(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self.port = _free_port()
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections=200"
        )
        self._run(
            str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.dir / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    @property
    def admin_url(self) -> str:
        return self.external or f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        from sqlalchemy.engine import make_url

        name = f"speakerid_test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        url = make_url(self.admin_url).set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                      "-w", "stop")  # fmt: skip
        except PgUnavailable:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
