"""``speakerid.client.Client`` (SpeakerID's methods and results over HTTP) and the CLI's
``--server URL`` / ``$SPEAKERID_SERVER`` (+ ``$SPEAKERID_KEY``), run the way users run them."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest

from speakerid import errors as E
from speakerid.client import Client
from speakerid.results import CompareResult, EnrollResult, IdentifyResult, SpeakerInfo, VerifyResult
from speakerid.service.facade import SpeakerID

from .budgets import SCORE_ATOL
from .serverkit import ROOT, Server, clips, env_for


def same_answer(got, want) -> bool:
    """Equal answers: the same names, decisions and fields, scores within SCORE_ATOL. The
    server and this process may compute with other thread counts or batches, and a score
    rounded to 6 decimals can flip its last digit on a 1e-9 difference (tests/budgets.py)."""
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(same_answer(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(same_answer(a, b) for a, b in zip(got, want))
    if isinstance(got, float) and isinstance(want, float):
        return abs(got - want) <= SCORE_ATOL
    return got == want


A, B, C = clips("so0003"), clips("so0092"), clips("so0094")
REL = [p.relative_to(ROOT) for p in (*A, *B, *C)]  # relative paths, as typed in a shell


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One open server for the module; it never gets a key (that would close it for good)."""
    with Server(tmp_path_factory.mktemp("client")) as s:
        yield s


@pytest.fixture
def srv(server):
    """The server with an empty registry: every test enrolls what it uses, so each one stands
    alone in any order (and under ``-k``)."""
    with Client(server.url) as sid:
        for s in sid.list():
            sid.remove(s.name)
        sid.set_threshold(None)
    return server


def cli(home, *args, server=None, key=None, code=0, flag=False):
    extra = {"SPEAKERID_SERVER": server} if server and not flag else {}
    if key:
        extra["SPEAKERID_KEY"] = key
    argv = [*map(str, args), *(["--server", server] if flag else [])]
    r = subprocess.run(
        [sys.executable, "-m", "speakerid", *argv],
        cwd=ROOT,
        env=env_for(home, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    return r


def test_client_has_speakerids_methods_and_results(srv):
    with Client(srv.url) as sid:
        res = sid.enroll("alice", A[:2], metadata={"team": "red"})
        assert isinstance(res, EnrollResult) and (res.speaker, res.added, res.created) == (
            "alice",
            2,
            True,
        )
        sid.enroll("bob", B[:2])
        done = []
        assert sid.enroll("alice", [A[2]], append=True, on_progress=done.append).utterances == 3
        assert done == [1]
        one = sid.identify(A[3], top_k=2)
        assert isinstance(one, IdentifyResult) and len(one.candidates) == 2
        many = sid.identify_many([A[3], B[3]], top_k=2)
        v = sid.verify("bob", B[2])
        c = sid.compare(A[3], B[3])
        assert isinstance(v, VerifyResult) and isinstance(c, CompareResult)
        listed = sid.list()
        shown = sid.show("alice")
        assert isinstance(listed[0], SpeakerInfo) and isinstance(shown.created, datetime)
        assert shown.metadata == {"team": "red"} and [u.source for u in shown.details] == [
            str(p) for p in A[:3]
        ]
        info = sid.info()
        t = sid.threshold()
        rows = sid.embed([A[3]])
        assert rows[0]["dim"] == 192 and rows[0]["file"] == str(A[3])

    # the same questions in-process on the server's registry give the same answers
    with SpeakerID(db=srv.db) as local:
        assert same_answer(one.to_dict(), local.identify(A[3], top_k=2).to_dict())
        assert same_answer(
            [r.to_dict() for r in many],
            [r.to_dict() for r in local.identify_many([A[3], B[3]], top_k=2)],
        )
        assert same_answer(v.to_dict(), local.verify("bob", B[2]).to_dict())
        assert same_answer(c.to_dict(), local.compare(A[3], B[3]).to_dict())
        assert [r.to_dict() for r in listed] == [r.to_dict() for r in local.list()]
        assert shown.to_dict() == local.show("alice").to_dict()
        assert info == local.info() and t == local.threshold()

    with Client(srv.url) as sid:
        sid.enroll("carol", [C[0]])
        sid.rename("carol", "Carol")
        assert sid.remove("Carol") == 1
        card = sid.threshold()
        sid.set_threshold(0.5, "calibrated elsewhere")
        assert sid.threshold() == (0.5, "calibrated elsewhere") == SpeakerID(db=srv.db).threshold()
        sid.set_threshold(None)
        assert sid.threshold() == card


def test_client_raises_the_librarys_typed_errors(srv, tmp_path):
    with Client(srv.url) as sid, SpeakerID(db=srv.db) as local:
        sid.enroll("alice", A[:2])
        for call in (
            lambda s: s.show("nobody"),
            lambda s: s.verify("nobody", A[0]),
            lambda s: s.identify(tmp_path / "missing.wav"),
            lambda s: s.identify(A[0], top_k=0),
            lambda s: s.identify(A[0], threshold=3),
        ):
            with pytest.raises(E.SpeakerIDError) as remote_exc:
                call(sid)
            with pytest.raises(E.SpeakerIDError) as local_exc:
                call(local)
            assert type(remote_exc.value) is type(local_exc.value)
            assert str(remote_exc.value) == str(local_exc.value)
        bad = tmp_path / "notes.txt"
        bad.write_text("not audio")
        with pytest.raises(E.AudioDecodeError, match="notes.txt: not a readable audio file"):
            sid.identify(bad)
        with pytest.raises(E.SpeakerExistsError, match="speaker 'alice' already exists"):
            sid.enroll("alice", [C[1]])
    with Client("http://127.0.0.1:9") as dead, pytest.raises(E.ServerError) as exc:
        dead.list()
    assert str(exc.value).startswith("cannot reach the speakerid server at http://127.0.0.1:9")
    with pytest.raises(E.InvalidInputError, match="no server given"):
        Client()


def test_cli_with_server_env_or_flag_answers_like_the_local_cli(srv, tmp_path):
    home = tmp_path / "home"  # a clean home: the commands must not touch a local registry
    with Client(srv.url) as sid:
        sid.enroll("alice", A[:3])
        sid.enroll("bob", B[:2])
    r = cli(home, "identify", REL[3], REL[7], "--top-k", "2", "--json", server=srv.url)
    remote = json.loads(r.stdout)
    assert [row["file"] for row in remote] == [str(REL[3]), str(REL[7])]
    local = cli(home, "identify", REL[3], REL[7], "--top-k", "2", "--json", "--db", srv.db)
    assert remote == json.loads(local.stdout)

    r = cli(home, "verify", "bob", REL[6], "--json", server=srv.url, flag=True)
    assert json.loads(r.stdout)["speaker"] == "bob" and json.loads(r.stdout)["file"] == str(REL[6])
    r = cli(home, "compare", REL[3], REL[3], server=srv.url)
    assert r.stdout.startswith("same speaker: score 1.000")
    r = cli(home, "verify", "bob", REL[3], "--threshold", "0.99", server=srv.url, code=1)
    assert r.stdout.startswith("rejected:")

    r = cli(home, "enroll", "dave", REL[8], REL[9], "--json", server=srv.url)
    assert json.loads(r.stdout)["utterances"] == 2
    names = [s["name"] for s in json.loads(cli(home, "list", "--json", server=srv.url).stdout)]
    assert names == ["alice", "bob", "dave"]
    shown = json.loads(cli(home, "show", "dave", "--json", server=srv.url).stdout)
    assert [s["source"] for s in shown["sources"]] == [str(REL[8]), str(REL[9])]
    assert cli(home, "remove", "dave", "--yes", server=srv.url).stdout.strip() == (
        "removed dave (2 utterances)"
    )
    err = cli(home, "show", "dave", server=srv.url, code=2).stderr
    assert err.strip() == "error: no speaker named 'dave' in the registry"
    err = cli(home, "list", "--db", "x.db", server=srv.url, code=2).stderr
    assert err.strip().startswith("error: --db, --model and --device do not apply with --server")
    assert not home.exists() or not list(home.rglob("*.db"))  # nothing local was created


def test_cli_sends_the_key_from_the_environment(tmp_path):
    """Its own server: the key it creates closes that server for good."""
    home = tmp_path / "cli-home"
    srv = Server(tmp_path).start()
    try:
        _cli_sends_the_key(srv, home)
    finally:
        srv.stop()


def _cli_sends_the_key(srv, home):
    with Client(srv.url) as sid:
        sid.enroll("alice", A[:1])
        key = sid.create_key("scripts", "read")  # the server is no longer open
    err = cli(home, "list", server=srv.url, code=2).stderr
    assert err.strip() == ("error: this server needs an API key: send 'Authorization: Bearer KEY'")
    assert "alice" in cli(home, "list", server=srv.url, key=key).stdout
    err = cli(home, "remove", "alice", "--yes", server=srv.url, key=key, code=2).stderr
    assert "has scope 'read'; this needs 'write'" in err
    with Client(srv.url, key="spk_nope") as bad, pytest.raises(E.AuthenticationError):
        bad.list()
