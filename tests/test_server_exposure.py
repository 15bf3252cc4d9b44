"""What an open server (no keys, loopback) exposes, against a real ``speakerid serve``: only
requests that address it by name (Host) from its own origin (Origin) and not through a proxy,
``nosniff`` on every answer, bounded metric labels, a bounded number of connections, and worker
processes that stay closed once any of them saw a key."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from speakerid.server.settings import ServerSettings

from .serverkit import Server, clip_bytes, clips, problem

A = clips("so0003")
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    work = tmp_path_factory.mktemp("exposure")
    with Server(work, "--max-connections", str(MAX_CONNECTIONS)) as s:
        yield s


def port(srv) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def raw(srv, request: bytes) -> bytes:
    """One request on a fresh connection, as bytes on the wire (headers exactly as given)."""
    with socket.create_connection(("127.0.0.1", port(srv)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_an_open_server_answers_only_requests_that_name_it(srv):
    p = port(srv)
    with srv.client() as c:
        assert "open to every program on this machine" in srv.logs()
        for host in (f"127.0.0.1:{p}", f"localhost:{p}", f"LOCALHOST:{p}", f"[::1]:{p}"):
            assert c.get("/v1/speakers", headers={"Host": host}).status_code == 200, host
        # DNS rebinding (a name that resolves to 127.0.0.1), another port, another name
        for host in (f"evil.example:{p}", "evil.example", f"127.0.0.1:{p + 1}", f"127.0.0.2:{p}"):
            for path in ("/v1/speakers", "/readyz", "/metrics", "/", "/healthz"):
                problem(
                    c.get(path, headers={"Host": host}),
                    403,
                    "PermissionDeniedError",
                    f"this server runs open (no API keys) and answers only requests addressed "
                    f"to it on this machine (127.0.0.1:{p} or localhost:{p}), not Host "
                    f"{host.lower()!r}; create an API key",
                )
    # no Host at all (HTTP/1.0)
    answer = raw(srv, b"GET /v1/speakers HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert b"not Host '(none)'" in answer


def test_a_cross_site_page_cannot_enroll_or_remove(srv):
    """What a page elsewhere in the developer's browser would send: a multipart form POST (no
    preflight) or a DELETE, with the browser's Origin. The server's own page is same-origin."""
    p = port(srv)
    own = {"Origin": f"http://127.0.0.1:{p}"}
    enroll = [("files", clip_bytes(A[0]))]
    with srv.client() as c:
        r = c.post("/v1/speakers/victim/enrollments", files=enroll, headers=own)
        assert r.status_code == 201, r.text
        before = c.get("/v1/speakers/victim").json()
        for origin in (
            "http://evil.example",
            f"http://evil.example:{p}",
            f"http://localhost:{p + 1}",  # another server on this machine
            f"https://127.0.0.1:{p}",
            "null",  # sandboxed frames, file:// pages
        ):
            bad = {"Origin": origin}
            for r in (
                c.post("/v1/speakers/intruder/enrollments", files=enroll, headers=bad),
                c.post(
                    "/v1/speakers/victim/enrollments",
                    params={"append": "true"},
                    files=[("files", clip_bytes(A[1]))],
                    headers=bad,
                ),
                c.delete("/v1/speakers/victim", headers=bad),
                c.post("/v1/keys", json={"name": "x", "scope": "admin"}, headers=bad),
            ):
                problem(
                    r,
                    403,
                    "PermissionDeniedError",
                    f"cross-site request refused: Origin {origin!r} is not this server's "
                    f"(http://127.0.0.1:{p})",
                )
        assert c.get("/v1/speakers/victim").json() == before
        assert [s["name"] for s in c.get("/v1/speakers").json()] == ["victim"]
        for origin in (f"http://localhost:{p}", f"http://[::1]:{p}"):  # names of this server
            r = c.get("/v1/speakers", headers={"Origin": origin, "Host": origin[7:]})
            assert r.status_code == 200, r.text
        assert c.delete("/v1/speakers/victim", headers=own).status_code == 200
        assert c.get("/readyz").json()["auth"] == "open"  # and it is still open


def test_an_open_server_refuses_what_a_proxy_relays(srv):
    """A proxy on this machine connects from loopback and may even send Host 127.0.0.1:PORT
    (nginx's default): its forwarding headers give it away."""
    with srv.client() as c:
        for header, value in (
            ("X-Forwarded-For", "203.0.113.7"),
            ("Forwarded", "for=203.0.113.7;proto=https"),
            ("X-Real-IP", "203.0.113.7"),
            ("X-Forwarded-Host", "voice.example.org"),
        ):
            problem(
                c.get("/v1/speakers", headers={header: value}),
                403,
                "PermissionDeniedError",
                f"refuses requests relayed by a proxy ({header.lower()} header)",
            )


def test_every_answer_says_nosniff(srv):
    p = port(srv)
    with srv.client() as c:
        answers = [
            c.get("/"),
            c.get("/docs"),
            c.get("/openapi.json"),
            c.get("/healthz"),
            c.get("/readyz"),
            c.get("/metrics"),
            c.get("/v1/speakers"),
            c.get("/v1/speakers/nobody"),  # 404 problem
            c.get("/nothing"),  # 404 from routing
            c.put("/v1/identify"),  # 405
            c.post("/v1/identify"),  # 400
            c.get("/v1/speakers", headers={"Host": "evil.example"}),  # 403
            c.post("/v1/identify", content=b"x" * 30_000_000),  # 413 (the body limit)
        ]
    assert [r.status_code for r in answers] == [
        200, 200, 200, 200, 200, 200, 200, 404, 404, 405, 400, 403, 413,
    ]  # fmt: skip
    for r in answers:
        assert r.headers.get_list("x-content-type-options") == ["nosniff"], r.request.url
    answer = raw(srv, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode())
    assert b"\r\nx-content-type-options: nosniff\r\n" in answer.lower()


def test_metric_labels_take_known_methods_only(srv):
    """h11 accepts any token as a method; each one must not become a new series."""
    p = port(srv)
    for method in ("FOOBAR", "PROPFIND", "X1", "get", "OPTIONS"):
        answer = raw(srv, f"{method} /healthz HTTP/1.0\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 405 "), answer
    with srv.client() as c:
        text = c.get("/metrics").text
    for method in ("FOOBAR", "PROPFIND", "X1", 'method="get"'):
        assert method not in text
    assert 'speakerid_http_requests_total{method="other",route="/healthz",status="405"} 4.0' in (
        text
    )
    assert 'speakerid_http_requests_total{method="OPTIONS",route="/healthz",status="405"}' in text


def test_connections_beyond_the_limit_get_503_at_once(srv):
    assert ServerSettings().max_connections == 64  # the default (uvicorn's limit_concurrency)
    idle = [
        socket.create_connection(("127.0.0.1", port(srv)), timeout=10)
        for _ in range(MAX_CONNECTIONS)
    ]
    try:
        time.sleep(0.3)  # let the server accept them
        with srv.client() as c:
            t = time.perf_counter()
            r = c.get("/healthz")
            assert r.status_code == 503 and time.perf_counter() - t < 2, r.text
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connections
        with srv.client() as c:
            if c.get("/healthz").status_code == 200:
                break
        assert time.monotonic() < deadline, "the server did not recover"
        time.sleep(0.1)


def test_worker_processes_stay_closed_once_one_of_them_saw_a_key(tmp_path):
    """Two workers, open at start. A key is created through one worker and revoked at once:
    the worker that never saw it must not stay open (the supervisor's flag file tells it)."""
    srv = Server(tmp_path, "--workers", "2").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get("/v1/speakers").status_code == 200
            key = c.post("/v1/keys", json={"name": "k", "scope": "admin"}).json()["key"]
            r = c.delete("/v1/keys/k", headers={"Authorization": f"Bearer {key}"})
            assert r.json() == {"revoked": "k"}
        start = threading.Barrier(16)

        def anonymous(_: int) -> int:
            # fresh connections at once: while one worker is busy the other accepts
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                start.wait()
                r = c.get("/v1/speakers")
                if r.status_code == 401:
                    assert "needs an API key" in json.loads(r.text)["detail"]
                return r.status_code

        for _ in range(3):
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(anonymous, range(16)))
            assert statuses == [401] * 16, statuses
    finally:
        srv.stop()
