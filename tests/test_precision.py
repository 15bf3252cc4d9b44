"""Reduced precision and torch.compile: which backend each implies, and clear refusals.

The CUDA numbers (TF32, bf16, compile against the official fixtures) come from tests/test_gpu.py
and bench/gpu.py on a GPU machine; here bf16 runs through CPU autocast, the same code path.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from speakerid import errors
from speakerid.audio.decode import load_audio
from speakerid.embedding.embedder import Embedder
from speakerid.embedding.runtime import check_cpu_bf16, route_backend, tf32

from .conftest import HARDWARE, ROOT, needs_asset, speechlike, wav_bytes


def _cpu_bf16_problem() -> str | None:
    try:
        check_cpu_bf16()
    except errors.DeviceError as exc:
        return str(exc)
    return None


#: bf16 runs on CPUs with oneDNN's bf16 kernels only (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); its
#: refusal elsewhere is tested on every machine in tests/test_cpu_features.py.
needs_cpu_bf16 = pytest.mark.skipif(
    _cpu_bf16_problem() is not None,
    reason=f"{HARDWARE}this CPU cannot run bf16: {_cpu_bf16_problem()}",
)


@pytest.mark.parametrize(
    ("requested", "precision", "compile", "on_cpu", "want"),
    [
        ("auto", "fp32", False, True, "auto"),
        ("auto", "int8", False, True, "onnx"),
        ("auto", "bf16", False, True, "torch"),
        ("auto", "bf16", False, False, "torch"),
        ("auto", "tf32", False, False, "torch"),
        ("auto", "fp32", True, False, "torch"),
        ("torch", "bf16", True, False, "torch"),
    ],
)
def test_precision_and_compile_pick_their_backend(
    requested, precision, compile, on_cpu, want, monkeypatch
):
    """Routing alone, on a CPU that can run bf16 (simulated: the refusal on one that cannot is
    tests/test_cpu_features.py's)."""
    from speakerid.embedding import runtime

    monkeypatch.setattr(
        runtime, "cpu_flags", lambda: frozenset({"avx512bw", "avx512vl", "avx512dq"})
    )
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert route_backend(requested, precision, compile, on_cpu) == want


@pytest.mark.parametrize(
    ("requested", "precision", "compile", "on_cpu", "message"),
    [
        ("auto", "tf32", False, True, "precision tf32 needs a CUDA device"),
        ("auto", "fp32", True, True, "--compile needs a CUDA device"),
        ("onnx", "bf16", False, True, "precision bf16 runs on the torch backend only"),
        ("torch", "int8", False, True, "precision int8 runs on the onnx backend only"),
        ("auto", "int8", True, True, "--compile applies to the torch backend"),
    ],
)
def test_impossible_combinations_are_one_line_errors(
    requested, precision, compile, on_cpu, message
):
    with pytest.raises(errors.DeviceError, match=message):
        route_backend(requested, precision, compile, on_cpu)


@needs_cpu_bf16
def test_bf16_runs_on_pytorch_close_to_fp32_and_keeps_batching_exact(tiny_ckpt):
    fp32 = Embedder(tiny_ckpt, backend="torch")
    bf16 = Embedder(tiny_ckpt, precision="bf16")
    assert (bf16.backend, bf16.precision) == ("torch", "bf16")
    clips = [load_audio(wav_bytes(speechlike(s, seed=i))) for i, s in enumerate([2.0, 1.1, 1.9])]
    a = np.stack([e.vector for e in fp32.embed_many(clips)])
    b = np.stack([e.vector for e in bf16.embed_many(clips, batch_size=3)])
    cos = np.sum(a * b, axis=1)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    # bf16 keeps 8 mantissa bits: close to fp32, not equal to it (this tiny random network
    # amplifies rounding: 0.989-0.992 here; the trained m32 test asset gives 0.99974)
    assert cos.min() > 0.98 and cos.min() < 0.999999
    one = np.stack([bf16.embed(c).vector for c in clips])
    assert np.sum(one * b, axis=1).min() > 0.999  # padded batches still match one at a time


def test_tf32_switch_is_restored_after_each_forward():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    with tf32(False):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    with pytest.raises(RuntimeError), tf32(True):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        raise RuntimeError("a failing forward")
    assert (cudnn.allow_tf32, matmul.allow_tf32) == before


def test_compile_environment_variable_is_validated(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("SPEAKERID_COMPILE", "maybe")
    with pytest.raises(errors.InvalidInputError, match=r"\$SPEAKERID_COMPILE='maybe': use 1 or 0"):
        Embedder(tiny_ckpt)
    monkeypatch.setenv("SPEAKERID_COMPILE", "1")
    with pytest.raises(errors.DeviceError, match="--compile needs a CUDA device"):
        Embedder(tiny_ckpt)
    monkeypatch.setenv("SPEAKERID_COMPILE", "0")
    assert Embedder(tiny_ckpt).compile is False


def _cli(args, env_extra, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    env.update(SPEAKERID_HOME=str(tmp_path / "home"), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "speakerid", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


@needs_cpu_bf16
@needs_asset
def test_cli_bf16_as_users_configure_it_really_runs_bf16(tmp_path):
    """bf16 really ran (a silent fp32 fallback would pass a shape/norm check): on the real-voice
    asset and real speech, fp32 implementations agree to 1.7e-6 per component (PyTorch vs
    ONNX Runtime, measured) while bf16 (8 mantissa bits) moves components by ~4e-3 and keeps
    cosine 0.9998 to fp32: demand a difference 60x above fp32 noise and cosine >= 0.999. Where
    the CPU cannot run bf16, tests/test_cpu_features.py checks the refusal instead."""
    from .conftest import TEST_MODEL, real_speech

    (tmp_path / "voice.wav").write_bytes(wav_bytes(real_speech(0)))
    out = _cli(
        ["embed", "voice.wav", "--json"],
        {"SPEAKERID_MODEL": str(TEST_MODEL), "SPEAKERID_PRECISION": "bf16"},
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    vec = np.asarray(json.loads(out.stdout)[0]["embedding"], dtype=np.float32)
    fp32 = Embedder(TEST_MODEL, backend="torch").embed(load_audio(tmp_path / "voice.wav")).vector
    assert vec.shape == (192,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    assert np.abs(vec - fp32).max() > 1e-4 and float(vec @ fp32) >= 0.999


def test_cli_compile_and_precisions_as_users_configure_them(tiny_ckpt, tmp_path):
    (tmp_path / "a.wav").write_bytes(wav_bytes(speechlike(1.5)))
    out = _cli(["embed", "a.wav", "--compile"], {"SPEAKERID_MODEL": str(tiny_ckpt)}, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --compile needs a CUDA device (--device cuda)"
    out = _cli(
        ["embed", "a.wav", "--precision", "tf32"], {"SPEAKERID_MODEL": str(tiny_ckpt)}, tmp_path
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: precision tf32 needs a CUDA device (--device cuda)"
    out = _cli(
        ["embed", "a.wav", "--precision", "fp16"], {"SPEAKERID_MODEL": str(tiny_ckpt)}, tmp_path
    )
    assert out.returncode == 2
    assert "use one of fp32, tf32, bf16, int8" in out.stderr


def test_serve_takes_precision_and_compile_and_refuses_them_at_start(tiny_ckpt, tmp_path):
    env = {"SPEAKERID_MODEL": str(tiny_ckpt)}
    out = _cli(["serve", "--port", "0", "--precision", "tf32"], env, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: precision tf32 needs a CUDA device (--device cuda)"
    )
    out = _cli(["serve", "--port", "0", "--compile"], env, tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1]
        == "error: --compile needs a CUDA device (--device cuda)"
    )


def test_a_bound_registry_says_what_is_wrong_with_the_run_not_the_file(tiny_ckpt, tmp_path):
    """--precision tf32 or --device cuda on a CPU: the one line names that, not a moved model
    file, and the registry is left as it was."""
    clip = ROOT / "data" / "clips" / "so0003" / "000030012.opus"  # real speech: past the gates
    (tmp_path / "a.opus").write_bytes(clip.read_bytes())
    out = _cli(
        ["enroll", "alice", "a.opus", "--force"], {"SPEAKERID_MODEL": str(tiny_ckpt)}, tmp_path
    )
    assert out.returncode == 0, out.stderr
    db = tmp_path / "home" / "registry.db"
    before = db.read_bytes()
    for args, line in [
        (["--precision", "tf32"], "error: precision tf32 needs a CUDA device (--device cuda)"),
        (
            ["--device", "cuda"],
            "error: CUDA was requested (--device cuda) but no CUDA device is available",
        ),
    ]:
        if torch.cuda.is_available():
            break
        out = _cli(["verify", "alice", "a.opus", *args], {}, tmp_path)
        assert out.returncode == 2
        assert out.stderr.strip() == line
    assert db.read_bytes() == before
