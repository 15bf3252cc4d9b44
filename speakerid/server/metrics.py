"""Prometheus metrics of the server (``GET /metrics``): requests and latency by route and status,
audio seconds embedded, embedding batch sizes and the queue in front of the embedder.

Each app has its own collector registry (tests start several apps in one process). With
``--workers N`` every worker process counts its own requests: a scrape reaches one of them.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: Methods counted under their own name; any other (h11 accepts any token) counts as "other",
#: so that callers cannot create label series without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: creation times are noise here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "speakerid_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "speakerid_http_request_duration_seconds",
            "Time from request to response",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "speakerid_audio_seconds_embedded", "Seconds of audio embedded", registry=r
        )
        self.audio_seconds_tracked = Counter(
            "speakerid_audio_seconds_tracked", "Seconds of audio tracked (/v1/track)", registry=r
        )
        self.clips = Counter("speakerid_clips_embedded", "Audio clips embedded", registry=r)
        self.batch_size = Histogram(
            "speakerid_embed_batch_size",
            "Clips per embedding batch (concurrent requests embedded together)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "speakerid_embed_batch_requests",
            "Requests per embedding batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "speakerid_embed_batch_duration_seconds",
            "Compute time of one embedding batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "speakerid_embed_queue_depth", "Requests waiting for the embedder", registry=r
        )
        self.in_flight = Gauge(
            "speakerid_http_requests_in_flight", "Requests being answered", registry=r
        )
        self.streams_open = Gauge(
            "speakerid_live_streams_open", "Live streams (GET /v1/stream) open", registry=r
        )
        self.audio_seconds_streamed = Counter(
            "speakerid_live_audio_seconds", "Seconds of audio received by live streams", registry=r
        )
        self.partials_shed = Counter(
            "speakerid_live_partials_shed",
            "Partials a live stream skipped to catch up with real time (the server was behind)",
            registry=r,
        )
        self.stream_event_latency = Histogram(
            "speakerid_live_event_latency_seconds",
            "Wall-clock time from receiving a live stream's message to sending an event it caused",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request and counts it under its route template (``/v1/speakers/{name}``,
    never the raw path: names must not become label values) and a known method."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            path = getattr(route, "path_format", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (method, path, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
