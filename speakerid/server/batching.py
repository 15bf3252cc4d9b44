"""Dynamic micro-batching: concurrent requests' audio is embedded together by one worker thread.

The server's :class:`~speakerid.service.facade.SpeakerID` embeds through a :class:`BatchingEmbedder`
(``SpeakerID.wrap_embedder``): every rule (binding, gates, thresholds, scoring) stays in the
service, which decodes audio in the request's own thread and then asks for embeddings. Those
requests queue here; the worker takes the first one, waits at most ``max_wait`` for others,
and runs the network once over all their clips (up to ``max_batch``). The embedder sorts and
masks padded frames, so a clip embedded in a batch gets the embedding it would get alone.

One compute thread also means the network never runs in two threads at once: its thread team
(``SPEAKERID_THREADS``) has the cores, and request threads only decode and talk to SQLite.
That holds for window embeddings too (the multi-speaker guard of recordings with >= 4 s of
speech, ``track``): :meth:`BatchingEmbedder.window_embedder` runs them on the worker, one call
at a time between batches, under the same limits and numerics. Nothing else reaches the
network: attribute look-ups that fall through to the embedder (``__getattr__``) give its
identity and settings, never its methods or modules.

Callers wait at most ``timeout`` seconds (``ServerSettings.embed_timeout``); a worker that has
stopped (closed, or died of an error its ``try`` does not catch) answers every waiting and
later caller at once with :class:`~speakerid.errors.EmbedderUnavailableError` (503).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..audio.decode import AudioClip, load_audio
from ..errors import AudioError, EmbedderUnavailableError
from .metrics import Metrics

log = logging.getLogger("speakerid")


#: How often a waiting caller checks that the worker is still there (seconds).
_POLL = 1.0
#: The embedder's attributes that compute (load or run the network): never lent out.
_COMPUTE = frozenset({"model", "config"})


@dataclass
class _Job:
    clips: list[AudioClip]
    #: Run alone on the worker (a window pass) instead of clips to batch.
    call: Callable[[], Any] | None = None
    future: Future = field(default_factory=Future)


class BatchingEmbedder:
    """Stands in for an :class:`~speakerid.embedding.embedder.Embedder`: same identity and embedding
    methods, computed by one worker thread in batches across concurrent callers."""

    def __init__(
        self,
        embedder: Any,
        metrics: Metrics | None = None,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_seconds: float | None = None,
        timeout: float = 120.0,
    ) -> None:
        self._inner = embedder
        self._metrics = metrics or Metrics()
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._max_seconds = max_seconds
        self._timeout = timeout
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()  # closing and queueing: nothing is queued after close
        self._closed = False
        self._working = True  # False from the moment the worker starts to stop
        self._died = False  # of an error its ``try`` did not catch
        self._frames: dict[int, Any] = {}  # FrameEmbedder per frame step, used on the worker
        self._thread = threading.Thread(target=self._work, name="speakerid-embed", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        """The embedder's identity and settings (name, sha256, ref, dim, device, backend, ...).
        Its methods and modules are refused: whatever computes must be a method of this class
        and run on the worker, so that no request thread can reach the network on its own."""
        if name.startswith("_") or name in _COMPUTE:
            raise AttributeError(f"BatchingEmbedder does not lend the embedder's {name!r}")
        value = getattr(self._inner, name)
        if callable(value):
            raise AttributeError(
                f"BatchingEmbedder does not lend the embedder's method {name!r}: it would "
                f"compute outside the embedding worker"
            )
        return value

    @property
    def alive(self) -> bool:
        """Whether the worker still takes jobs (not closed, not dead)."""
        return not self._closed and self._working and self._thread.is_alive()

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

    def window_embedder(self, step: int = 1) -> WorkerWindows:
        """Window embeddings (``tracking.windows.window_embedder``) computed on the worker."""
        return WorkerWindows(self, step)

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
        return self._wait(_Job(clips)) if clips else []

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the worker thread, between batches; its result or its error here."""
        return self._wait(_Job([], fn))

    def _frame_embedder(self, step: int) -> Any:
        """The ``FrameEmbedder`` of this step (built on first use; worker thread only)."""
        fe = self._frames.get(step)
        if fe is None:
            from ..embedding.windows import FrameEmbedder

            fe = self._frames[step] = FrameEmbedder(self._inner, step)
        return fe

    def _wait(self, job: _Job) -> Any:
        """Queue ``job`` and wait for it, at most ``timeout`` seconds and never for a worker
        that has stopped (it fails its jobs as it stops; polled too, in case it could not)."""
        with self._lock:
            if not self.alive:
                raise EmbedderUnavailableError(self._stopped())
            self._queue.put(job)
        self._metrics.queue_depth.set(self._queue.qsize())
        end = time.monotonic() + self._timeout
        while True:
            left = end - time.monotonic()
            done, _ = futures.wait([job.future], timeout=min(_POLL, max(0.0, left)))
            if done:
                return job.future.result()
            if not (self._working and self._thread.is_alive()):
                raise EmbedderUnavailableError(self._stopped())
            if left <= 0:
                job.future.cancel()  # still queued: the worker skips it
                raise EmbedderUnavailableError(
                    f"no embedding within {self._timeout:g} s: the server is overloaded, "
                    f"retry later"
                )

    def _stopped(self) -> str:
        if self._closed and not self._died:
            return "the server is shutting down: the embedding worker takes no more work"
        return "the embedding worker has stopped (the server log says why): retry later"

    def close(self, timeout: float | None = None) -> None:
        """Embed what is queued, then stop the worker; later callers fail at once."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        held: deque[_Job | None] = deque()  # what ended the gathering of a batch: run next
        current: list[_Job] = []
        try:
            while True:
                job = held.popleft() if held else self._queue.get()
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue  # its caller stopped waiting (deadline)
                current = [job]
                if job.call is not None:
                    self._run_call(job)
                    continue
                n = len(job.clips)
                deadline = time.monotonic() + self._max_wait
                while n < self._max_batch and not held:
                    try:
                        nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if nxt is None or nxt.call is not None:
                        held.append(nxt)  # close, or a window pass: after this batch
                    elif nxt.future.set_running_or_notify_cancel():
                        current.append(nxt)
                        n += len(nxt.clips)
                self._metrics.queue_depth.set(self._queue.qsize())
                self._run(current)
        except BaseException:
            self._died = True
            log.critical("the embedding worker stopped", exc_info=True)
            raise
        finally:  # nobody may wait for a worker that is gone
            self._working = False
            while True:
                try:
                    held.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            gone = EmbedderUnavailableError(self._stopped())
            for j in [*current, *held]:
                if j is not None and not j.future.done():
                    j.future.set_exception(gone)

    def _run_call(self, job: _Job) -> None:
        try:
            job.future.set_result(job.call())
        except Exception as exc:  # the caller's error (bad audio, limits), raised there
            job.future.set_exception(exc)

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


class WorkerWindows:
    """``tracking.windows``' window embedder for the server: a ``FrameEmbedder`` that lives
    on the batching worker and is called only there, so that a window pass queues with the
    other embeddings (one compute thread team, the embedder's numerics), under the same limit
    on audio length and the same deadline."""

    def __init__(self, batcher: BatchingEmbedder, step: int = 1) -> None:
        self._batcher = batcher
        self.step = step
        self.dim = batcher.dim

    def _on_worker(self, method: str, *args: Any) -> Any:
        b = self._batcher
        return b._call(lambda: getattr(b._frame_embedder(self.step), method)(*args))

    def raw_fbank(self, samples: Any) -> Any:
        return self._on_worker("raw_fbank", samples)

    def embed_block(self, samples: Any, spans: list, mean: Any = None) -> Any:
        return self._on_worker("embed_block", samples, spans, mean)

    def embed_clip(self, clip: AudioClip, speech: list, *layout: float) -> tuple:
        """See ``FrameEmbedder.embed_clip``; counted as an embedded clip."""
        self._batcher.check_limits([clip])
        out = self._on_worker("embed_clip", clip, speech, *layout)
        m = self._batcher._metrics
        m.clips.inc()
        m.audio_seconds.inc(clip.duration)
        return out
