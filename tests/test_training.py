"""Training pieces: loss, schedules, data/crops, augmentation, LDA head, resume, fine-tuning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speakerid.cli import app
from speakerid.embedding.models.eres2netv2 import (
    ERes2NetV2,
    ERes2NetV2Config,
    build_from_state_dict,
)
from speakerid.errors import InvalidInputError
from speakerid.training import augment as A
from speakerid.training import data as D
from speakerid.training.head import fit_lda, init_head_lda
from speakerid.training.loss import AAMSoftmax
from speakerid.training.trainer import (
    TrainConfig,
    calibrate_batchnorm,
    lr_at,
    margin_at,
    state_path,
    train,
)

from .conftest import needs_shared, speechlike, wav_bytes

runner = CliRunner()


# --- loss ---------------------------------------------------------------------------------
def _loss_with_angles(thetas: list[float], margin: float, scale: float = 10.0):
    """Embeddings at known angles to class 0's weight (class 1 orthogonal)."""
    head = AAMSoftmax(2, 2, margin=margin, scale=scale)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    emb = torch.tensor([[math.cos(t), math.sin(t)] for t in thetas])
    return head, emb


def test_aam_without_margin_is_scaled_softmax():
    head, emb = _loss_with_angles([0.3, 1.0], margin=0.0)
    labels = torch.tensor([0, 0])
    loss, acc = head(emb * 7.0, labels)  # the loss must ignore the embedding's norm
    cos = torch.stack([torch.cos(torch.tensor([0.3, 1.0])), torch.sin(torch.tensor([0.3, 1.0]))], 1)
    expected = torch.nn.functional.cross_entropy(10.0 * cos, labels)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(acc) == 0.5  # at 1.0 rad the second one is closer to class 1


def test_aam_margin_moves_the_target_angle():
    theta, m, s = 0.5, 0.2, 10.0
    head, emb = _loss_with_angles([theta], margin=m, scale=s)
    loss, _ = head(emb, torch.tensor([0]))
    target, other = s * math.cos(theta + m), s * math.cos(math.pi / 2 - theta)
    expected = -target + math.log(math.exp(target) + math.exp(other))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_aam_past_pi_minus_margin_continues_linearly():
    m, s = 0.5, 1.0
    for theta in (math.pi - 0.1, math.pi - 0.3):  # both beyond pi - m
        head, emb = _loss_with_angles([theta], margin=m, scale=s)
        loss, _ = head(emb, torch.tensor([0]))
        # cos(theta) - sin(pi - m) * m, not cos(theta + m), which would rise again past pi
        phi = math.cos(theta) - math.sin(math.pi - m) * m
        assert phi < math.cos(theta + m)
        other = s * math.sin(theta)
        expected = -s * phi + math.log(math.exp(s * phi) + math.exp(other))
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_margin_is_saved_with_the_head():
    head = AAMSoftmax(4, 3, margin=0.2)
    head.set_margin(0.13)
    other = AAMSoftmax(4, 3, margin=0.0)
    other.load_state_dict(head.state_dict())
    assert float(other.margin) == pytest.approx(0.13)


# --- schedules ----------------------------------------------------------------------------
def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(data="x", output="y.pt", lr=0.1, min_lr=0.001, warmup=0.1)
    total = 100
    assert lr_at(cfg, 0, total) == pytest.approx(0.01)
    assert lr_at(cfg, 9, total) == pytest.approx(0.1)
    assert lr_at(cfg, 10, total) == pytest.approx(0.1)
    assert lr_at(cfg, 55, total) == pytest.approx(0.001 + 0.5 * 0.099)
    assert lr_at(cfg, 100, total) == pytest.approx(0.001)
    lrs = [lr_at(cfg, s, total) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_margin_ramp():
    cfg = TrainConfig(data="x", output="y.pt", margin=0.2, margin_ramp=(0.1, 0.4))
    assert margin_at(cfg, 5, 100) == 0.0
    assert margin_at(cfg, 10, 100) == 0.0
    assert margin_at(cfg, 25, 100) == pytest.approx(0.1)
    assert margin_at(cfg, 40, 100) == pytest.approx(0.2)
    assert margin_at(cfg, 99, 100) == pytest.approx(0.2)


# --- data ---------------------------------------------------------------------------------
def _corpus(root, speakers=4, per=3, seconds=1.5):
    for s in range(speakers):
        for u in range(per):
            p = root / f"spk{s}" / f"u{u}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(wav_bytes(speechlike(seconds, seed=10 * s + u, f0=100 + 40 * s)))
    return root


def test_read_labeled_folder_and_manifest(tmp_path):
    root = _corpus(tmp_path / "c", speakers=2, per=2)
    items = D.read_labeled(root)
    assert [(i.path.name, i.speaker) for i in items] == [
        ("u0.wav", "spk0"),
        ("u1.wav", "spk0"),
        ("u0.wav", "spk1"),
        ("u1.wav", "spk1"),
    ]
    (root / "list.csv").write_text("path,speaker,duration_s\nspk1/u0.wav,bob,1.5\n")
    items = D.read_labeled(root / "list.csv")
    assert items == [D.LabeledFile(root / "spk1" / "u0.wav", "bob")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.wav,x\n", "needs the columns path,speaker"),
        ("path,speaker\na.txt,x\n", "a.txt is not an audio file"),
        ("path,speaker\na.wav,\n", ":2: empty path or speaker"),
        ("path,speaker\n", "manifest has no rows"),
    ],
)
def test_read_labeled_rejects_bad_manifests(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        D.read_labeled(tmp_path / "m.csv")


def test_read_labeled_missing_and_empty(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file or directory"):
        D.read_labeled(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match="no speaker sub-folders"):
        D.read_labeled(tmp_path)


def test_split_speakers_is_disjoint_and_deterministic(tmp_path):
    items = [D.LabeledFile(tmp_path / f"{s}_{u}.wav", f"s{s}") for s in range(10) for u in range(3)]
    tr, va = D.split_speakers(items, 3, seed=1)
    assert len({i.speaker for i in va}) == 3 and len(va) == 9 and len(tr) == 21
    assert not {i.speaker for i in va} & {i.speaker for i in tr}
    assert D.split_speakers(items, 3, seed=1) == (tr, va)
    assert D.split_speakers(items, 3, seed=2)[1] != va
    with pytest.raises(InvalidInputError, match="cannot hold out 9 of 10 speakers"):
        D.split_speakers(items, 9)


def test_speed_perturb_changes_length_and_pitch():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    for factor in (0.9, 1.1):
        out = D.speed_perturb(tone, factor)
        assert len(out) == pytest.approx(16000 / factor, abs=2)
        spec = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        peak = np.argmax(spec) * 16000 / len(out)
        assert peak == pytest.approx(1000 * factor, abs=2)


def test_training_set_labels_speeds_as_extra_classes(tmp_path):
    items = [D.LabeledFile(tmp_path / "a", "b"), D.LabeledFile(tmp_path / "c", "a")]
    waves = [np.zeros(1600, np.float32), np.ones(1600, np.float32) * 0.1]
    ts = D.build_training_set(items, waves, (1.0, 0.9))
    assert ts.speakers == ["a", "b"] and ts.num_classes == 4
    assert ts.labels.tolist() == [1, 0, 3, 2]
    assert [len(w) for w in ts.waves] == [1600, 1600, 1778, 1778]


def test_crop_sampler_covers_each_utterance_once_per_epoch():
    lengths = [48000, 20000, 64000, 33000, 40000, 70000, 16000]
    sampler = D.CropSampler(lengths, batch_size=3, crop_seconds=(2.0, 3.0), seed=5)
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == 3
    assert sorted(c.utterance for b in batches for c in b) == list(range(7))
    for b in batches:
        assert len({c.length for c in b}) == 1
        assert 32000 <= b[0].length <= 48000
        for c in b:
            assert 0 <= c.start <= max(0, lengths[c.utterance] - c.length)
    assert list(sampler.epoch(0)) == batches  # reproducible
    assert list(sampler.epoch(1)) != batches
    assert list(sampler.epoch(0, skip=2)) == batches[2:]


def test_cut_repeats_short_utterances():
    wave = np.arange(10, dtype=np.float32)
    out = D.cut(wave, D.Crop(0, 0, 25))
    assert out.tolist() == list(range(10)) * 2 + list(range(5))
    assert D.cut(wave, D.Crop(0, 3, 4)).tolist() == [3, 4, 5, 6]


def test_crop_sampler_rejects_bad_options():
    with pytest.raises(InvalidInputError, match="batch size"):
        D.CropSampler([1], 0)
    with pytest.raises(InvalidInputError, match="bad crop length"):
        D.CropSampler([1], 2, crop_seconds=(3.0, 2.0))


# --- augmentation -------------------------------------------------------------------------
def test_mix_at_snr_hits_the_requested_ratio():
    rng = np.random.default_rng(0)
    clean = speechlike(1.0)
    noise = rng.standard_normal(16000).astype(np.float32) * 3
    for snr in (0.0, 5.0, 17.5):
        mixed = A.mix_at_snr(clean, noise, snr)
        added = mixed.astype(np.float64) - clean
        measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added**2))
        assert measured == pytest.approx(snr, abs=1e-3)


def test_coloured_noise_spectral_slope():
    rng = np.random.default_rng(1)
    slopes = {}
    for colour in ("white", "pink", "brown"):
        x = A.coloured_noise(2**16, colour, rng)
        assert np.mean(x.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / 16000)
        low, high = p[(f > 100) & (f < 200)].mean(), p[(f > 1600) & (f < 3200)].mean()
        slopes[colour] = 10 * np.log10(low / high) / np.log2(2400 / 150)  # dB per octave
    assert slopes["white"] == pytest.approx(0.0, abs=0.5)
    assert slopes["pink"] == pytest.approx(3.0, abs=0.5)
    assert slopes["brown"] == pytest.approx(6.0, abs=0.5)


def test_synthetic_rir_decay_and_direct_to_reverberant_ratio():
    rir = A.synthetic_rir(rt60=0.4, drr_db=6.0, rng=np.random.default_rng(2), seconds=0.5)
    assert rir[0] == 1.0
    drr = 10 * np.log10(1.0 / np.sum(rir[1:].astype(np.float64) ** 2))
    assert drr == pytest.approx(6.0, abs=1e-3)

    # energy envelope: 60 dB down after rt60 (windows of 10 ms around 0.05 s and 0.25 s)
    def level(t):
        i = int(t * 16000)
        return 10 * np.log10(np.mean(rir[i : i + 160].astype(np.float64) ** 2))

    assert level(0.05) - level(0.25) == pytest.approx(60 * 0.2 / 0.4, abs=4.0)


def test_reverberate_keeps_length_and_loudness():
    wave = speechlike(1.0)
    rir = A.synthetic_rir(0.6, 0.0, np.random.default_rng(3))
    out = A.reverberate(wave, rir)
    assert out.shape == wave.shape
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(wave**2)), rel=1e-4)
    assert not np.allclose(out, wave, atol=1e-3)


def test_augmenter_is_reproducible_and_respects_strength():
    batch = np.stack([speechlike(1.0, seed=i, f0=100 + 20 * i) for i in range(6)])
    aug = A.Augmenter(p_noise=1.0, p_reverb=1.0)
    one = aug(batch, np.random.default_rng(7))
    two = aug(batch, np.random.default_rng(7))
    assert np.array_equal(one, two)
    assert not np.allclose(one, batch, atol=1e-3)
    assert np.abs(one).max() <= 1.0
    aug.strength = 0.0
    assert np.array_equal(aug(batch, np.random.default_rng(7)), batch)


# --- LDA head -----------------------------------------------------------------------------
def test_fit_lda_recovers_the_discriminative_subspace():
    rng = np.random.default_rng(0)
    classes, per, dim = 30, 8, 400
    centres = np.zeros((classes, dim))
    centres[:, :5] = rng.standard_normal((classes, 5)) * 3.0  # speaker information in 5 dims
    labels = np.repeat(np.arange(classes), per)
    noise = rng.standard_normal((classes * per, dim))
    noise[:, 5:] *= 1.5  # nuisance variance in the 395 other dims
    x = centres[labels] + noise + 10.0
    w, b = fit_lda(x, labels, out_dim=8, pca_dim=100, reg=0.01)
    assert w.shape == (8, dim) and b.shape == (8,)
    y = x @ w.T + b
    assert np.abs(y.mean(0)).max() < 1e-3  # centred

    def same_vs_diff(emb):
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        s = emb @ emb.T
        same = labels[:, None] == labels[None, :]
        np.fill_diagonal(same, False)
        return s[same].mean() - s[~same & ~np.eye(len(s), dtype=bool)].mean()

    assert same_vs_diff(y) > 0.7 and same_vs_diff(x - x.mean(0)) < 0.1


def test_fit_lda_needs_speakers():
    with pytest.raises(InvalidInputError, match="at least 2 speakers"):
        fit_lda(np.ones((3, 4)), np.array([0, 0, 0]), 2)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return ERes2NetV2(ERes2NetV2Config(m_channels=8, embedding_size=16))


def test_init_head_lda_folds_the_projection_into_seg_1():
    from speakerid.embedding.features import fbank

    model = _tiny_model()
    feats = [fbank(speechlike(1.0, seed=i, f0=90 + 30 * (i % 4))) for i in range(12)]
    labels = np.array([i % 4 for i in range(12)])
    before = model.seg_1.weight.detach().clone()
    init_head_lda(model, feats, labels, pca_dim=8)
    assert not torch.equal(before, model.seg_1.weight)
    model.eval()
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(torch.cat([model(f[None]) for f in feats]), dim=1)
    s = emb @ emb.T
    same = torch.tensor(labels[:, None] == labels[None, :]) & ~torch.eye(12, dtype=torch.bool)
    assert float(s[same].mean()) > float(s[~same & ~torch.eye(12, dtype=torch.bool)].mean()) + 0.5


def test_calibrate_batchnorm_uses_the_data_statistics():
    model = _tiny_model()
    from speakerid.embedding.features import fbank

    batch = torch.stack([fbank(speechlike(1.0, seed=i)) for i in range(4)])
    calibrate_batchnorm(model, [batch])
    assert not model.training
    x = batch.transpose(1, 2).unsqueeze(1)
    with torch.no_grad():
        pre = model.conv1(x)
    mean = pre.mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn1.running_mean, mean, atol=1e-5)
    assert model.bn1.momentum == 0.1


# --- the training loop --------------------------------------------------------------------
def _cfg(tmp_path, data, name="out.pt", **kw):
    base = dict(
        data=str(data),
        output=str(tmp_path / name),
        m_channels=8,
        embedding_size=16,
        epochs=2,
        batch_size=4,
        lr=0.05,
        crop_seconds=(0.5, 0.8),
        speeds=(1.0,),
        val_speakers=0,
        checkpoint_every=2,
        warmup=0.0,
        margin_ramp=(0.0, 0.0),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def corpus(tmp_path):
    return _corpus(tmp_path / "corpus", speakers=4, per=4, seconds=1.2)


def test_training_reduces_the_loss(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus, epochs=12, augment=False, margin=0.0, lr=0.1)
    result = train(cfg)
    losses = [h.loss for h in result.history]
    assert result.steps == 48 and result.epochs_done == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert result.history[-1].accuracy > result.history[0].accuracy


def test_resume_continues_from_the_saved_step(tmp_path, corpus):
    full = train(_cfg(tmp_path, corpus, "full.pt", max_steps=6))
    first = train(_cfg(tmp_path, corpus, "part.pt", max_steps=3))
    assert first.steps == 3
    saved = torch.load(state_path(tmp_path / "part.pt"), weights_only=True)
    assert saved["step"] == 3
    resumed = train(_cfg(tmp_path, corpus, "part.pt", max_steps=6))
    assert resumed.steps == 6
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "part.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert [h.loss for h in resumed.history] == pytest.approx([h.loss for h in full.history])


def test_resume_refuses_a_different_run(tmp_path, corpus):
    train(_cfg(tmp_path, corpus, max_steps=2))
    with pytest.raises(InvalidInputError, match="cannot resume: m_channels, batch_size differ"):
        train(_cfg(tmp_path, corpus, m_channels=16, batch_size=2))
    result = train(_cfg(tmp_path, corpus, m_channels=16, batch_size=2, max_steps=1), restart=True)
    assert result.steps == 1


def test_validation_keeps_the_best_epoch_and_output_loads_strictly(tmp_path, corpus):
    _corpus(corpus, speakers=6, per=4, seconds=1.2)
    cfg = _cfg(
        tmp_path, corpus, epochs=2, val_speakers=2, head_init="lda", lda_pca_dim=8, half=True
    )
    result = train(cfg)
    assert result.val_speakers == 2 and result.train_utterances == 16
    assert result.init_val_eer is not None
    eers = [result.init_val_eer] + [h.val_eer for h in result.history]
    assert result.best_val_eer == min(eers)
    assert result.best_epoch == eers.index(min(eers))
    sd = torch.load(cfg.output, weights_only=True)
    assert all(v.dtype == torch.float16 for k, v in sd.items() if v.is_floating_point())
    model = build_from_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    )
    assert model.config.m_channels == 8 and model.config.embedding_size == 16
    assert sd.keys() == ERes2NetV2(model.config).state_dict().keys()


@needs_shared
def test_fine_tune_from_a_checkpoint_keeps_the_official_layout(tmp_path, corpus, tiny_ckpt):
    cfg = _cfg(tmp_path, corpus, init=str(tiny_ckpt), lr=0.005, freeze_bn=True, max_steps=3)
    result = train(cfg)
    assert result.steps == 3
    ref = torch.load(tiny_ckpt, weights_only=True)
    out = torch.load(cfg.output, weights_only=True)
    assert list(out) == list(ref)
    assert all(out[k].shape == ref[k].shape for k in ref)
    # BatchNorm statistics were frozen, the weights moved
    assert torch.equal(out["bn1.running_mean"], ref["bn1.running_mean"])
    assert not torch.equal(out["conv1.weight"], ref["conv1.weight"])


# --- CLI ----------------------------------------------------------------------------------
def test_cli_train_json_and_embed_with_the_result(tmp_path, corpus):
    out = tmp_path / "cli.pt"
    res = runner.invoke(
        app,
        [
            "train",
            str(corpus),
            "-o",
            str(out),
            "--m-channels",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--crop",
            "0.5-0.8",
            "--speeds",
            "1.0,1.1",
            "--val-speakers",
            "0",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["num_classes"] == 8 and report["steps"] == 8 and report["epochs_done"] == 1
    assert report["output"] == str(out)
    res = runner.invoke(
        app, ["embed", str(corpus / "spk0" / "u0.wav"), "--model", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)[0]["embedding"]) == 192


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--crop", "abc"], "--crop is MIN-MAX seconds"),
        (["--speeds", "0.9,1.1"], "--speeds must include 1.0"),
        (["--optimizer", "adam"], "unknown optimizer 'adam'"),
        (["--head-init", "pca"], "unknown head init 'pca'"),
    ],
)
def test_cli_train_rejects_bad_options(tmp_path, corpus, args, message):
    res = runner.invoke(app, ["train", str(corpus), "-o", str(tmp_path / "x.pt"), *args])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {res.stderr.strip()[7:]}"
    assert message in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "x.pt").exists()


def test_cli_train_bad_data_and_output(tmp_path, corpus):
    res = runner.invoke(app, ["train", str(tmp_path / "none"), "-o", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "no such file or directory" in res.stderr
    res = runner.invoke(app, ["train", str(corpus), "-o", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and "output must end in .pt" in res.stderr
    (corpus / "spk0" / "bad.wav").write_bytes(b"not audio")
    args = ["train", str(corpus), "-o", str(tmp_path / "x.pt"), "--val-speakers", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "training data:" in res.stderr and "bad.wav" in res.stderr
