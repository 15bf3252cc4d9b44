"""What ``speakerid serve`` was asked for: registry, model, address, limits and batching.

Worker processes (``--workers N``) are started by uvicorn in fresh interpreters; they receive the
settings as JSON in ``$SPEAKERID_SERVE_SETTINGS``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass

from ..errors import InvalidInputError

ENV_SETTINGS = "SPEAKERID_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServerSettings:
    db: str | None = None
    model: str | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: Serve without keys on a non-loopback address (behind a proxy that authenticates).
    no_auth: bool = False
    #: Largest request body (all uploads of one request together), MiB.
    max_upload_mb: float = 25.0
    #: Longest audio accepted per file, seconds (from the header, else counted while decoding).
    max_audio_seconds: float = 300.0
    #: Most audio files in one request.
    max_files: int = 32
    #: Most clips the embedding worker takes into one batch.
    batch_max: int = 32
    #: How long the embedding worker waits for more requests before it starts a batch, ms.
    batch_wait_ms: float = 2.0
    #: Most seconds a request waits for the embedding worker (its turn, then its compute);
    #: past it, or at once when the worker has stopped, the request is answered 503 and its
    #: concurrency slot is free again. Generous: a 300 s file on 2 CPU cores takes seconds.
    embed_timeout: float = 120.0
    #: Requests inside the service at once (decoding, registry work, waiting for embeddings);
    #: 0: automatic (see ``ServerState.start``). Others wait, without a thread, for their turn.
    concurrency: int = 0
    #: Seconds that in-flight requests get to finish on SIGTERM/SIGINT.
    graceful_seconds: float = 60.0
    #: Open connections per process (uvicorn's ``limit_concurrency``): beyond it new requests
    #: get 503 at once. Each admitted upload is held in memory up to ``max_upload_mb``, so this
    #: bounds what callers with a key can make a process hold.
    max_connections: int = 64
    #: Live streams (``GET /v1/stream``) open at once per process; one more is refused (1013).
    max_streams: int = 16
    #: Longest live stream, seconds of audio (then an error event and close 1008).
    max_stream_seconds: float = 3600.0
    #: A live stream that sends nothing for this long is closed (error event, close 1008).
    stream_idle_seconds: float = 30.0
    #: Internal (``--workers N``): a file that exists while the server is still open, shared by
    #: the worker processes (see ``auth.Openness``).
    open_flag: str | None = None

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_audio_seconds <= 0 or self.max_files < 1:
            raise InvalidInputError("limits must be positive")
        if self.workers < 1 or self.batch_max < 1 or self.concurrency < 0:
            raise InvalidInputError("--workers and the batch size must be at least 1")
        if not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port must be 0-65535, got {self.port}")
        if self.max_connections < 2:
            raise InvalidInputError("--max-connections must be at least 2")
        if self.batch_wait_ms < 0:
            raise InvalidInputError("the batch wait must not be negative")
        if not self.embed_timeout > 0:
            raise InvalidInputError("the embedding timeout must be positive")
        if self.max_streams < 1:
            raise InvalidInputError("--max-streams must be at least 1")
        if not (self.max_stream_seconds > 0 and self.stream_idle_seconds > 0):
            raise InvalidInputError(
                "--max-stream-seconds and --stream-idle-seconds must be positive"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def loopback(self) -> bool:
        """Whether the server is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port if port is None else port}"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServerSettings:
        raw = os.environ.get(ENV_SETTINGS)
        return cls(**json.loads(raw)) if raw else cls()
