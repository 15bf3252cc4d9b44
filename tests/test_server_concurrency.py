"""Throughput and lifecycle of the server: micro-batching (concurrent requests embedded together,
exactly as alone), 16 identify clients while 2 enroll, SIGTERM during an enrollment."""

from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from speakerid.audio.decode import AudioClip, load_audio
from speakerid.embedding.embedder import Embedding
from speakerid.errors import LimitExceededError
from speakerid.server.batching import BatchingEmbedder
from speakerid.server.metrics import Metrics

from .serverkit import Server, clip_bytes, clips


def clip(name: str, seconds: float = 1.0) -> AudioClip:
    return AudioClip(np.zeros(int(seconds * 16000), np.float32), name, 16000, 1, name)


class FakeEmbedder:
    """Records its batches; the first call waits for ``gate`` so that others queue up."""

    name, dim = "fake", 2

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()

    def embed_clips(self, clips, batch_size=None):
        if not self.batches:
            self.gate.wait(10)
        self.batches.append([c.source for c in clips])
        if any(c.source == "boom" for c in clips):
            raise RuntimeError("cannot embed boom")
        return [
            Embedding(np.array([len(c.samples), i], np.float32), "fake", c.source, c.duration, "")
            for i, c in enumerate(clips)
        ]


def test_concurrent_requests_are_embedded_in_one_batch_and_answered_in_order():
    fake = FakeEmbedder()
    metrics = Metrics()
    b = BatchingEmbedder(fake, metrics, max_batch=64, max_wait=0.05)
    assert b.name == "fake" and b.dim == 2  # the embedder's attributes show through
    jobs = [[clip(f"r{i}-{j}", 1 + j) for j in range(i % 3 + 1)] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(b.embed_many, jobs[0])
        time.sleep(0.2)  # the worker is busy with the first request
        rest = [pool.submit(b.embed_many, j) for j in jobs[1:]]
        time.sleep(0.2)
        fake.gate.set()
        answers = [first.result(10)] + [f.result(10) for f in rest]
    assert fake.batches[0] == ["r0-0"]
    assert len(fake.batches) == 2 and sorted(fake.batches[1]) == sorted(
        c.source for j in jobs[1:] for c in j
    )
    for job, got in zip(jobs, answers):  # each request gets its own clips' embeddings, in order
        assert [e.source for e in got] == [c.source for c in job]
        assert [e.vector[0] for e in got] == [len(c.samples) for c in job]
    text = metrics.render().decode()
    assert "speakerid_embed_batch_requests_sum 8.0" in text
    assert "speakerid_embed_batch_size_sum 15.0" in text
    assert "speakerid_audio_seconds_embedded_total 24.0" in text
    b.close(5)


def test_a_failing_request_does_not_fail_the_others_in_its_batch():
    fake = FakeEmbedder()
    b = BatchingEmbedder(fake, max_batch=64, max_wait=0.05)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(b.embed_many, [clip("a")])
        time.sleep(0.2)
        good = pool.submit(b.embed_many, [clip("b"), clip("c")])
        bad = pool.submit(b.embed_many, [clip("boom")])
        time.sleep(0.2)
        fake.gate.set()
        assert [e.source for e in first.result(10)] == ["a"]
        assert [e.source for e in good.result(10)] == ["b", "c"]
        with pytest.raises(RuntimeError, match="cannot embed boom"):
            bad.result(10)
    b.close(5)


def test_limits_are_checked_before_queueing():
    fake = FakeEmbedder()
    fake.gate.set()
    b = BatchingEmbedder(fake, max_seconds=2.0)
    with pytest.raises(LimitExceededError, match="long: audio is 3.0 s long; .* at most 2 s"):
        b.embed_many([clip("ok"), clip("long", 3.0)])
    assert fake.batches == []
    b.close(5)


#: Largest |difference| accepted between a unit embedding computed in a padded batch and
#: alone. Error budget: both are float32 (eps 1.2e-7) and differ only in the order of the
#: sums inside batched convolutions (oneDNN blocks a batch differently); each of the ~30
#: layers adds a relative error of about sqrt(K) * eps (K <= 1152 products per output),
#: random in sign, so the unit vector moves by ~sqrt(30) * 4e-6 = 2e-5 at worst; measured
#: 2.2e-7 (demo model, 2-core EPYC). 1e-4 leaves 5x over the budget, and stays 48x under what
#: a masking error costs: two padded frames of 290 left in the statistics pooling move the
#: embedding by 4.8e-3 (six frames: 9.6e-3).
PADDED_BATCH_TOLERANCE = 1e-4


def batched_and_alone(emb, sources: list) -> tuple[list, list, list[list[int]], list[int]]:
    """Each clip embedded alone, then all at once from concurrent callers through a
    ``BatchingEmbedder`` -> (alone, together, the network's runs as lists of the fbank
    lengths in each, the worker's batch sizes)."""
    loaded = [s if isinstance(s, AudioClip) else load_audio(s) for s in sources]
    alone = [emb.embed_clips([c])[0].vector for c in loaded]
    calls: list[list[int]] = []
    batches: list[int] = []
    forward, onnx, embed_clips = emb._forward, emb._onnx, emb.embed_clips

    def recording_forward(feats):  # PyTorch: one padded batch per call
        calls.append([f.shape[0] for f in feats])
        return forward(feats)

    def recording_onnx(x):  # ONNX Runtime: [n, T, 80] per run
        calls.append([x.shape[1]] * x.shape[0])
        return onnx(x)

    def recording_embed_clips(clips, batch_size=None):
        batches.append(len(clips))
        return embed_clips(clips, batch_size)

    emb.embed_clips = recording_embed_clips
    if onnx is None:
        emb._forward = recording_forward
    else:
        emb._onnx = recording_onnx
    b = BatchingEmbedder(emb, max_batch=64, max_wait=0.5)  # all callers join the first batch
    try:
        with ThreadPoolExecutor(len(loaded)) as pool:
            together = list(pool.map(lambda c: b.embed_many([c])[0].vector, loaded))
    finally:
        b.close(5)
        del emb.embed_clips
        emb._forward, emb._onnx = forward, onnx
    return alone, together, calls, batches


def test_padded_batches_of_different_lengths_equal_the_clips_alone():
    """PyTorch (the server's backend on CUDA, and on CPU without onnxruntime), batches of 8:
    concurrent requests' clips of different lengths go through the network as padded, masked
    batches, and each embedding equals the one computed alone within the error budget of
    ``PADDED_BATCH_TOLERANCE``."""
    from speakerid.embedding.embedder import Embedder

    emb = Embedder("demo", backend="torch", batch_size=8)
    sources = [p for s in ("so0003", "so0044", "so0092", "so0094") for p in clips(s)]
    alone, together, calls, batches = batched_and_alone(emb, sources)
    assert batches == [len(sources)]  # 16 requests, one worker batch
    padded = [c for c in calls if len(c) > 1 and len(set(c)) > 1]
    assert len(padded) >= 2 and sum(map(len, padded)) >= 8, calls  # really padded batches
    diff = max(float(np.abs(x - y).max()) for x, y in zip(alone, together))
    assert diff <= PADDED_BATCH_TOLERANCE, diff
    assert diff > 0 or all(len(c) == 1 for c in calls)  # (a different computation, not a copy)


def test_onnx_batches_requests_but_runs_unequal_lengths_one_by_one():
    """ONNX Runtime (the server's CPU default): its exported graph has no length mask, so
    the worker's batch reaches the network clip by clip (on CPU the embedder's batch size is
    1 anyway) and every embedding is bit for bit the one computed alone. With a larger batch
    size only clips of equal length are stacked, within ``PADDED_BATCH_TOLERANCE``."""
    from speakerid.embedding.embedder import Embedder

    emb = Embedder("demo")
    assert emb.backend == "onnx" and emb.batch_size == 1
    sources = [p for s in ("so0003", "so0092") for p in clips(s)]
    alone, together, calls, batches = batched_and_alone(emb, sources)
    assert batches == [len(sources)] and all(len(c) == 1 for c in calls), (batches, calls)
    for x, y in zip(alone, together):
        np.testing.assert_array_equal(x, y)

    wide = Embedder("demo", batch_size=8)
    cut = [load_audio(p) for p in sources]
    cut = [AudioClip(c.samples[: 2 * 16000], c.source, 16000, 1, "") for c in cut[:4]] + cut[4:]
    alone, together, calls, _ = batched_and_alone(wide, cut)
    assert [4] in [[len(c)] for c in calls if len(set(c)) == 1]  # the four 2 s clips stacked
    assert all(len(set(c)) == 1 for c in calls)  # unequal lengths never share a network call
    diff = max(float(np.abs(x - y).max()) for x, y in zip(alone, together))
    assert diff <= PADDED_BATCH_TOLERANCE, diff


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("busy"), "--batch-wait-ms", "5") as s:
        yield s


def test_16_identify_clients_while_2_enroll(busy):
    base = {"alice": clips("so0003"), "bob": clips("so0092"), "carol": clips("so0094")}
    with busy.client() as c:
        for name, files in base.items():
            r = c.post(
                f"/v1/speakers/{name}/enrollments",
                files=[("files", clip_bytes(files[0])), ("files", clip_bytes(files[1]))],
            )
            assert r.status_code == 201, r.text
        probes = [p for files in base.values() for p in files[2:]] + clips("so0120")
        alone = {}
        for p in probes:
            row = c.post("/v1/identify", params={"top_k": 5}, files=[("files", clip_bytes(p))])
            alone[str(p)] = {k["speaker"]: k["score"] for k in row.json()[0]["candidates"]}

    statuses: list[int] = []
    answers: list[dict] = []
    lock = threading.Lock()

    def identify_client(i: int) -> None:
        with busy.client() as c:
            for k in range(3):
                picked = [probes[(i + k) % len(probes)], probes[(3 * i + k) % len(probes)]][
                    : 1 + k % 2
                ]
                r = c.post(
                    "/v1/identify",
                    params={"top_k": 5},
                    files=[("files", clip_bytes(p)) for p in picked],
                )
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        assert [row["file"] for row in r.json()] == [str(p) for p in picked]
                        answers.extend(r.json())

    def enroll_client(name: str, files) -> None:
        with busy.client() as c:
            for k, f in enumerate(files[:2]):
                r = c.post(
                    f"/v1/speakers/{name}/enrollments",
                    params={"append": str(k > 0).lower()},
                    files=[("files", clip_bytes(f))],
                )
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=identify_client, args=(i,)) for i in range(16)]
    threads += [
        threading.Thread(target=enroll_client, args=("dave", clips("so0111"))),
        threading.Thread(target=enroll_client, args=("erin", clips("so0113"))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert len(statuses) == 16 * 3 + 4 and all(s < 500 for s in statuses), statuses
    assert sorted(set(statuses)) == [200, 201]  # every request answered, none refused
    assert len(answers) == sum(1 + k % 2 for _ in range(16) for k in range(3))
    for row in answers:  # the already-enrolled speakers score exactly as for the probe alone
        got = {k["speaker"]: k["score"] for k in row["candidates"]}
        for name in base:
            if name in alone[row["file"]]:
                assert got[name] == alone[row["file"]][name], (row["file"], name)
    with busy.client() as c:
        listed = {s["name"]: s["utterances"] for s in c.get("/v1/speakers").json()}
        assert listed == {"alice": 2, "bob": 2, "carol": 2, "dave": 2, "erin": 2}  # nothing lost
        text = c.get("/metrics").text
    requests = float(re.search(r"^speakerid_embed_batch_requests_sum (\S+)", text, re.M)[1])
    batches = float(re.search(r"^speakerid_embed_batch_requests_count (\S+)", text, re.M)[1])
    assert requests > batches  # some requests shared a batch


def long_wav(files, seed: int) -> bytes:
    """About 20 s of one speaker's speech (its clips in a seeded order): distinct bytes."""
    rng = np.random.default_rng(seed)
    parts = [load_audio(f).samples for f in files]
    order = [int(i) for i in rng.permutation(len(parts))] * 2
    audio = np.concatenate([parts[i] for i in order])
    buf = io.BytesIO()
    sf.write(buf, audio * (0.9 + 0.01 * seed), 16000, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)", text, re.M)
    return float(found[1]) if found else 0.0


def test_sigterm_during_an_enrollment_finishes_it_then_exits(tmp_path):
    """SIGTERM lands while an enrollment of 8 long recordings is being computed (seen from
    the server's own metrics: the request in flight and its first clips embedded, and no
    answer received yet): the enrollment is answered 201 after the signal, all of it stored,
    and the process exits 0."""
    from speakerid.service.facade import SpeakerID

    uploads = [
        ("files", (f"long{i}.wav", long_wav(clips("so0111"), i), "audio/wav")) for i in range(8)
    ]
    srv = Server(tmp_path).start()
    result: dict = {}

    def enroll() -> None:
        with srv.client() as c:
            try:
                result["response"] = c.post("/v1/speakers/talker/enrollments", files=uploads)
            except Exception as exc:  # the connection may be cut: then nothing may be stored
                result["error"] = exc
            result["at"] = time.monotonic()

    t = threading.Thread(target=enroll)
    t.start()
    seen = None
    with srv.client() as c:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not result:
            text = c.get("/metrics").text
            in_flight = metric(text, "speakerid_http_requests_in_flight")  # + this scrape
            embedded = metric(text, "speakerid_clips_embedded_total")
            if in_flight >= 2 and embedded >= 1:
                seen = (in_flight, embedded)
                break
            time.sleep(0.01)
    signalled = time.monotonic()
    srv.terminate()
    assert seen and not result, f"the enrollment was not seen being computed: {result}"
    t.join(120)
    code = srv.proc.wait(120)
    assert code == 0, srv.logs()
    assert "Application shutdown complete" in srv.logs()
    with SpeakerID(db=srv.db) as sid:
        stored = {s.name: s.utterances for s in sid.list()}
        assert sid.check_index().ok
    assert "response" in result, result  # uvicorn let the request in flight finish
    assert result["at"] > signalled  # answered after the signal arrived
    assert result["response"].status_code == 201, result["response"].text
    assert stored == {"talker": 8}


def test_workers_share_the_port_and_stop_together(tmp_path):
    """``--workers 2``: two processes, each with the model, behind one port; SIGTERM stops all."""
    srv = Server(tmp_path, "--workers", "2").start()
    with srv.client() as c:
        r = c.post(
            "/v1/speakers/alice/enrollments", files=[("files", clip_bytes(clips("so0003")[0]))]
        )
        assert r.status_code == 201
    for _ in range(4):  # new connections: whichever worker answers sees the same registry
        with srv.client() as c:
            rows = c.post("/v1/identify", files=[("files", clip_bytes(clips("so0003")[1]))]).json()
            assert rows[0]["candidates"][0]["speaker"] == "alice"
    assert srv.stop() == 0
    assert srv.logs().count("Application shutdown complete") == 2
