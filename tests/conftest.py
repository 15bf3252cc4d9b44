"""Shared fixtures. Real data comes from ../shared (never copied into the project)."""

from __future__ import annotations

import io
import os
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

needs_shared = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"shared test data not found at {SHARED}"
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own SPEAKERID_HOME and can never reach the network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SPEAKERID_HOME", str(home))
    monkeypatch.setenv("SPEAKERID_OFFLINE", "1")
    monkeypatch.delenv("SPEAKERID_MODEL", raising=False)
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
    """A voiced, amplitude-modulated harmonic signal (deterministic) at about -12 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    sig = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t))
    x = sig * env + 0.01 * rng.standard_normal(len(t))
    return (0.25 * x / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_reference():
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
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
    from speakerid.service import SpeakerID

    with SpeakerID(db=tmp_path / "reg.db", model=tiny_ckpt) as s:
        yield s


@pytest.fixture
def voices(write_wav):
    """Distinct synthetic recordings (seeded) as WAV files."""
    return [
        write_wav(f"v{i}.wav", speechlike(1.5 + 0.1 * i, seed=i, f0=100 + 15 * i)) for i in range(6)
    ]
