"""API keys: ``speakerid keys`` (stored hashed), Bearer auth on a real server, scopes
read < write < admin, revocation at once, the key checked before the body is read, open only on
loopback without keys and never reopened once a key existed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from speakerid.errors import AuthenticationError
from speakerid.server.runner import check_auth
from speakerid.server.settings import ServerSettings

from .serverkit import ROOT, Server, clip_bytes, clips, env_for, problem

A, B = clips("so0003"), clips("so0092")


def keys_cli(work, *args, code=0):
    r = subprocess.run(
        [sys.executable, "-m", "speakerid", "keys", *args, "--db", str(work / "registry.db")],
        cwd=work,
        env=env_for(work / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == code, r.stderr
    return r


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server whose registry has a key of each scope (created before it starts)."""
    work = tmp_path_factory.mktemp("auth")
    secrets = {}
    for scope in ("read", "write", "admin"):
        out = json.loads(
            keys_cli(work, "create", f"{scope}-app", "--scope", scope, "--json").stdout
        )
        assert out["name"] == f"{scope}-app" and out["scope"] == scope
        assert out["key"].startswith("spk_") and len(out["key"]) > 40
        secrets[scope] = out["key"]
    with Server(work) as s:
        yield s, secrets


def test_keys_cli_stores_only_hashes(tmp_path):
    r = keys_cli(tmp_path, "create", "ci", "--scope", "write")
    secret = r.stdout.strip()
    assert secret.startswith("spk_") and "cannot be shown again" in r.stderr
    listed = json.loads(keys_cli(tmp_path, "list", "--json").stdout)
    assert [(k["name"], k["scope"]) for k in listed] == [("ci", "write")] and listed[0]["created"]
    assert secret not in json.dumps(listed)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("registry.db*") if p.is_file())
    assert secret.encode() not in raw  # only its sha256 is stored
    err = keys_cli(tmp_path, "create", "ci", "--scope", "read", code=2).stderr
    assert err.strip() == "error: an API key named 'ci' already exists"
    err = keys_cli(tmp_path, "create", "x", "--scope", "root", code=2).stderr
    assert err.strip() == "error: unknown scope 'root': use one of read, write, admin"
    assert keys_cli(tmp_path, "revoke", "ci").stdout.strip() == "revoked API key ci"
    err = keys_cli(tmp_path, "revoke", "ci", code=2).stderr
    assert err.strip() == "error: no API key named 'ci'"
    assert "no API keys" in keys_cli(tmp_path, "list").stdout


def test_requests_need_a_key_of_the_right_scope(keyed):
    srv, key = keyed
    assert "3 API keys: requests need" in srv.logs()
    with srv.client() as anon:
        assert anon.get("/healthz").status_code == 200  # probes and metrics stay open
        assert anon.get("/readyz").json() == {"status": "ready"}  # nothing more without a key
        r = anon.get("/v1/speakers")
        problem(r, 401, "AuthenticationError", "this server needs an API key")
        assert r.headers["www-authenticate"] == "Bearer"
        problem(anon.get("/v1/speakers", headers={"Authorization": "Basic abc"}), 401,
                "AuthenticationError", "'Authorization: Bearer KEY'")  # fmt: skip
    with srv.client("spk_wrong") as bad:
        problem(bad.get("/v1/speakers"), 401, "AuthenticationError", "unknown API key")

    enroll = [("files", clip_bytes(A[0]))]
    with srv.client(key["read"]) as read:
        ready = read.get("/readyz").json()
        assert ready["status"] == "ready" and ready["model"] == "demo" and ready["auth"] == "keys"
        assert read.get("/v1/speakers").json() == []
        problem(
            read.post("/v1/speakers/alice/enrollments", files=enroll),
            403,
            "PermissionDeniedError",
            "the API key 'read-app' has scope 'read'; this needs 'write'",
        )
        problem(read.delete("/v1/speakers/alice"), 403, "PermissionDeniedError")
        problem(read.get("/v1/keys"), 403, "PermissionDeniedError")
    with srv.client(key["write"]) as write:
        assert write.post("/v1/speakers/alice/enrollments", files=enroll).status_code == 201
        assert write.patch("/v1/speakers/alice", json={"name": "Alice"}).status_code == 200
        problem(write.put("/v1/threshold", json={"threshold": 0.5}), 403, "PermissionDeniedError")
        problem(write.post("/v1/keys", json={"name": "x", "scope": "read"}), 403,
                "PermissionDeniedError", "this needs 'admin'")  # fmt: skip
    with srv.client(key["read"]) as read:  # read: identify, verify, compare, embed, show
        probe = [("files", clip_bytes(A[1]))]
        assert read.post("/v1/identify", files=probe).status_code == 200
        assert read.post("/v1/embed", files=probe).status_code == 200
        assert read.get("/v1/speakers/Alice").status_code == 200
        r = read.post("/v1/verify", files=[("file", clip_bytes(A[1]))], data={"speaker": "Alice"})
        assert r.status_code == 200

    with srv.client(key["admin"]) as admin:
        assert admin.put("/v1/threshold", json={"threshold": 0.5}).json()["threshold"] == 0.5
        assert admin.put("/v1/threshold", json={"threshold": None}).status_code == 200
        made = admin.post("/v1/keys", json={"name": "kiosk", "scope": "read"})
        assert made.status_code == 201 and made.json()["scope"] == "read"
        kiosk = made.json()["key"]
        names = [k["name"] for k in admin.get("/v1/keys").json()]
        assert names == ["admin-app", "kiosk", "read-app", "write-app"]
        assert kiosk not in admin.get("/v1/keys").text
        problem(
            admin.post("/v1/keys", json={"name": "kiosk", "scope": "read"}), 409, "KeyExistsError"
        )
        with srv.client(kiosk) as k:
            assert k.get("/v1/speakers").status_code == 200
            assert admin.delete("/v1/keys/kiosk").json() == {"revoked": "kiosk"}
            problem(k.get("/v1/speakers"), 401, "AuthenticationError", "unknown API key")
        problem(admin.delete("/v1/keys/kiosk"), 404, "KeyNotFoundError")
        assert admin.delete("/v1/speakers/Alice").status_code == 200

    # revoked from the command line while the server runs: refused from the next request on
    with srv.client(key["write"]) as write:
        assert write.get("/v1/speakers").status_code == 200
        keys_cli(srv.workdir, "revoke", "write-app")
        problem(write.get("/v1/speakers"), 401, "AuthenticationError")

    logs = srv.logs()
    assert all(k not in logs for k in (*key.values(), kiosk))  # keys never in the logs


def test_open_only_on_loopback_without_keys(tmp_path):
    assert "open" in check_auth(ServerSettings(host="127.0.0.1"), 0)
    assert "open" in check_auth(ServerSettings(host="::1"), 0)
    assert "2 API keys: requests need" in check_auth(ServerSettings(host="0.0.0.0"), 2)
    assert "--no-auth" in check_auth(ServerSettings(host="0.0.0.0", no_auth=True), 0)
    with pytest.raises(AuthenticationError, match="refusing to serve 0.0.0.0 without API keys"):
        check_auth(ServerSettings(host="0.0.0.0"), 0)
    r = subprocess.run(
        [sys.executable, "-m", "speakerid", "serve", "--host", "0.0.0.0", "--port", "0",
         "--db", str(tmp_path / "r.db"), "--model", "demo"],
        cwd=ROOT, env=env_for(tmp_path / "home"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: refusing to serve 0.0.0.0 without API keys: create one (speakerid keys create "
        "NAME --scope admin) or pass --no-auth behind an authenticating proxy"
    ]
    assert not (tmp_path / "r.db").exists()  # refused before anything was created


def test_open_server_closes_with_the_first_key_and_revoking_it_does_not_reopen_it(tmp_path):
    with Server(tmp_path) as srv, srv.client() as c:
        assert "open to every program on this machine" in srv.logs()
        assert c.get("/v1/speakers").status_code == 200
        assert c.get("/readyz").json()["auth"] == "open"
        # created by another process: the server learns it from the registry at the next request
        secret = json.loads(
            keys_cli(tmp_path, "create", "first", "--scope", "admin", "--json").stdout
        )["key"]
        problem(c.get("/v1/speakers"), 401, "AuthenticationError", "this server needs an API key")
        with srv.client(secret) as admin:
            assert admin.get("/v1/speakers").status_code == 200
            assert admin.get("/readyz").json()["auth"] == "keys"
            assert admin.delete("/v1/keys/first").json() == {"revoked": "first"}
        # no keys left, and still closed: only a restart reopens it
        assert keys_cli(tmp_path, "list", "--json").stdout.strip() == "[]"
        problem(c.get("/v1/speakers"), 401, "AuthenticationError", "this server needs an API key")
        problem(c.post("/v1/keys", json={"name": "again", "scope": "admin"}), 401,
                "AuthenticationError")  # fmt: skip
        assert c.get("/readyz").json() == {"status": "ready"}
        assert "revoking every key does not reopen this server" in srv.logs()


def _raw_request(url: str, head: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(ln.split(b": ", 1) for ln in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}.get(b"content-length", b"0"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def test_the_key_is_checked_before_the_body_is_read(keyed):
    """A caller without a valid key announces a 20 MB upload and sends none of it: the refusal
    comes at once (nothing waits for, or buffers, the body), and the connection stays usable."""
    srv, key = keyed
    size = 20 * 1024 * 1024
    host = srv.url.split("//")[1]

    def head(secret: str | None) -> str:
        auth = f"Authorization: Bearer {secret}\r\n" if secret else ""
        return (
            f"POST /v1/speakers/mallory/enrollments HTTP/1.1\r\nHost: {host}\r\n{auth}"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {size}\r\n\r\n"
        )

    for secret, status, detail in (
        (None, 401, "this server needs an API key"),
        ("spk_wrong", 401, "unknown API key"),
        (key["read"], 403, "has scope 'read'; this needs 'write'"),
    ):
        sock = _raw_request(srv.url, head(secret))
        t = time.perf_counter()
        got, body = _read_response(sock)
        assert time.perf_counter() - t < 5
        assert got == status and detail in json.loads(body)["detail"], body
        # the client sends its body anyway: the server drops it and answers the next request
        sock.sendall(b"\0" * size)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert _read_response(sock) == (200, b'{"status":"ok"}')
        sock.close()
    # with a key that may write, the server does wait for the body
    sock = _raw_request(srv.url, head(key["admin"]))
    sock.settimeout(1.5)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.close()
    with srv.client(key["admin"]) as admin:
        assert "mallory" not in [s["name"] for s in admin.get("/v1/speakers").json()]
