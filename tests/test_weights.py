"""Model table, download (against a local HTTP server), install, checkpoint loading."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from speakerid import errors
from speakerid.cli import app
from speakerid.embedding import weights

runner = CliRunner()


def test_known_models_resolve_to_pinned_modelscope_urls():
    common = weights.KNOWN_MODELS["eres2netv2"]
    assert common.url() == (
        "https://modelscope.cn/models/iic/speech_eres2netv2_sv_zh-cn_16k-common"
        "/resolve/v1.0.1/pretrained_eres2netv2.ckpt"
    )
    assert common.sha256 == "0eb4057106b2573dd7b132cf0c36273ab29afd192c1610f80baa9c556dbb963c"
    wide = weights.KNOWN_MODELS["eres2netv2-w24s4ep4"]
    assert wide.url().endswith(
        "speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common/resolve/v1.0.1/"
        "pretrained_eres2netv2w24s4ep4.ckpt"
    )


class _Server:
    """A tiny HTTP server on 127.0.0.1 serving one payload, optionally cut short."""

    def __init__(self, payload: bytes, truncate: bool = False) -> None:
        outer = self
        self.payload, self.truncate, self.requests = payload, truncate, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.payload)))
                self.end_headers()
                body = outer.payload[: len(outer.payload) // 2] if outer.truncate else outer.payload
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ckpt_bytes(tiny_ckpt) -> bytes:
    return tiny_ckpt.read_bytes()


def test_download_verifies_checksum_reports_progress_and_caches(ckpt_bytes, monkeypatch):
    monkeypatch.delenv("SPEAKERID_OFFLINE")
    digest = hashlib.sha256(ckpt_bytes).hexdigest()
    seen = []
    with _Server(ckpt_bytes) as srv:
        path = weights.download(
            "eres2netv2",
            progress=lambda d, t: seen.append((d, t)),
            sha256=digest,
            base_url=srv.base,
        )
        assert path.read_bytes() == ckpt_bytes
        assert path == weights.KNOWN_MODELS["eres2netv2"].path
        assert seen[0] == (0, len(ckpt_bytes)) and seen[-1] == (len(ckpt_bytes), len(ckpt_bytes))
        weights.download("eres2netv2", sha256=digest, base_url=srv.base)  # cached: no request
        assert srv.requests == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_download_checksum_mismatch_is_refused_with_both_hashes(ckpt_bytes, monkeypatch):
    monkeypatch.delenv("SPEAKERID_OFFLINE")
    digest = hashlib.sha256(ckpt_bytes).hexdigest()
    pinned = weights.KNOWN_MODELS["eres2netv2"].sha256
    with _Server(ckpt_bytes) as srv:
        with pytest.raises(errors.ChecksumMismatchError) as info:
            weights.download("eres2netv2", base_url=srv.base)
    msg = str(info.value)
    assert pinned in msg and digest in msg and f"--sha256 {digest}" in msg
    folder = weights.KNOWN_MODELS["eres2netv2"].path.parent
    assert list(folder.iterdir()) == []


def test_interrupted_download_leaves_no_cache_file(ckpt_bytes, monkeypatch):
    monkeypatch.delenv("SPEAKERID_OFFLINE")
    with _Server(ckpt_bytes, truncate=True) as srv:
        with pytest.raises(errors.DownloadError, match="cut off|cannot download"):
            weights.download("eres2netv2", base_url=srv.base, sha256=None)
    folder = weights.KNOWN_MODELS["eres2netv2"].path.parent
    assert list(folder.iterdir()) == []
    assert weights.installed_path("eres2netv2") is None


def test_cli_download_against_local_server(ckpt_bytes, monkeypatch):
    monkeypatch.delenv("SPEAKERID_OFFLINE")
    digest = hashlib.sha256(ckpt_bytes).hexdigest()
    with _Server(ckpt_bytes) as srv:
        monkeypatch.setenv("SPEAKERID_MODELSCOPE_URL", srv.base)
        bad = runner.invoke(app, ["model", "download", "eres2netv2"])
        assert bad.exit_code == 2 and "checksum mismatch" in bad.stderr
        ok = runner.invoke(app, ["model", "download", "eres2netv2", "--sha256", digest, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["sha256"] == digest


def test_plain_http_to_remote_hosts_is_refused():
    with pytest.raises(errors.DownloadError, match="refusing to download over http"):
        weights.download_file("http://example.com/x.ckpt", Path("/tmp/never"), None)


def test_offline_missing_model_says_how_to_install_by_hand():
    with pytest.raises(errors.ModelNotInstalledError) as info:
        weights.resolve("eres2netv2")
    msg = str(info.value)
    assert "speakerid model install FILE --name eres2netv2" in msg
    assert "https://modelscope.cn/models/iic/speech_eres2netv2_sv_zh-cn_16k-common" in msg


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(errors.UnknownModelError, match="eres2netv2, eres2netv2-w24s4ep4"):
        weights.resolve("no-such-model")


def test_install_custom_checkpoint_and_use_by_name(tiny_ckpt):
    result = runner.invoke(app, ["model", "install", str(tiny_ckpt), "--name", "mine", "--json"])
    assert result.exit_code == 0, result.output
    assert weights.resolve("mine").sha256 == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    listed = json.loads(runner.invoke(app, ["model", "list", "--json"]).stdout)
    assert {"mine", "eres2netv2", "eres2netv2-w24s4ep4", "demo"} == {r["name"] for r in listed}
    assert next(r for r in listed if r["name"] == "mine")["installed"] is True
    info = json.loads(runner.invoke(app, ["model", "info", "mine", "--json"]).stdout)
    assert info["config"]["m_channels"] == 16 and info["parameters"] > 0 and info["dim"] == 192


def test_install_known_name_enforces_pinned_checksum(tiny_ckpt):
    result = runner.invoke(app, ["model", "install", str(tiny_ckpt), "--name", "eres2netv2"])
    assert result.exit_code == 2
    assert "does not match the pinned" in result.stderr
    assert weights.installed_path("eres2netv2") is None
    forced = runner.invoke(
        app, ["model", "install", str(tiny_ckpt), "--name", "eres2netv2", "--force"]
    )
    assert forced.exit_code == 0
    assert weights.installed_path("eres2netv2") is not None


def test_wrapped_prefixed_and_fp16_checkpoints_load(tiny_reference, tmp_path):
    sd = tiny_reference["state_dict"]
    variants = {
        "wrapped.pt": {"state_dict": sd, "epoch": torch.tensor(3)},
        "model.ckpt": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "half.pt": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        model = weights.load_model(tmp_path / name)
        assert model.config.m_channels == 16
        assert next(model.parameters()).dtype == torch.float32


class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_non_eres2netv2_and_unsafe_files_are_rejected(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    torch.save(
        {"conv1.weight": torch.zeros(4, 1, 3, 3), "seg_1.weight": torch.zeros(192, 10)},
        tmp_path / "shapes.pt",
    )
    torch.save({"obj": _Evil()}, tmp_path / "evil.pt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00garbage" * 100)
    for name, pattern in [
        ("other.pt", "not an ERes2NetV2"),
        ("shapes.pt", "not an ERes2NetV2"),
        ("evil.pt", "not a loadable checkpoint"),
        ("junk.ckpt", "not a loadable checkpoint"),
    ]:
        with pytest.raises(errors.InvalidCheckpointError, match=pattern):
            weights.load_model(tmp_path / name)
        result = runner.invoke(app, ["model", "info", str(tmp_path / name)])
        assert result.exit_code == 2 and result.stderr.startswith("error: ")
        assert len(result.stderr.strip().splitlines()) == 1
