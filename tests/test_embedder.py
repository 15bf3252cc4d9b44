"""Embedder behaviour: normalization, order, batching, long audio, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speakerid import errors
from speakerid.audio.decode import load_audio
from speakerid.embedding.embedder import MAX_SEGMENT_SECONDS, Embedder, segments

from .budgets import COSINE_SAME, NETWORK_RTOL, NORM_ATOL, within_fbank_budget
from .conftest import HARDWARE, speechlike, wav_bytes


@pytest.fixture(scope="module", params=["torch", "onnx"])
def embedder(tiny_ckpt, request):
    return Embedder(tiny_ckpt, backend=request.param)


def test_embeddings_are_unit_float32_and_carry_model_name(embedder):
    emb = embedder.embed(wav_bytes(speechlike(1.2)))
    assert emb.vector.dtype == np.float32 and emb.vector.shape == (192,)
    assert abs(float(np.linalg.norm(emb.vector)) - 1.0) < NORM_ATOL
    assert emb.model == "tiny" and emb.duration == pytest.approx(1.2)


def test_batch_keeps_input_order_and_equals_one_by_one(embedder):
    clips = [
        load_audio(wav_bytes(speechlike(s, seed=i)))
        for i, s in enumerate([2.0, 1.0, 2.0, 1.5, 1.0, 2.0])
    ]
    batched = embedder.embed_many(clips, batch_size=4, chunk=4)
    single = [embedder.embed(c) for c in clips]
    for b, s, c in zip(batched, single, clips):
        assert b.sha256 == c.sha256
        assert float(b.vector @ s.vector) > COSINE_SAME


def test_long_audio_is_segmented_and_averaged(embedder):
    x = np.concatenate([speechlike(40, seed=1), speechlike(40, seed=2)])  # 80 s > 60 s
    parts = segments(x)
    assert len(parts) == 2 and all(len(p) <= MAX_SEGMENT_SECONDS * 16000 for p in parts)
    clip = load_audio(wav_bytes(x))
    got = embedder.embed(clip).vector
    a, b = (embedder.embed(load_audio(wav_bytes(p))).vector for p in parts)
    want = (a + b) / np.linalg.norm(a + b)
    assert float(got @ want) > COSINE_SAME


def test_cuda_request_without_cuda_is_a_clear_error(tiny_ckpt):
    if torch.cuda.is_available():
        pytest.skip(HARDWARE + "a CUDA device is present (this tests its absence)")
    with pytest.raises(errors.DeviceError, match="no CUDA device"):
        Embedder(tiny_ckpt, device="cuda")
    with pytest.raises(errors.DeviceError, match="unknown device"):
        Embedder(tiny_ckpt, device="tpu9")


def test_padded_batches_equal_unpadded_inference():
    """Masking makes a padded batch compute what each item computes alone. A default-init
    network is used: the fixtures' random BatchNorm statistics amplify float rounding ~1e3x,
    which would hide a masking error behind noise."""
    from speakerid.embedding.models.eres2netv2 import ERes2NetV2, ERes2NetV2Config

    torch.manual_seed(0)
    model = ERes2NetV2(ERes2NetV2Config(m_channels=16)).eval()
    gen = torch.Generator().manual_seed(0)
    lengths = [9, 17, 98, 99, 150, 151, 300]
    feats = [torch.randn(n, 80, generator=gen) for n in lengths]
    batch = torch.zeros(len(feats), max(lengths), 80)
    for i, f in enumerate(feats):
        batch[i, : len(f)] = f
    with torch.inference_mode():
        alone = torch.stack([model(f.unsqueeze(0))[0] for f in feats])
        padded = model(batch, torch.tensor(lengths))
        unmasked = model(batch)  # what plain zero-padding would give
    scale = float(alone.abs().max())
    assert float((alone - padded).abs().max()) <= NETWORK_RTOL * scale
    # masking is what matters: without it outputs move by > 3 % of the largest
    assert float((alone[:-1] - unmasked[:-1]).abs().max()) > 0.03 * scale


def _randomised_bn_model(seed: int = 0):
    import torch

    from speakerid.embedding.models.eres2netv2 import ERes2NetV2, ERes2NetV2Config

    torch.manual_seed(seed)
    model = ERes2NetV2(ERes2NetV2Config(m_channels=8, embedding_size=32)).eval()
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return model


def test_cpu_inference_rewrites_keep_the_numbers():
    """Folded BatchNorm + oneDNN 1x1 convolutions give the same embeddings, padded or not."""
    import copy

    import torch

    from speakerid.embedding.models.eres2netv2 import fold_batchnorm, use_onednn_pointwise

    ref = _randomised_bn_model()
    fast = fold_batchnorm(copy.deepcopy(ref)).to(memory_format=torch.channels_last)
    assert use_onednn_pointwise(fast) == sum(
        1 for m in ref.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
    )
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(3, 230, 80)
    lengths = torch.tensor([230, 170, 95])
    with torch.inference_mode():
        a, b = ref(x, lengths), fast(x, lengths)
        single = fast(x[2:, :95])
    scale = float(a.abs().max())
    assert float((a - b).abs().max()) <= NETWORK_RTOL * scale
    assert float((single[0] - b[2]).abs().max()) <= NETWORK_RTOL * scale


def test_fold_batchnorm_refuses_training_mode():
    from speakerid.embedding.models.eres2netv2 import fold_batchnorm

    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(_randomised_bn_model().train())


def test_batched_fbank_equals_the_official_per_utterance_fbank():
    from speakerid.embedding.features import fbank, fbank_batch

    rng = np.random.default_rng(3)
    # lengths: no frame, exactly one frame, one frame + a bit, 2 s, 30 s (odd sample counts)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (399, 400, 555, 32001, 480007)]
    waves.append(speechlike(3.3, seed=4).astype(np.float32))
    got = fbank_batch(waves)
    assert [g.shape for g in got] == [(0, 80), (1, 80), (1, 80), (198, 80), (2998, 80), (328, 80)]
    for w, g in zip(waves[1:], got[1:]):
        assert within_fbank_budget(g, fbank(w), w)  # tests/budgets.py
    # the budget still sees a defect: a one-sample shift of the input
    w = waves[3]
    assert not within_fbank_budget(fbank_batch([w[1:]])[0], fbank(w[:-1]), w[:-1])
    assert fbank_batch([]) == []


def test_batched_fbank_path_gives_the_same_embeddings(tiny_ckpt):
    """The GPU path (fbank of a whole chunk as one device job), exercised on CPU."""
    clips = [load_audio(wav_bytes(speechlike(s, seed=i))) for i, s in enumerate([1.0, 2.5, 1.7])]
    plain = Embedder(tiny_ckpt, backend="torch")
    batched = Embedder(tiny_ckpt, backend="torch")
    batched.batched_fbank = True
    assert plain.batched_fbank is False  # CPU default: per utterance
    for a, b in zip(plain.embed_many(clips), batched.embed_many(clips, batch_size=3)):
        assert float(a.vector @ b.vector) > COSINE_SAME


def test_large_batches_are_bounded_in_frames_not_only_in_items(tiny_ckpt, monkeypatch):
    """CUDA batches of 128: long recordings must form smaller batches (device memory)."""
    from speakerid.embedding import embedder as mod

    emb = Embedder(tiny_ckpt, backend="torch")
    sizes = []

    def fake_forward(feats):
        sizes.append([f.shape[0] for f in feats])
        return np.ones((len(feats), emb.dim), dtype=np.float32)

    monkeypatch.setattr(emb, "_forward", fake_forward)
    feats = [torch.zeros(n, 80) for n in [6000] * 25 + [300] * 200]
    out = emb.embed_features(feats, batch_size=128)
    assert out.shape == (225, 192) and np.all(out == 1)
    budget = mod.MAX_BATCH_FRAMES
    assert all(len(s) * max(s) <= budget for s in sizes)
    assert [len(s) for s in sizes] == [128, 72, 10, 10, 5]
