"""Fast by default: ONNX Runtime on CPU without flags, PyTorch as the fallback, and one-shot
commands (and their front end: resampling, fbank) that never import torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid import errors
from speakerid.audio.decode import AudioClip, load_audio
from speakerid.audio.resample import resample
from speakerid.cli import app
from speakerid.embedding import onnx_backend
from speakerid.embedding.embedder import Embedder
from speakerid.embedding.features import fbank_numpy
from speakerid.embedding.runtime import choose_backend

from .budgets import COSINE_SAME, NORM_ATOL, RESAMPLE_ATOL, within_fbank_budget
from .conftest import CLIPS, ROOT, VOICE_CLIPS, real_speech, wav_bytes

runner = CliRunner()


def test_default_backend_on_cpu_is_onnx_runtime_exported_once_with_metadata(
    tiny_ckpt, tmp_path, monkeypatch
):
    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path / "cache"))
    told = []

    @contextmanager
    def preparing(message: str):
        told.append(message)
        yield

    emb = Embedder(tiny_ckpt, on_prepare=preparing)
    assert (emb.backend, emb.dim) == ("onnx", 192)
    path = onnx_backend.cache_path(emb.sha256)
    assert path.parent == tmp_path / "cache" / "onnx" and path.is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == emb.sha256 and meta["dim"] == 192
    assert meta["config"]["m_channels"] == emb.model.config.m_channels
    assert told == ["preparing tiny for ONNX Runtime (first use only; cached afterwards)"]
    # the trunk (window embeddings: multi-speaker guard, track) is exported with the model
    assert all(p.is_file() for p in onnx_backend.frames_paths(emb.sha256))
    again = Embedder(tiny_ckpt, on_prepare=preparing)
    assert again.backend == "onnx" and len(told) == 1  # cached: nothing to prepare
    for p in onnx_backend.frames_paths(emb.sha256):  # a cache from before the trunk export
        p.unlink()
    assert again.frame_network() is not None and len(told) == 2  # exported when first needed
    assert all(p.is_file() for p in onnx_backend.frames_paths(emb.sha256))


def test_export_cache_defaults_to_the_home(monkeypatch, isolated_home):
    monkeypatch.delenv("SPEAKERID_CACHE")
    assert onnx_backend.cache_path("ab" * 32).parent == isolated_home / "onnx"


def test_without_onnxruntime_the_default_falls_back_to_pytorch_with_one_log_line(
    tiny_ckpt, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with caplog.at_level(logging.INFO, logger="speakerid"):
        emb = Embedder(tiny_ckpt)
    assert emb.backend == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "onnxruntime is not installed: using the slower PyTorch backend"
    ]
    assert caplog.records[0].levelno == logging.WARNING
    clip = load_audio(wav_bytes(real_speech(0)))
    assert abs(float(np.linalg.norm(emb.embed(clip).vector)) - 1.0) < NORM_ATOL


def test_without_the_exporter_a_new_model_falls_back_and_a_cached_one_needs_none(
    tiny_ckpt, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path / "cache"))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)  # the exporter's package is missing
        with caplog.at_level(logging.INFO, logger="speakerid"):
            assert Embedder(tiny_ckpt).backend == "torch"
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage().startswith("cannot export to ONNX (the onnx backend")
        with pytest.raises(errors.OnnxUnavailableError, match="needs the 'onnx' package"):
            Embedder(tiny_ckpt, backend="onnx")  # asked for explicitly: an error
    Embedder(tiny_ckpt)  # exported now
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)
        assert Embedder(tiny_ckpt).backend == "onnx"  # a cached export needs no exporter


def test_backend_choice_and_its_errors(tiny_ckpt, tmp_path, monkeypatch):
    assert choose_backend("auto", on_cpu=False) == "torch"  # CUDA: PyTorch
    assert choose_backend("auto", on_cpu=True) == "onnx"
    with pytest.raises(errors.DeviceError, match="onnx backend runs on CPU only"):
        choose_backend("onnx", on_cpu=False)
    monkeypatch.setenv("SPEAKERID_BACKEND", "torch")
    assert Embedder(tiny_ckpt).backend == "torch"
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(real_speech(1)))
    rows = {}
    for backend in ("torch", "onnx", "auto"):
        res = runner.invoke(
            app, ["embed", str(wav), "--model", str(tiny_ckpt), "--json", "--backend", backend]
        )
        assert res.exit_code == 0, res.output
        rows[backend] = np.array(json.loads(res.stdout)[0]["embedding"])
    assert float(rows["torch"] @ rows["onnx"]) > COSINE_SAME
    assert np.array_equal(rows["onnx"], rows["auto"])
    bad = runner.invoke(app, ["embed", str(wav), "--backend", "tf"])
    assert bad.exit_code == 2
    assert bad.output.strip() == "error: unknown backend 'tf': use one of auto, torch, onnx"


def test_one_shot_commands_with_a_cached_export_never_import_torch(tiny_ckpt, tmp_path):
    files = []
    for i in range(4):
        files.append(tmp_path / f"v{i}.wav")
        files[-1].write_bytes(wav_bytes(real_speech(i)))
    # one voice, > 4 s of speech: enroll and identify run the multi-speaker guard on it
    # (window embeddings from the network's trunk), track embeds its windows the same way
    long = tmp_path / "long.wav"
    one_voice = [sf.read(p, dtype="float32")[0] for p in sorted(CLIPS.glob("so0003/*.opus"))]
    long.write_bytes(wav_bytes(np.concatenate(one_voice)))
    # a 44.1 kHz probe: resampled on the torch-free path too
    probe = tmp_path / "probe.flac"
    probe.write_bytes(wav_bytes(resample(real_speech(0), 16000, 44100), 44100, fmt="FLAC"))
    db = str(tmp_path / "reg.db")
    for name, f in (("alice", files[0]), ("bob", files[1])):  # exports the model (cached)
        res = runner.invoke(app, ["enroll", name, str(f), "--model", str(tiny_ckpt), "--db", db])
        assert res.exit_code == 0, res.output
    commands = [
        ["verify", "alice", str(probe), "--db", db],
        ["identify", str(probe), str(files[2]), "--db", db, "--json"],
        ["compare", str(files[2]), str(files[3]), "--model", str(tiny_ckpt)],
        ["embed", str(probe), "--model", str(tiny_ckpt), "--json"],
        ["enroll", "carol", str(long), "--db", db],
        ["identify", str(long), "--db", db, "--json"],
        ["track", str(long), "--db", db, "--json"],
    ]
    script = textwrap.dedent(
        f"""
        import json, sys
        from speakerid.cli import app
        codes = []
        for args in {commands!r}:
            try:
                app(args)
            except SystemExit as exc:
                codes.append(exc.code)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchaudio"))
        print("RESULT", json.dumps({{"codes": codes, "torch": heavy}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), SPEAKERID_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.split("RESULT ")[-1])
    assert out["torch"] == []
    assert out["codes"][0] == 0  # alice's own voice, resampled from 44.1 kHz
    assert out["codes"][1] in (0, 1) and out["codes"][2] in (0, 1) and out["codes"][3] == 0
    assert out["codes"][4:] == [0, 0, 0], proc.stdout + proc.stderr
    assert "accepted: " in proc.stdout and '"embedding"' in proc.stdout
    assert "enrolled carol" in proc.stdout and '"speaker": "carol"' in proc.stdout


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_torch_free_resampler_equals_torchaudio(rate):
    import torch
    import torchaudio.functional as AF

    speech = torch.from_numpy(np.concatenate([real_speech(0), real_speech(1)]))
    x = AF.resample(speech, 16000, rate)  # real speech at that rate
    for part in (x, x[:12347], x[:999]):
        want = AF.resample(part, rate, 16000).numpy()
        got = resample(part.numpy(), rate, 16000)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert float(np.abs(got - want).max()) < RESAMPLE_ATOL  # tests/budgets.py
    # and load_audio uses it: a 44.1 kHz file
    clip = load_audio(wav_bytes(x.numpy(), rate, subtype="FLOAT"))
    assert np.abs(clip.samples - AF.resample(x, rate, 16000).numpy()).max() < RESAMPLE_ATOL


def test_torch_free_fbank_equals_torchaudio_on_real_speech():
    """Real speech: equal to torchaudio's up to float32 rounding, element by element within the
    fbank error budget (tests/budgets.py: near-silent mel bins of real speech carry errors up
    to 1.1e-3, loud ones < 1e-5)."""
    from speakerid.embedding.features import fbank

    for i in range(len(VOICE_CLIPS)):
        x = real_speech(i)
        got, want = fbank_numpy(x), fbank(x).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        assert within_fbank_budget(got, want, x)
    rng = np.random.default_rng(0)
    for n, frames in ((399, 0), (400, 1), (559, 1), (560, 2)):
        w = rng.uniform(-0.5, 0.5, n).astype(np.float32)
        assert fbank_numpy(w).shape == (frames, 80)
        if frames:
            assert float(np.abs(fbank_numpy(w) - fbank(w).numpy()).max()) < 1e-3


def test_int8_precision_is_opt_in_cached_and_close_to_fp32(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path / "cache"))
    fp32 = Embedder(tiny_ckpt)
    assert fp32.precision == "fp32"
    int8 = Embedder(tiny_ckpt, precision="int8")
    assert (int8.backend, int8.precision, int8.name) == ("onnx", "int8", "tiny")
    assert onnx_backend.cache_path(int8.sha256, "int8").is_file()
    clips = [load_audio(wav_bytes(real_speech(i))) for i in range(3)]
    a, b = fp32.embed_many(clips), int8.embed_many(clips)
    cos = [float(x.vector @ y.vector) for x, y in zip(a, b)]
    assert all(0.99 < c < COSINE_SAME for c in cos), cos  # close, and really quantized
    with pytest.raises(errors.DeviceError, match="precision int8 runs on the onnx backend"):
        Embedder(tiny_ckpt, precision="int8", backend="torch")
    monkeypatch.setenv("SPEAKERID_PRECISION", "int4")
    with pytest.raises(errors.InvalidInputError, match=r"\$SPEAKERID_PRECISION='int4': use"):
        Embedder(tiny_ckpt)
    monkeypatch.delenv("SPEAKERID_PRECISION")
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(real_speech(0)))
    res = runner.invoke(
        app, ["embed", str(wav), "--model", str(tiny_ckpt), "--json", "--precision", "int8"]
    )
    assert res.exit_code == 0, res.output
    assert np.allclose(json.loads(res.stdout)[0]["embedding"], b[0].vector, atol=1e-6)


def test_checkpoint_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """One-shot commands do not re-hash the checkpoint (0.1 s for 70 MB) while it is unchanged;
    a rewrite with the same size and a restored mtime is still noticed (ctime)."""
    import time

    from speakerid.embedding import weights

    monkeypatch.setattr(weights, "RACY_SECONDS", 0.0)
    hashed = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: hashed.append(p) or real(p))
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"a" * 1000)
    first = weights.checkpoint_sha256(ckpt)
    assert weights.checkpoint_sha256(ckpt) == first == real(ckpt) and len(hashed) == 1
    before = ckpt.stat()
    time.sleep(0.05)  # file timestamps tick at most every 10 ms
    ckpt.write_bytes(b"b" * 1000)
    os.utime(ckpt, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.checkpoint_sha256(ckpt) == real(ckpt) != first and len(hashed) == 2
    monkeypatch.setattr(weights, "RACY_SECONDS", 3600.0)  # just written: never remembered
    other = tmp_path / "n.pt"
    other.write_bytes(b"c" * 10)
    weights.checkpoint_sha256(other)
    weights.checkpoint_sha256(other)
    assert len(hashed) == 4


def test_the_cli_shows_the_first_use_preparation_on_a_terminal(capsys):
    from speakerid.cli.common import prepare_status

    assert prepare_status(False) is None  # --json or not a TTY: nothing printed
    with prepare_status(True)("preparing tiny for ONNX Runtime (first use only; cached ...)"):
        pass
    assert capsys.readouterr().err.strip() == "preparing tiny for ONNX Runtime: done"


def test_model_export_onnx_fills_the_backend_cache(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path / "cache"))
    res = runner.invoke(app, ["model", "export-onnx", str(tiny_ckpt), "--json"])
    assert res.exit_code == 0, res.output
    path = onnx_backend.cache_path(json.loads(res.stdout)["sha256"])
    assert json.loads(res.stdout)["onnx"] == str(path)
    assert json.loads(path.with_suffix(".json").read_text())["dim"] == 192
    assert all(p.is_file() for p in onnx_backend.frames_paths(json.loads(res.stdout)["sha256"]))
    told = []
    Embedder(tiny_ckpt, on_prepare=lambda m: told.append(m) or nullcontext())
    assert told == []  # already prepared


def _one_voice() -> np.ndarray:
    """~9 s of one speaker (so0003's clips in data/clips)."""
    return np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(CLIPS.glob("so0003/*"))])


def test_window_embeddings_on_onnx_runtime_equal_the_pytorch_trunk(tiny_ckpt, tmp_path):
    """The multi-speaker guard and track embed windows through the exported trunk (no torch)
    with the same result as the PyTorch trunk: whole clips, windows at the network's frame
    rate and at track's, normalized by a given mean or their own, and a streamed analysis."""
    from speakerid.embedding import windows as w

    onnx, torch_ = Embedder(tiny_ckpt), Embedder(tiny_ckpt, backend="torch")
    x = np.concatenate([_one_voice(), real_speech(1)])  # two voices, 13 s
    spans = w.layout([(0, 4 * 16000), (5 * 16000, len(x))])
    for step in (1, w.FRAME_STEP):
        fo, ft = w.FrameEmbedder(onnx, step), w.FrameEmbedder(torch_, step)
        assert fo.network is not None and ft.network is None
        mean = ft.raw_fbank(x).astype(np.float64).mean(axis=0)
        for ref in (mean, None):
            a, b = fo.embed_block(x, spans, ref), ft.embed_block(x, spans, ref)
            assert a.shape == b.shape == (len(spans), 192)
            assert float(np.sum(a * b, axis=1).min()) > COSINE_SAME
            # the tiny random-ish fixture amplifies the fbank's float32 differences (numpy vs
            # torchaudio): 2-4e-4 here, 2e-5 with the same fbank; the m32 asset: 3e-6. Unit
            # vectors within COSINE_SAME differ by at most sqrt(2 (1 - COSINE_SAME)) anywhere.
            assert float(np.abs(a - b).max()) < np.sqrt(2 * (1 - COSINE_SAME))
    _, whole = w.FrameEmbedder(onnx).whole(x)
    clip = AudioClip(x, "x", 16000, 1, "")
    assert float(whole @ torch_.embed_clips([clip])[0].vector) > COSINE_SAME
    f = tmp_path / "x.wav"
    f.write_bytes(wav_bytes(x))
    a, b = (w.analyse(f, w.FrameEmbedder(e, w.FRAME_STEP)) for e in (onnx, torch_))
    assert a.speech == b.speech and np.array_equal(a.windows, b.windows) and len(a.windows) > 8
    assert float(np.sum(a.vectors * b.vectors, axis=1).min()) > COSINE_SAME


def test_exported_embedding_layers_equal_pytorch_with_two_layers(tmp_path, monkeypatch):
    import torch

    from speakerid.embedding.models.eres2netv2 import ERes2NetV2, ERes2NetV2Config

    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path))
    torch.manual_seed(0)
    cfg = ERes2NetV2Config(m_channels=8, base_width=8, num_blocks=(1, 1, 1, 1), two_emb_layer=True)
    net = ERes2NetV2(cfg)
    net.seg_bn_1.running_mean.uniform_(-0.5, 0.5)
    net.seg_bn_1.running_var.uniform_(0.5, 2.0)
    net.eval()
    onnx_backend.export_frames(net, "ab" * 32)
    frames = onnx_backend.FrameNetwork(*onnx_backend.frames_paths("ab" * 32))
    assert frames.dim == 192
    feats = torch.randn(1, 300, 80)
    with torch.inference_mode():
        want = net(feats).numpy()
    out = frames.frames(feats[0].numpy()).astype(np.float64)
    assert out.shape == (net.seg_1.in_features // 2, 300 // 8 + 1)
    pooled = np.concatenate([out.mean(axis=1), np.sqrt(out.var(axis=1, ddof=1) + 1e-8)])
    got = frames.project(pooled[None])[0]
    assert float(np.abs(got - want[0]).max()) < 1e-4 * float(np.abs(want).max())


def test_sessions_start_from_a_cached_optimized_graph(tiny_ckpt, tmp_path, monkeypatch):
    """The optimized graph is saved once and loaded with the optimizer off: same outputs bit
    for bit; a copy from another source file (re-export) or a damaged one is never used."""
    import onnxruntime as ort

    from speakerid.audio.ort_session import open_session, optimized_path

    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path / "cache"))
    source = onnx_backend.cache_path(Embedder(tiny_ckpt).sha256)
    fast = optimized_path(source, source.parent)
    assert fast.is_file() and fast.name.startswith(source.stem + ".ort-")  # made by the first use
    x = np.random.default_rng(0).standard_normal((1, 230, 80)).astype(np.float32)
    plain = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    want = plain.run(None, {"feats": x})[0]
    cached = open_session(source, 1, source.parent)
    assert cached._model_path == str(fast)  # loaded from the copy
    assert np.array_equal(cached.run(None, {"feats": x})[0], want)
    fast.write_bytes(b"not onnx")  # damaged: optimized again, the copy replaced
    assert np.array_equal(open_session(source, 1, source.parent).run(None, {"feats": x})[0], want)
    assert fast.stat().st_size > 1000
    made_from, runtime = fast.stem.split(".ort-")[1].split("-")
    other_cpu = fast.with_name(f"{source.stem}.ort-{made_from}-{'0' * 12}.onnx")
    other_cpu.write_bytes(fast.read_bytes())  # another machine's copy in a shared cache
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    renewed = optimized_path(source, source.parent)  # another export: another key
    assert renewed != fast and renewed.stem.endswith(runtime)
    open_session(source, 1, source.parent)
    assert renewed.is_file() and not fast.exists()  # the stale copy is removed
    assert not other_cpu.exists()  # and the other machine's, made from the older export
    open_session(source, 1, source.parent)
    keep = renewed.with_name(f"{renewed.stem.rsplit('-', 1)[0]}-{'1' * 12}.onnx")
    keep.write_bytes(renewed.read_bytes())  # another machine's copy of the current export
    renewed.unlink()
    open_session(source, 1, source.parent)  # this machine writes its copy again...
    assert renewed.is_file() and keep.is_file()  # ...and leaves the other machine's alone
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a cache folder that cannot be made (root ignores permissions)
    got = open_session(source, 1, blocker / "sub").run(None, {"feats": x})[0]
    assert np.array_equal(got, want)  # no copy kept, same session
    from speakerid.audio import vad

    vad._session.cache_clear()
    try:  # the Silero VAD keeps its optimized graph in the same cache
        vad._session()
        assert list((tmp_path / "cache" / "onnx").glob("silero_vad.ort-*.onnx"))
    finally:
        vad._session.cache_clear()
