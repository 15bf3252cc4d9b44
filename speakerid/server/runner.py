"""Running the app under uvicorn: bind first (a busy port is a one-line error), load the model
before accepting anything, print ``listening on URL`` once requests are accepted, and on
SIGTERM/SIGINT stop accepting, let in-flight requests finish, then close the registry."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from ..errors import AuthenticationError, InvalidInputError
from .live import uvicorn_options as uvicorn_ws_options
from .settings import ENV_SETTINGS, ServerSettings


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive response waits for a delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def check_auth(settings: ServerSettings, keys: int) -> str:
    """Refuse an open server on a reachable address; return a line that says how it runs."""
    if settings.no_auth:
        return "warning: --no-auth: every request is accepted without a key"
    if keys:
        noun = "API key" if keys == 1 else "API keys"
        return f"{keys} {noun}: requests need 'Authorization: Bearer KEY'"
    if not settings.loopback:
        raise AuthenticationError(
            f"refusing to serve {settings.host} without API keys: create one (speakerid keys "
            f"create NAME --scope admin) or pass --no-auth behind an authenticating proxy"
        )
    return (
        "warning: no API keys yet: the server is open to every program on this machine "
        "(loopback only; requests must name it in their Host header, and browsers may call "
        "it only from its own page); the first key (speakerid keys create NAME --scope admin) "
        "closes it until it is restarted"
    )


@contextmanager
def _shared_openness(settings: ServerSettings, keys: int):
    """Settings whose worker processes share one openness: a flag file that exists while the
    server is open (a worker that sees a key deletes it; see ``auth.Openness``)."""
    if settings.workers == 1 or settings.no_auth or keys or not settings.loopback:
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="speakerid-serve-") as tmp:
        flag = Path(tmp) / "open"
        flag.touch()
        yield dataclasses.replace(settings, open_flag=str(flag))


def stored_keys(db: str | None) -> int:
    """How many API keys the registry holds (0 when it does not exist yet; nothing created)."""
    from ..service.facade import SpeakerID

    sid = SpeakerID(db=db)
    if not sid.location.exists():  # a SQLite file, or a server database with the schema
        return 0
    with sid:
        return sid.api_keys().count()


class _Server(uvicorn.Server):
    """uvicorn's server that says where it listens once it accepts connections."""

    def __init__(self, config: uvicorn.Config, settings: ServerSettings) -> None:
        super().__init__(config)
        self.settings = settings

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        port = self.servers[0].sockets[0].getsockname()[1]
        print(f"listening on {self.settings.url(port)}", flush=True)


class _Workers(Multiprocess):
    """uvicorn's worker supervisor that says where it listens once every worker is ready."""

    def __init__(self, config: uvicorn.Config, sockets: list, url: str) -> None:
        super().__init__(config, sockets)
        self.url = url

    def init_processes(self) -> None:
        super().init_processes()
        if all(p.wait_until_ready(600, self.should_exit) for p in self.processes):
            print(f"listening on {self.url}", flush=True)


@contextmanager
def _graceful_signals():
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; make that a clean exit."""
    saved = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def run(settings: ServerSettings, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT. Raises the library's typed errors before serving."""
    from ..embedding.runtime import check_configured
    from .app import ServerState, create_app

    check_configured(settings.device)  # impossible numerics: refused before binding or forking
    sock = bind(settings.host, settings.port)
    options = {
        "log_level": log_level,
        "timeout_graceful_shutdown": settings.graceful_seconds,
        "server_header": False,
        "lifespan": "on",
        "limit_concurrency": settings.max_connections,
        **uvicorn_ws_options(),
    }
    try:
        keys = stored_keys(settings.db)
        print(check_auth(settings, keys), file=sys.stderr, flush=True)
        if settings.workers == 1:
            state = ServerState(settings)
            state.start()
            config = uvicorn.Config(create_app(state=state), **options)
            with _graceful_signals():
                _Server(config, settings).run(sockets=[sock])
            return
        if not os.environ.get("SPEAKERID_THREADS"):  # one share of the cores per worker
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            os.environ["SPEAKERID_THREADS"] = str(max(1, cores // settings.workers))
        with _shared_openness(settings, keys) as shared:
            os.environ[ENV_SETTINGS] = shared.to_env()
            config = uvicorn.Config(
                "speakerid.server.app:worker_app", factory=True, workers=settings.workers, **options
            )
            url = settings.url(sock.getsockname()[1])
            _Workers(config, [sock], url).run()
    finally:
        sock.close()
