"""Parity with the official 3D-Speaker ERes2NetV2 (golden outputs in ../shared/fixtures)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speakerid.audio.decode import load_audio
from speakerid.cli import app
from speakerid.embedding.features import fbank, fbank_numpy
from speakerid.embedding.models.eres2netv2 import (
    ERes2NetV2,
    ERes2NetV2Config,
    build_from_state_dict,
    count_parameters,
    infer_config,
)

from .budgets import COSINE_SAME, NORM_ATOL, within_fbank_budget
from .conftest import FIXTURES, needs_shared

pytestmark = needs_shared
REFERENCES = ["eres2netv2_tiny_reference.pt", "eres2netv2_w24s4ep4_tiny_reference.pt"]
OFFICIAL = {
    "speech_eres2netv2_sv_zh-cn_16k-common": ERes2NetV2Config(),
    "speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common": ERes2NetV2Config(
        base_width=24, scale=4, expansion=4
    ),
}


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=REFERENCES)
def reference(request):
    return torch.load(FIXTURES / request.param, weights_only=True)


def test_state_dict_layout_matches_official_manifest():
    manifest = json.loads((FIXTURES / "eres2netv2_official_state_dict_manifest.json").read_text())
    for name, config in OFFICIAL.items():
        model = ERes2NetV2(config)
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert ours == manifest[name]["state_dict"]
        assert list(ours) == list(manifest[name]["state_dict"])  # same order too
        assert count_parameters(model) == manifest[name]["parameters"]
        # and the layout alone is enough to infer the configuration back
        assert infer_config(model.state_dict()) == config


def test_config_inference_recovers_fixture_configs(reference):
    cfg = infer_config(reference["state_dict"])
    want = reference["config"]
    assert (cfg.m_channels, cfg.base_width, cfg.scale, cfg.expansion) == (
        want["m_channels"],
        want["baseWidth"],
        want["scale"],
        want["expansion"],
    )
    assert (cfg.feat_dim, cfg.embedding_size, cfg.num_blocks) == (80, 192, (3, 4, 6, 3))


@pytest.mark.parametrize("front_end", [fbank, fbank_numpy], ids=["torchaudio", "numpy"])
def test_fbank_matches_official(reference, front_end):
    """Both front ends: torchaudio's (PyTorch backend) and the torch-free numpy one (ONNX
    Runtime backend) reproduce the official fbank goldens."""
    for wav, want in zip(reference["wavs"], reference["fbank"]):
        samples = load_audio(wav).samples
        got = torch.as_tensor(front_end(samples))
        assert got.shape == want.shape and got.dtype == torch.float32
        assert within_fbank_budget(got, want, samples)  # tests/budgets.py


def test_embeddings_match_official_common_layout(tiny_reference):
    model = build_from_state_dict(tiny_reference["state_dict"])
    for wav, want in zip(tiny_reference["wavs"], tiny_reference["embeddings"]):
        with torch.inference_mode():
            got = model(fbank(load_audio(wav).samples).unsqueeze(0))[0]
        assert _cos(got, want) >= COSINE_SAME


def test_embeddings_match_official_w24s4ep4_within_its_fp32_noise():
    """The w24s4ep4 fixture's random BatchNorm statistics make its AFF stages amplify float32
    rounding ~1e5 times: the same network in float64 vs float32 agrees only to cosine ~0.998, and
    the fixture's value depends on the CPU and thread count that produced it.

    Error budget, as angles (1 - cos = theta^2 / 2): the fixture is its machine's float32 result,
    theta_fix from the float64 truth on its own features; we check that theta_fix is float32
    noise of the size our float32 forward has on the same input (measured ratio 1.0-1.5 on
    three code paths; allowed 3). Our whole pipeline then differs from the fixture by at most
    theta_ours + theta_fix + the features' share: measured 1 - cos <= 8.5e-3 on the AVX2
    path, allowed 0.02 (cos >= 0.98); an architecture error costs far more (swapping the AFF
    inputs gives cosine ~0.48)."""
    ref = torch.load(FIXTURES / REFERENCES[1], weights_only=True)
    model = build_from_state_dict(ref["state_dict"])
    model64 = copy.deepcopy(model).double()

    def theta(a, b) -> float:
        return float(np.arccos(min(1.0, _cos(a, b))))

    for wav, their_feats, want in zip(ref["wavs"], ref["fbank"], ref["embeddings"]):
        feats = fbank(load_audio(wav).samples).unsqueeze(0)
        with torch.inference_mode():
            got = model(feats)[0]
            truth = model64(their_feats.double().unsqueeze(0))[0]
            ours_on_theirs = model(their_feats.unsqueeze(0))[0]
        assert theta(want, truth) <= 3 * theta(ours_on_theirs, truth)
        assert _cos(got, want) >= 0.98


@pytest.mark.parametrize("backend", ["torch", "onnx", None])
def test_embed_api_and_cli_reproduce_fixture(tiny_reference, tiny_ckpt, tmp_path, backend):
    """On every backend (None: the default), API and CLI give the official embeddings."""
    from speakerid.embedding.embedder import Embedder

    files = []
    for i, wav in enumerate(tiny_reference["wavs"]):
        files.append(tmp_path / f"in{i}.wav")
        files[-1].write_bytes(wav)
    embedder = Embedder(tiny_ckpt, backend=backend)
    assert embedder.backend == (backend or "onnx")  # the default on CPU: ONNX Runtime
    api = embedder.embed_many(files)
    chosen = ["--backend", backend] if backend else []
    result = CliRunner().invoke(
        app, ["embed", *map(str, files), "--model", str(tiny_ckpt), "--json", *chosen]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for emb, row, want in zip(api, rows, tiny_reference["embeddings"]):
        assert emb.model == row["model"] == "tiny"
        assert row["dim"] == 192
        assert abs(np.linalg.norm(emb.vector) - 1.0) < NORM_ATOL
        assert _cos(emb.vector, want) >= COSINE_SAME
        assert _cos(row["embedding"], want) >= COSINE_SAME
