"""`speakerid demo` with the bundled model and the sample clips: works offline, no ../shared."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from speakerid import errors
from speakerid.cli import app
from speakerid.cli.demo_cmd import CLIPS, _pick_model, _plan
from speakerid.embedding import weights
from speakerid.service.facade import SpeakerID

runner = CliRunner()
DEMO = weights.bundled_path("demo")
CARD = weights.model_card("demo")


def test_bundled_model_is_small_and_described():
    assert DEMO is not None and DEMO.stat().st_size <= 10 * 1024 * 1024
    assert CARD["sha256"] == weights.sha256_file(DEMO)
    assert 0.0 < CARD["recommended_threshold"] < 1.0
    assert CARD["dev"]["eer"] < 0.065  # beats the shared test asset's 6.5%
    assert (DEMO.with_suffix(".md")).is_file()
    sd = weights.load_state_dict(DEMO)  # fp16 on disk, fp32 in memory
    assert {str(v.dtype) for v in sd.values() if v.is_floating_point()} == {"torch.float32"}
    model = weights.load_model(DEMO)
    assert model.config.m_channels == CARD["config"]["m_channels"]


def test_clips_manifest_and_attribution():
    rows = list(csv.DictReader(open(CLIPS / "manifest.csv", encoding="utf-8")))
    assert len(rows) == 25 and all((CLIPS / r["path"]).is_file() for r in rows)
    assert {r["role"] for r in rows} == {"enroll", "probe"}
    readme = (CLIPS / "README.md").read_text()
    assert "speechocean762" in readme and "arXiv:2104.01378" in readme


def test_plan_from_roles():
    plan = _plan(CLIPS, speakers=6)
    assert list(plan.enroll) == ["so0003", "so0044", "so0092", "so0094", "so0111", "so0113"]
    assert all(len(files) == 3 for files in plan.enroll.values())
    assert [t for t, _ in plan.probes] == [*plan.enroll, "so0120"]


def test_plan_without_roles_and_errors(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "path,speaker\n" + "".join(f"{s}/{i}.wav,{s}\n" for s in "abc" for i in range(6))
    )
    plan = _plan(tmp_path, speakers=2)
    assert {k: [p.name for p in v] for k, v in plan.enroll.items()} == {
        "a": ["0.wav", "1.wav", "2.wav"],
        "b": ["0.wav", "1.wav", "2.wav"],
    }
    assert [(t, p.name) for t, p in plan.probes] == [("a", "5.wav"), ("b", "5.wav"), ("c", "0.wav")]
    with pytest.raises(errors.InvalidInputError, match="demo data not found"):
        _plan(tmp_path / "nope", 2)


def test_pick_model_offline_falls_back_to_the_bundled_model():
    name, why = _pick_model(None)
    assert name == "demo"
    assert why.startswith("BUNDLED DEMO MODEL 'demo'")
    assert "offline mode" in why and "speakerid model download eres2netv2" in why
    assert _pick_model("x.pt") == ("x.pt", "as requested")


def test_pick_model_says_why_a_download_failed(monkeypatch):
    def fail(name, **_kw):
        raise errors.ModelError("cannot download URL: no route to host; download URL elsewhere")

    monkeypatch.delenv("SPEAKERID_OFFLINE")
    monkeypatch.setattr(weights, "download", fail)
    name, why = _pick_model(None)
    assert name == "demo"
    assert "not available: cannot download URL: no route to host. Install it with:" in why
    assert why.endswith("(offline: speakerid model install FILE --name eres2netv2)")


def test_demo_runs_offline_with_the_bundled_model():
    res = runner.invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.startswith("model: BUNDLED DEMO MODEL 'demo'")
    assert "1. enroll 6 speakers" in out
    assert "identify 7 clips (1 from a voice never enrolled)" in out
    assert f"correct at threshold {CARD['recommended_threshold']:.3f} (model card (demo))" in out
    assert "   genuine: is 000030051.opus so0003? accepted" in out
    assert "   impostor: is" in out and "so0003? rejected" in out
    correct = int(out.split(" correct at threshold")[0].rsplit("\n", 1)[1].split("/")[0])
    assert correct >= 6


def test_demo_registry_takes_the_card_threshold_and_stays_apart(tmp_path, tiny_ckpt):
    db = tmp_path / "r.db"
    with SpeakerID(db=db, model="demo") as sid:
        sid.enroll("alice", [CLIPS / "so0003" / "000030012.opus"])
        assert sid.threshold() == (CARD["recommended_threshold"], "model card (demo)")
    with SpeakerID(db=db, model=str(tiny_ckpt)) as sid:
        with pytest.raises(errors.ModelMismatchError, match="bound to model 'demo'"):
            sid.identify(CLIPS / "so0003" / "000030024.opus")


def test_model_list_shows_the_bundled_model():
    res = runner.invoke(app, ["model", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["demo"]["installed"] is True and rows["demo"]["path"] == str(DEMO)
    assert rows["demo"]["description"].startswith("bundled: ")


def test_demo_json_is_one_object_with_the_results():
    res = runner.invoke(app, ["demo", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # nothing but the JSON object on stdout
    assert set(out) == {
        "try_it",
        "model",
        "enrolled",
        "threshold",
        "threshold_source",
        "identified",
        "correct",
        "verified",
    }
    assert out["model"]["name"] == "demo"
    assert out["model"]["reason"].startswith("BUNDLED DEMO MODEL 'demo'")
    assert [e["speaker"] for e in out["enrolled"]] == list(_plan(CLIPS, 6).enroll)
    assert all(e["utterances"] == 3 and len(e["files"]) == 3 for e in out["enrolled"])
    assert out["threshold"] == CARD["recommended_threshold"]
    assert out["threshold_source"] == "model card (demo)"
    rows = out["identified"]
    assert len(rows) == 7 and set(rows[0]) == {"file", "truth", "answer", "score", "correct"}
    assert rows[0]["truth"] == "so0003" and rows[-1]["truth"] is None  # never enrolled
    assert out["correct"] == sum(r["correct"] for r in rows) >= 6
    assert all(r["correct"] == (r["truth"] == r["answer"]) for r in rows)
    claims = {v["claim"]: v for v in out["verified"]}
    assert set(claims) == {"genuine", "impostor"}
    assert claims["genuine"]["accepted"] is True and claims["impostor"]["accepted"] is False
    assert set(claims["genuine"]) == {
        "claim", "speaker", "file", "score", "threshold", "accepted", "reason"
    }  # fmt: skip
