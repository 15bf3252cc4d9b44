"""A real ``speakerid serve`` in a subprocess for the server tests (uvicorn on 127.0.0.1, a free
port chosen by the kernel and read back from the ``listening on URL`` line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "data" / "clips"
#: Real speech (speechocean762, in the repository): 4 clips per speaker, so0120 has one.
SPEAKERS = ("so0003", "so0092", "so0094", "so0111", "so0113")


def clips(speaker: str) -> list[Path]:
    return sorted((CLIPS / speaker).glob("*.opus"))


def clip_bytes(path: Path) -> tuple[str, bytes, str]:
    return (str(path), path.read_bytes(), "audio/ogg")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    env.update(
        SPEAKERID_HOME=str(home),
        SPEAKERID_OFFLINE="1",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


class Server:
    """``with Server(tmp, "--max-files", "4") as s: httpx.get(s.url + "/healthz")``"""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        db: Path | str | None = None,
        model: str = "demo",
        env: dict[str, str] | None = None,
    ):
        self.workdir = Path(workdir)
        self.env = env or {}  # extra SPEAKERID_* settings (the rest are cleared)
        self.db = db or self.workdir / "registry.db"
        self.args = ["--db", str(self.db), "--model", model, "--port", "0", *args]
        self.home = self.workdir / "home"
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "speakerid", "serve", *self.args],
            cwd=self.workdir,
            env=env_for(self.home, **self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()

        def pump(stream, sink: list[str], watch: bool) -> None:
            for line in stream:
                sink.append(line.rstrip("\n"))
                if watch and line.startswith("listening on "):
                    self.url = line.split()[-1]
                    ready.set()
            ready.set()  # the process ended

        threading.Thread(
            target=pump, args=(self.proc.stdout, self.stdout, True), daemon=True
        ).start()
        threading.Thread(
            target=pump, args=(self.proc.stderr, self.stderr, False), daemon=True
        ).start()
        ready.wait(timeout)
        if not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.stderr[-30:]))
        return self

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kw)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def logs(self) -> str:
        time.sleep(0.2)  # let the pumps catch up
        return "\n".join(self.stdout + self.stderr)


def problem(r: httpx.Response, status: int, error: str | None = None, detail: str = "") -> dict:
    """Assert an RFC 9457 answer: status, typed error, one-line detail, nothing else."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert set(body) <= {"type", "title", "status", "detail", "error"}, body
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    assert "\n" not in body["detail"] and "Traceback" not in r.text
    if error:
        assert body.get("error") == error, body
    assert detail in body["detail"], body
    return body
