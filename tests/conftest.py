"""Shared fixtures. Real data comes from ../shared (never copied into the project)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# The suite runs on shared machines: one compute thread per process degrades gracefully when
# other processes compete for the cores, where OpenMP teams collapse (docs/performance.md,
# "Threads"). Set before torch is imported; subprocesses (CLI tests) inherit both.
os.environ.setdefault("SPEAKERID_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPEAKERID_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
DATASETS = SHARED / "datasets"
TEST_MODEL = SHARED / "models" / "eres2netv2-m32-so762.pt"
CLIPS = ROOT / "data" / "clips"
#: Six real recordings of six different speakers (data/clips, 3.0-4.5 s, 2.3-3.5 s of speech).
VOICE_CLIPS = [
    "so0003/000030012.opus",
    "so0044/000440021.opus",
    "so0120/001200015.opus",
    "so0094/000940012.opus",
    "so0111/001110039.opus",
    "so0113/001130005.opus",
]

#: Skip reasons that CI accepts: hardware this machine does not have (a GPU, a CPU feature).
#: Every other skip fails the run under CI (see ``pytest_runtest_makereport``).
HARDWARE = "hardware: "


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def shared_missing(*paths: Path) -> str | None:
    """Why tests that read these ../shared paths cannot run here, or None when all exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if not missing:
        return None
    return (
        f"shared test data missing: {', '.join(missing)} (the read-only folder ../shared beside "
        f"the project holds the fixtures, datasets and real-voice model, see its README.md; "
        f"set SPEAKERID_SHARED to its location)"
    )


def needs(*paths: Path) -> pytest.MarkDecorator:
    """Skip where ../shared data is missing; under CI that skip fails the run."""
    reason = shared_missing(*paths)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


needs_shared = needs(FIXTURES)
needs_asset = needs(TEST_MODEL)
needs_dev_set = needs(TEST_MODEL, DATASETS / "speechocean762-dev")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test fails the run (a test that skips in CI does not exist), unless it
    skipped for hardware the machine lacks (``HARDWARE`` reasons: GPU, CPU features)."""
    outcome = yield
    rep = outcome.get_result()
    if not (in_ci() and rep.skipped) or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if reason.removeprefix("Skipped: ").startswith(HARDWARE):
        return
    rep.outcome = "failed"
    rep.longrepr = f"this test skipped under CI, where every test must run: {reason}"


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Iterator[Path]:
    """One cache of ONNX exports (SPEAKERID_CACHE) for the whole run, module fixtures
    included: exports are keyed by checkpoint sha256, so each model is exported once per run
    instead of once per test (every test has its own SPEAKERID_HOME)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEAKERID_CACHE", str(path))
        yield path


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch, onnx_cache):
    """Every test gets its own SPEAKERID_HOME and can never reach the network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SPEAKERID_HOME", str(home))
    monkeypatch.setenv("SPEAKERID_CACHE", str(onnx_cache))
    monkeypatch.delenv("SPEAKERID_BACKEND", raising=False)
    monkeypatch.setenv("SPEAKERID_OFFLINE", "1")
    monkeypatch.delenv("SPEAKERID_MODEL", raising=False)
    monkeypatch.delenv("SPEAKERID_DB", raising=False)
    monkeypatch.delenv("SPEAKERID_THRESHOLD", raising=False)
    monkeypatch.delenv("SPEAKERID_MODELSCOPE_URL", raising=False)
    return home


def wav_bytes(
    samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV"
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def speechlike(seconds: float, rate: int = 16000, seed: int = 0, f0: float = 140.0) -> np.ndarray:
    """A voiced, amplitude-modulated harmonic signal (deterministic) at about -12 dBFS.

    NOT speech for the Silero VAD (about 0-0.3 s of "speech"): use ``real_speech`` for anything
    that must pass the speech gates."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    sig = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t))
    x = sig * env + 0.01 * rng.standard_normal(len(t))
    return (0.25 * x / np.max(np.abs(x))).astype(np.float32)


def real_speech(i: int = 0) -> np.ndarray:
    """Recording ``VOICE_CLIPS[i]`` as float32 16 kHz mono samples (the clips are 16 kHz)."""
    x, rate = sf.read(CLIPS / VOICE_CLIPS[i], dtype="float32")
    assert rate == 16000 and x.ndim == 1
    return x


def white(seconds: float = 3.0, rms: float = 0.1, seed: int = 0) -> np.ndarray:
    """White noise (default -20 dBFS RMS)."""
    return (rms * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(
        np.float32
    )


def pink(seconds: float = 3.0, rms: float = 0.1, seed: int = 0) -> np.ndarray:
    """1/f noise (FFT-shaped white noise)."""
    n = int(seconds * 16000)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
    x = np.fft.irfft(spec, n)
    return (rms * x / x.std()).astype(np.float32)


def music(seconds: float = 3.0) -> np.ndarray:
    """Synthetic piano-like chords (C, Am, F, G; 3 harmonics, plucked envelope), 0.5 s each."""
    n, step = int(seconds * 16000), 8000
    chords = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9)]
    out = np.zeros(n)
    for i in range(0, n, step):
        t = np.arange(min(step, n - i)) / 16000
        env = np.exp(-3 * t) * (1 - np.exp(-200 * t))
        notes = chords[(i // step) % 4]
        out[i : i + len(t)] = env * sum(
            np.sin(2 * np.pi * f * h * t) / h for f in notes for h in (1, 2, 3)
        )
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def noise_floor(seconds: float = 3.0) -> np.ndarray:
    """Near-silence: white noise at -60 dBFS RMS (above the -80 dBFS 'silent audio' refusal)."""
    return white(seconds, rms=1e-3, seed=5)


@pytest.fixture(scope="session")
def tiny_reference():
    reason = shared_missing(FIXTURES / "eres2netv2_tiny_reference.pt")
    if reason:
        pytest.skip(reason)
    import torch

    return torch.load(FIXTURES / "eres2netv2_tiny_reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_reference, tmp_path_factory) -> Path:
    """The official tiny fixture's weights written as a plain state-dict checkpoint."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_reference["state_dict"], path)
    return path


@pytest.fixture
def write_wav(tmp_path):
    def _write(name: str, samples: np.ndarray, rate: int = 16000, **kw) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav_bytes(samples, rate, **kw))
        return path

    return _write


def unit_rows(n: int, dim: int = 192, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def sid(tmp_path, tiny_ckpt):
    """A SpeakerID on a fresh registry, bound to the tiny fixture model."""
    from speakerid.service.facade import SpeakerID

    with SpeakerID(db=tmp_path / "reg.db", model=tiny_ckpt) as s:
        yield s


@pytest.fixture
def voices(write_wav):
    """Six real recordings of six different speakers (``VOICE_CLIPS``) as 16-bit WAV files."""
    return [write_wav(f"v{i}.wav", real_speech(i)) for i in range(len(VOICE_CLIPS))]


# --- PostgreSQL (a real server started by the test run itself) ------------------------------
@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the whole run. Skipped where PostgreSQL is not installed,
    except in CI (``CI`` set), where a server that cannot start fails the run loudly."""
    from .pgserver import PgServer, PgUnavailable

    server = PgServer()
    try:
        import psycopg  # noqa: F401

        server.start()
    except (PgUnavailable, ImportError) as exc:
        server.stop()
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"PostgreSQL is required in CI and could not be started: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database (a URL for --db), dropped after the test."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A registry location on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "reg.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sid_any(db_url, tiny_ckpt):
    """``sid`` on each backend."""
    from speakerid.service.facade import SpeakerID

    with SpeakerID(db=db_url, model=tiny_ckpt) as s:
        yield s
