"""Dynamic micro-batching: concurrent requests' audio is embedded together by one worker thread.

The server's :class:`~speakerid.service.SpeakerID` embeds through a :class:`BatchingEmbedder`
(``SpeakerID.wrap_embedder``): every rule (binding, gates, thresholds, scoring) stays in the
service, which decodes audio in the request's own thread and then asks for embeddings. Those
requests queue here; the worker takes the first one, waits at most ``max_wait`` for others,
and runs the network once over all their clips (up to ``max_batch``). The embedder sorts and
masks padded frames, so a clip embedded in a batch gets the embedding it would get alone.

One compute thread also means the network never runs in two threads at once: its thread team
(``SPEAKERID_THREADS``) has the cores, and request threads only decode and talk to SQLite.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..audio import AudioClip, load_audio
from ..errors import AudioError
from .metrics import Metrics

log = logging.getLogger("speakerid")


@dataclass
class _Job:
    clips: list[AudioClip]
    future: Future = field(default_factory=Future)


class BatchingEmbedder:
    """Stands in for an :class:`~speakerid.embedder.Embedder`: same attributes and embedding
    methods, computed by one worker thread in batches across concurrent callers."""

    def __init__(
        self,
        embedder: Any,
        metrics: Metrics | None = None,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_seconds: float | None = None,
    ) -> None:
        self._inner = embedder
        self._metrics = metrics or Metrics()
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._max_seconds = max_seconds
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="speakerid-embed", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:  # name, sha256, ref, dim, device, model, ...
        return getattr(self._inner, name)

    # --- the embedder's interface ------------------------------------------------------------
    def embed_clips(self, clips: Sequence[AudioClip], batch_size: int | None = None) -> list:
        clips = list(clips)
        self.check_limits(clips)
        return self._submit(clips)

    def embed(self, audio: Any) -> Any:
        return self.embed_many([audio])[0]

    def embed_many(
        self,
        sources: Iterable[Any],
        batch_size: int | None = None,
        chunk: int = 64,
        on_progress: Callable[[int], None] | None = None,
        collect_errors: bool = False,
        **_: Any,
    ) -> list:
        """Decode here (the caller's thread), embed in the worker; with ``collect_errors`` a
        file that cannot be decoded yields its ``AudioError`` in its place, as the embedder."""
        decoded: list[AudioClip | AudioError] = []
        for s in sources:
            try:
                decoded.append(s if isinstance(s, AudioClip) else load_audio(s))
            except AudioError as exc:
                if not collect_errors:
                    raise
                decoded.append(exc)
        clips = [c for c in decoded if isinstance(c, AudioClip)]
        self.check_limits(clips)
        done = iter(self._submit(clips))
        if on_progress:
            on_progress(len(decoded))
        return [c if isinstance(c, AudioError) else next(done) for c in decoded]

    def check_limits(self, clips: Sequence[AudioClip]) -> None:
        """Clips handed in decoded (files decoded here stopped at the process's limit)."""
        if self._max_seconds is None:
            return
        from .limits import audio_limit

        for c in clips:
            if c.duration > self._max_seconds:
                raise audio_limit(self._max_seconds).refuse(c.source, c.duration)

    # --- queue and worker --------------------------------------------------------------------
    def _submit(self, clips: list[AudioClip]) -> list:
        if not clips:
            return []
        if not self._thread.is_alive():
            from ..errors import NotReadyError

            raise NotReadyError("the server is shutting down")
        job = _Job(clips)
        self._queue.put(job)
        self._metrics.queue_depth.set(self._queue.qsize())
        return job.future.result()

    def close(self, timeout: float | None = None) -> None:
        """Embed what is queued, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                break
            jobs, n = [job], len(job.clips)
            deadline = time.monotonic() + self._max_wait
            while n < self._max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                n += len(nxt.clips)
            self._metrics.queue_depth.set(self._queue.qsize())
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        clips = [c for j in jobs for c in j.clips]
        start = time.perf_counter()
        try:
            embs = self._inner.embed_clips(clips)
        except Exception as exc:  # attribute the failure to the request that caused it
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for j in jobs:
                self._run([j])
            return
        m = self._metrics
        m.batch_seconds.observe(time.perf_counter() - start)
        m.batch_size.observe(len(clips))
        m.batch_requests.observe(len(jobs))
        m.clips.inc(len(clips))
        m.audio_seconds.inc(sum(c.duration for c in clips))
        i = 0
        for j in jobs:
            j.future.set_result(embs[i : i + len(j.clips)])
            i += len(j.clips)
