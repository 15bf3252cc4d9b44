"""The HTTP API against a real ``speakerid serve`` (uvicorn, 127.0.0.1, free port): every route,
bodies equal to the CLI's ``--json``, every error as problem+json, limits, bad audio."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid.cli import app as cli_app

from .serverkit import Server, clip_bytes, clips, problem

A, B, C = clips("so0003"), clips("so0092"), clips("so0094")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    work = tmp_path_factory.mktemp("api")
    limits = ["--max-upload-mb", "1", "--max-audio-seconds", "20", "--max-files", "4"]
    with Server(work, *limits) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv):
    with srv.client() as c:
        yield c


def files(*paths, field="files"):
    return [(field, clip_bytes(p)) for p in paths]


def wav(seconds: float, rate: int = 16000) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    sf.write(
        buf,
        (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32),
        rate,
        subtype="PCM_16",
        format="WAV",
    )
    return buf.getvalue()


def state(http) -> tuple[list, int]:
    return http.get("/v1/speakers").json(), http.get("/v1/info").json()["generation"]


def test_service_routes_page_and_offline_docs(srv, http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "demo" and ready["auth"] == "open"
    info = http.get("/v1/info").json()
    assert info["model"] == "demo" and info["dim"] == 192 and info["threshold_source"]
    assert http.get("/v1/threshold").json() == {
        "threshold": info["threshold"],
        "source": info["threshold_source"],
    }

    doc = http.get("/openapi.json").json()
    assert set(doc["paths"]) >= {
        "/healthz", "/readyz", "/v1/info", "/v1/speakers", "/v1/speakers/{name}",
        "/v1/speakers/{name}/enrollments", "/v1/identify", "/v1/verify", "/v1/compare",
        "/v1/embed", "/metrics", "/v1/keys", "/v1/threshold",
    }  # fmt: skip
    assert set(doc["paths"]["/v1/speakers/{name}"]) == {"get", "delete", "patch"}
    assert "422" not in json.dumps(doc)  # errors are 400 problem+json, as documented
    for name in ("/", "/docs"):
        r = http.get(name)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        # self-contained: no script, style, image or font from anywhere else
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text), name
        assert "<script src" not in r.text and "@import" not in r.text
    page = http.get("/").text
    for hook in (
        "compare-file1", "compare-file2", "compare-run", "compare-score", "compare-decision",
        "enroll-name", "enroll-files", "enroll-run", "identify-file", "identify-run",
        "identify-result", "enroll-record", "compare-record1", "compare-record2",
        "identify-record",
    ):  # fmt: skip
        assert f'data-testid="{hook}"' in page, hook
    assert "openapi.json" in http.get("/docs").text


def test_enroll_identify_verify_compare_embed_equal_the_cli_json(srv, http, tmp_path):
    r = http.post("/v1/speakers/alice/enrollments", files=files(A[0], A[1]))
    assert r.status_code == 201, r.text
    enrolled = r.json()
    assert {k: enrolled[k] for k in ("speaker", "created", "added", "skipped", "utterances")} == {
        "speaker": "alice", "created": True, "added": 2, "skipped": [], "utterances": 2,
    }  # fmt: skip
    assert [q["file"] for q in enrolled["quality"]] == [str(A[0]), str(A[1])]
    meta = {"team": "red"}
    r = http.post(
        "/v1/speakers/bob/enrollments", files=files(B[0], B[1]), data={"metadata": json.dumps(meta)}
    )
    assert r.status_code == 201

    # append: a new file is added (200), a known one is skipped
    r = http.post(
        "/v1/speakers/alice/enrollments", params={"append": "true"}, files=files(A[2], A[0])
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1 and r.json()["skipped"] == [str(A[0])]
    assert r.json()["created"] is False and r.json()["utterances"] == 3

    ident = http.post("/v1/identify", params={"top_k": 2}, files=files(A[3], B[3]))
    assert ident.status_code == 200, ident.text
    ver = http.post("/v1/verify", files=files(B[2], field="file"), data={"speaker": "bob"})
    cmp_ = http.post(
        "/v1/compare", files=[("file1", clip_bytes(A[3])), ("file2", clip_bytes(B[3]))]
    )
    emb = http.post("/v1/embed", files=files(A[3]))
    listed = http.get("/v1/speakers").json()
    shown = http.get("/v1/speakers/bob").json()
    assert shown["metadata"] == meta and [s["source"] for s in shown["sources"]] == [
        str(B[0]),
        str(B[1]),
    ]

    # The same questions through the CLI, on the server's own registry (read-only commands).
    def cli(*args, db=True):
        extra = ["--db", str(srv.db)] if db else []
        out = CliRunner().invoke(cli_app, [*map(str, args), *extra, "--json"])
        assert out.exit_code in (0, 1), out.output
        return json.loads(out.stdout)

    assert ident.json() == cli("identify", A[3], B[3], "--top-k", "2")
    assert ver.json() == cli("verify", "bob", B[2])
    assert cmp_.json() == cli("compare", A[3], B[3])
    assert listed == cli("list")
    assert shown == cli("show", "bob")
    row = emb.json()[0]
    local = cli("embed", A[3], "--model", "demo", db=False)[0]
    assert row["file"] == local["file"] and row["model"] == local["model"] == "demo"
    assert row["dim"] == 192 and np.allclose(row["embedding"], local["embedding"], atol=1e-6)


def test_errors_are_problem_json_with_the_cli_message(srv, http):
    http.post("/v1/speakers/carol/enrollments", files=files(C[0], C[1]))
    problem(
        http.get("/v1/speakers/nobody"),
        404,
        "SpeakerNotFoundError",
        "no speaker named 'nobody' in the registry",
    )
    problem(http.delete("/v1/speakers/nobody"), 404, "SpeakerNotFoundError")
    problem(
        http.post("/v1/verify", files=files(C[2], field="file"), data={"speaker": "nobody"}),
        404,
        "SpeakerNotFoundError",
    )
    problem(
        http.post("/v1/speakers/carol/enrollments", files=files(C[2])),
        409,
        "SpeakerExistsError",
        "speaker 'carol' already exists; use --append",
    )
    problem(
        http.post("/v1/speakers/dave/enrollments", files=files(C[0])),
        409,
        "DuplicateEnrollmentError",
        "is already enrolled for speaker 'carol'",
    )
    problem(
        http.post("/v1/identify", params={"threshold": 2}, files=files(C[2])),
        400,
        "InvalidInputError",
        "threshold must be a cosine in [-1, 1], got 2.0",
    )
    problem(
        http.post("/v1/identify", params={"top_k": 0}, files=files(C[2])),
        400,
        "InvalidInputError",
        "top-k must be at least 1",
    )
    problem(
        http.post("/v1/identify", params={"top_k": "x"}, files=files(C[2])),
        400,
        "InvalidInputError",
        "query parameter 'top_k'",
    )
    problem(http.post("/v1/identify"), 400, "InvalidInputError", "field 'files' is required")
    problem(
        http.post("/v1/verify", files=files(C[2], field="file")),
        400,
        None,
        "field 'speaker' is required",
    )
    problem(
        http.post("/v1/speakers/%20/enrollments", files=files(C[2])),
        400,
        "InvalidNameError",
        "speaker name must not be empty",
    )
    problem(
        http.post("/v1/speakers/x/enrollments", files=files(C[2]), data={"metadata": "[1]"}),
        400,
        "InvalidInputError",
        "metadata must be a JSON object",
    )
    problem(http.put("/v1/threshold", json={"threshold": "high"}), 400, "InvalidInputError")
    problem(http.get("/v1/nothing"), 404, None, "no such resource: /v1/nothing")
    problem(http.put("/v1/identify"), 405, None, "method PUT is not allowed")
    problem(
        http.post("/v1/keys", json={"name": "k", "scope": "root"}),
        400,
        "InvalidInputError",
        "field 'scope'",
    )


def test_bad_audio_is_a_400_and_leaves_the_registry_unchanged(srv, http):
    http.post("/v1/speakers/erin/enrollments", files=files(C[2]))
    before = state(http)
    bad = [
        (("notes.txt", b"not audio at all", "text/plain"), "AudioDecodeError",
         "notes.txt: not a readable audio file"),
        (("empty.wav", b"", "audio/wav"), "EmptyAudioError", "empty.wav: file is empty"),
        (("short.wav", wav(0.2), "audio/wav"), "AudioTooShortError", "short.wav: audio is 0.20 s"),
        (("silent.wav", b"RIFF" + wav(2.0)[4:44] + bytes(64000), "audio/wav"), "SilentAudioError",
         "silent.wav: audio is silent"),
    ]  # fmt: skip
    for upload, error, detail in bad:
        # all or nothing: a good file next to the bad one is not enrolled either
        r = http.post(
            "/v1/speakers/frank/enrollments", files=[("files", clip_bytes(C[3])), ("files", upload)]
        )
        problem(r, 400, error, detail)
        r = http.post(
            "/v1/speakers/erin/enrollments",
            params={"append": "true"},
            files=[("files", clip_bytes(C[3])), ("files", upload)],
        )
        problem(r, 400, error, detail)
        problem(http.post("/v1/identify", files=[("files", upload)]), 400, error, detail)
    assert state(http) == before


def test_limits_are_413_and_nothing_is_stored(srv, http):
    before = state(http)
    big = ("big.wav", wav(40.0), "audio/wav")  # 1.28 MB > 1 MiB body limit
    problem(
        http.post("/v1/speakers/gina/enrollments", files=[("files", big)]),
        413,
        "LimitExceededError",
        "request body is larger than this server's limit of 1 MiB",
    )

    def chunked():  # no Content-Length: cut off while streaming
        head = b'--x\r\nContent-Disposition: form-data; name="files"; filename="big.wav"\r\n\r\n'
        data = head + big[1] + b"\r\n--x--\r\n"
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    r = http.post(
        "/v1/identify",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    problem(r, 413, "LimitExceededError", "--max-upload-mb")
    long = ("long.wav", wav(25.0, rate=8000), "audio/wav")  # 400 kB, 25 s > 20 s
    problem(
        http.post("/v1/speakers/gina/enrollments", files=[("files", long)]),
        413,
        "LimitExceededError",
        "long.wav: audio is 25.0 s long; this server accepts at most 20 s",
    )
    many = files(*(A + [B[0]]))  # 5 files > 4
    problem(
        http.post("/v1/identify", files=many),
        413,
        "LimitExceededError",
        "5 files in one request; this server accepts at most 4",
    )
    problem(
        http.post("/v1/identify", params={"top_k": 1000}, files=files(A[0])),
        400,
        "InvalidInputError",
        "top_k",
    )
    assert http.get("/healthz").status_code == 200  # the connection survived the 413s
    assert state(http) == before


def test_rename_remove_threshold_and_unusual_names(srv, http):
    for name in ("Ann/Lee", "Zoë ü", "what?#x"):
        r = http.post(
            f"/v1/speakers/{httpx_quote(name)}/enrollments",
            files=files(A[3]),
            params={"force": "true"},
        )
        assert r.status_code == 201, r.text
        assert http.get(f"/v1/speakers/{httpx_quote(name)}").json()["name"] == name
        assert http.delete(f"/v1/speakers/{httpx_quote(name)}").json() == {
            "removed": name, "utterances": 1,
        }  # fmt: skip
    http.post("/v1/speakers/hal/enrollments", files=files(B[2]))
    http.post("/v1/speakers/ida/enrollments", files=files(B[3]))
    assert http.patch("/v1/speakers/hal", json={"name": "Hal"}).json() == {
        "old": "hal",
        "new": "Hal",
    }
    problem(
        http.patch("/v1/speakers/Hal", json={"name": "ida"}),
        409,
        "SpeakerExistsError",
        "speaker 'ida' already exists",
    )
    problem(http.patch("/v1/speakers/hal", json={"name": "x"}), 404, "SpeakerNotFoundError")
    problem(http.patch("/v1/speakers/Hal", json={}), 400, None, "field 'name' is required")
    assert http.delete("/v1/speakers/Hal").json() == {"removed": "Hal", "utterances": 1}
    problem(http.delete("/v1/speakers/Hal"), 404, "SpeakerNotFoundError")

    card = http.get("/v1/threshold").json()
    assert http.put("/v1/threshold", json={"threshold": 0.9}).json() == {
        "threshold": 0.9, "source": "set by user",
    }  # fmt: skip
    row = http.post("/v1/identify", files=files(C[3])).json()[0]
    assert row["threshold"] == 0.9 and row["speaker"] is None and row["candidates"]
    assert http.put("/v1/threshold", json={"threshold": None}).json() == card
    problem(
        http.get("/v1/threshold", params={"asnorm": "true"}),
        400,
        "InvalidInputError",
        "AS-Norm scores need their own threshold",
    )


def test_metrics(srv, http):
    """Stands alone (any order, ``-k``): it makes the requests it counts."""
    r = http.post("/v1/speakers/mia/enrollments", files=files(C[3]), params={"force": "true"})
    assert r.status_code == 201, r.text
    assert http.post("/v1/identify", files=files(A[3])).status_code == 200
    problem(http.get("/v1/speakers/nobody-here"), 404, "SpeakerNotFoundError")
    assert http.delete("/v1/speakers/mia").status_code == 200
    text = http.get("/metrics").text
    assert 'speakerid_http_requests_total{method="POST",route="/v1/identify",status="200"}' in text
    assert re.search(
        r'speakerid_http_request_duration_seconds_bucket\{le="\+Inf",method="GET",'
        r'route="/v1/speakers/\{name\}",status="404"\} [1-9]',
        text,
    )
    assert float(re.search(r"^speakerid_audio_seconds_embedded_total (\S+)", text, re.M)[1]) > 2.0
    assert float(re.search(r"^speakerid_embed_batch_size_count (\S+)", text, re.M)[1]) >= 1
    assert "speakerid_embed_queue_depth 0.0" in text
    assert "alice" not in text  # route templates, never names


def test_nothing_sensitive_or_audio_in_logs_or_on_disk(srv, http):
    logs = srv.logs()
    assert "Traceback" not in logs and "RIFF" not in logs and "OggS" not in logs
    assert not [p for p in srv.workdir.rglob("*") if p.suffix in (".opus", ".wav", ".tmp")]
    from starlette.formparsers import MultiPartParser

    from speakerid.server import create_app
    from speakerid.server.settings import ServerSettings

    create_app(ServerSettings(max_upload_mb=25))  # uploads are never spooled to a temp file
    assert MultiPartParser.spool_max_size > 25 * 1024 * 1024


def httpx_quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def test_keep_alive_requests_do_not_wait_for_delayed_acks(srv, http):
    """The listening socket says it is TCP, so asyncio sets TCP_NODELAY on every connection:
    without it each keep-alive response waited ~40 ms for the client's delayed ACK."""
    import socket
    import statistics
    import time

    from speakerid.server.runner import bind

    sock = bind("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    sock.close()
    took = []
    for _ in range(11):
        t = time.perf_counter()
        assert http.get("/healthz").status_code == 200
        took.append(time.perf_counter() - t)
    assert statistics.median(took) < 0.03, took


def test_not_ready_and_a_damaged_registry_are_503_not_500(tmp_path):
    import asyncio

    import httpx

    from speakerid.server import create_app
    from speakerid.server.app import ServerState
    from speakerid.server.settings import ServerSettings

    async def before_start():  # the app without its lifespan: model not loaded yet
        app = create_app(state=ServerState(ServerSettings(db=str(tmp_path / "x.db"))))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            return [await c.get(p) for p in ("/readyz", "/v1/speakers", "/healthz")]

    ready, speakers, health = asyncio.run(before_start())
    problem(ready, 503, "NotReadyError", "the server is starting or stopping")
    problem(speakers, 503, "NotReadyError")
    assert health.status_code == 200

    with Server(tmp_path) as s, s.client() as c:
        assert c.post("/v1/speakers/a/enrollments", files=files(A[0])).status_code == 201
        for f in s.db.parent.glob("registry.db*"):  # damage the database under the server
            if not f.name.endswith((".index", ".lock")):
                f.write_bytes(b"\0" * f.stat().st_size)
        # the driver's message goes to the log, not to callers (this one has no key)
        problem(c.get("/readyz"), 503, "NotReadyError")
        for r in (c.get("/v1/speakers"), c.post("/v1/identify", files=files(A[1]))):
            problem(r, 503, "NotReadyError", "the registry database does not answer")
        for r in (c.get("/readyz"), c.get("/v1/speakers")):
            assert "SELECT" not in r.text and "not a database" not in r.text, r.text
        assert "file is not a database" in s.logs()
