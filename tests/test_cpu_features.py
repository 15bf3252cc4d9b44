"""Processor features are checked before use: bf16 on a CPU that cannot run it is one line.

The refusal is tested on every machine: where the real CPU has AVX-512 the missing feature is
simulated (``runtime.cpu_flags`` replaced, in this process or in a fresh one); where it lacks
them (AMD EPYC with AVX2 only, say) the same tests run against the real CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from speakerid import errors
from speakerid.embedding import runtime
from speakerid.embedding.runtime import check_cpu_bf16, route_backend

from .conftest import CLIPS, HARDWARE, VOICE_CLIPS

#: An AVX2 + FMA machine without AVX-512 (the flags of the AMD EPYC that found the bug).
AVX2_ONLY = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 adx".split())
LACKS = "this CPU lacks avx512bw, avx512vl, avx512dq, avx_ne_convert"
INSTEAD = "use the default --precision fp32 (exact), or --precision int8 (ONNX Runtime)"
LINE = (
    "error: precision bf16 on CPU needs AVX-512 (avx512bw, avx512vl, avx512dq) or "
    f"AVX-NE-CONVERT, and {LACKS}: {INSTEAD}"
)


@pytest.fixture
def avx2_only(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_flags_come_from_the_kernel_on_x86():
    flags = runtime.cpu_flags()
    if flags is None:
        pytest.skip(HARDWARE + "not an x86 Linux machine: /proc/cpuinfo has no x86 flags")
    assert "sse2" in flags  # every x86-64 CPU has it


@pytest.mark.parametrize(
    ("flags", "ok"),
    [
        (AVX2_ONLY, False),
        (AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}, False),  # no avx512dq
        (AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}, True),
        (AVX2_ONLY | {"avx_ne_convert"}, True),
    ],
)
def test_bf16_needs_one_of_onednns_two_feature_sets(monkeypatch, flags, ok):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    if ok:
        check_cpu_bf16()
        assert route_backend("auto", "bf16", False, True) == "torch"
    else:
        with pytest.raises(errors.DeviceError) as exc:
            route_backend("auto", "bf16", False, True)
        missing = sorted({"avx512bw", "avx512vl", "avx512dq", "avx_ne_convert"} - flags)
        assert str(exc.value).startswith("precision bf16 on CPU needs AVX-512")
        lacks = str(exc.value).split("this CPU lacks ")[1].split(":")[0].split(", ")
        assert sorted(lacks) == missing
        assert str(exc.value).endswith(INSTEAD)


def test_bf16_on_cuda_and_other_precisions_are_not_cpu_checks(avx2_only):
    assert route_backend("auto", "bf16", False, False) == "torch"  # CUDA: the GPU decides
    assert route_backend("auto", "fp32", False, True) == "auto"
    assert route_backend("auto", "int8", False, True) == "onnx"
    with pytest.raises(errors.DeviceError, match="runs on the torch backend only"):
        route_backend("onnx", "bf16", False, True)  # the backend error comes first


def test_an_onednn_isa_limit_below_avx512_is_refused_too(monkeypatch):
    monkeypatch.setattr(
        runtime, "cpu_flags", lambda: AVX2_ONLY | {"avx512bw", "avx512vl", "avx512dq"}
    )
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    with pytest.raises(errors.DeviceError, match=r"\$ONEDNN_MAX_CPU_ISA=AVX2 keeps them off"):
        check_cpu_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    check_cpu_bf16()


def test_other_architectures_ask_pytorch(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: None)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(runtime, "_torch_bf16_supported", lambda: False)
    with pytest.raises(errors.DeviceError, match="precision bf16 is not supported by this CPU"):
        check_cpu_bf16()
    monkeypatch.setattr(runtime, "_torch_bf16_supported", lambda: True)
    check_cpu_bf16()


def test_the_python_api_refuses_before_loading_anything(avx2_only, tiny_ckpt, tmp_path):
    from speakerid import SpeakerID
    from speakerid.embedding.embedder import Embedder

    with pytest.raises(errors.DeviceError, match=LACKS):
        Embedder(tiny_ckpt, precision="bf16")
    with pytest.raises(errors.DeviceError, match=LACKS):
        Embedder(tiny_ckpt, precision="bf16", backend="torch")
    with SpeakerID(db=tmp_path / "r.db", model=tiny_ckpt, precision="bf16") as sid:
        with pytest.raises(errors.DeviceError, match=LACKS):
            sid.compare(CLIPS / VOICE_CLIPS[0], CLIPS / VOICE_CLIPS[1])


# A fresh process as users run it, with the CPU's flags replaced before the CLI starts.
_FAKE_CPU = (
    "import sys; import speakerid.embedding.runtime as r; "
    "flags = frozenset(sys.argv.pop(1).split(',')); r.cpu_flags = lambda: flags; "
    "from speakerid.cli import main; sys.argv[0] = 'speakerid'; main()"
)


def _run(args, tmp_path, flags=AVX2_ONLY, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPEAKERID_", "ONEDNN_"))}
    env.update(SPEAKERID_HOME=str(tmp_path / "home"), SPEAKERID_OFFLINE="1", **env_extra)
    return subprocess.run(
        [sys.executable, "-c", _FAKE_CPU, ",".join(sorted(flags)), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_cli_refuses_bf16_in_one_line_as_users_configure_it(tiny_ckpt, tmp_path):
    (tmp_path / "a.opus").write_bytes((CLIPS / VOICE_CLIPS[0]).read_bytes())
    model = {"SPEAKERID_MODEL": str(tiny_ckpt)}
    for args, env in [
        (["embed", "a.opus", "--precision", "bf16"], model),
        (["embed", "a.opus", "--precision", "bf16", "--backend", "torch", "--json"], model),
        (["embed", "a.opus"], {**model, "SPEAKERID_PRECISION": "bf16"}),
        (["compare", "a.opus", "a.opus"], {**model, "SPEAKERID_PRECISION": "bf16"}),
    ]:
        out = _run(args, tmp_path, **env)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip() == LINE, out.stderr
        assert out.stdout == ""
    assert not (tmp_path / "home" / "registry.db").exists()
    out = _run(["embed", "a.opus", "--json"], tmp_path, **model)  # fp32: unaffected
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_bf16_at_start(tiny_ckpt, tmp_path, workers):
    out = _run(
        ["serve", "--port", "0", "--workers", workers, "--precision", "bf16"],
        tmp_path,
        SPEAKERID_MODEL=str(tiny_ckpt),
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == LINE
    assert "Uvicorn running" not in out.stderr


def test_bf16_on_a_gpu_without_native_bfloat16_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(errors.DeviceError, match="Tesla T4 has none: use --precision fp32"):
        route_backend("auto", "bf16", False, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert route_backend("auto", "bf16", False, False) == "torch"
