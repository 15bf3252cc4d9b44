"""What one request with a ``read`` key can make the server do is bounded: the AS-Norm cohort is
read once per registry generation, ``GET /v1/speakers`` answers in pages, an unknown name's
"did you mean" reads a bounded number of names, nothing a request names is looked up on the
server's file system, and a speaker removed while AS-Norm scores is a 404, not a 500."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from sqlalchemy import event

from speakerid import errors
from speakerid.client import Client
from speakerid.registry import store
from speakerid.service.facade import SpeakerID

from .conftest import unit_rows
from .serverkit import Server, problem


def _count_cohort_loads(monkeypatch, sid) -> list[int]:
    loads: list[int] = []
    real = sid.registry.all_voiceprints

    def spy():
        loads.append(1)
        return real()

    monkeypatch.setattr(sid.registry, "all_voiceprints", spy)
    return loads


def test_asnorm_cohort_is_read_once_per_generation(db_url, tiny_ckpt, monkeypatch):
    vecs = unit_rows(8, seed=51)
    names = [f"s{i}" for i in range(5)]
    with SpeakerID(db=db_url, model=tiny_ckpt) as sid, SpeakerID(db=db_url) as other:
        sid.import_embeddings(names, vecs[:5])
        sid.registry.ensure_index()
        loads = _count_cohort_loads(monkeypatch, sid)
        first = sid.identify_embeddings(vecs[:3], top_k=3, threshold=0.0, asnorm=True)
        again = sid.identify_embeddings(vecs[:3], top_k=3, threshold=0.0, asnorm=True)
        assert [r.candidates for r in first] == [r.candidates for r in again]
        assert [r.speaker for r in first] == ["s0", "s1", "s2"]
        assert len(loads) == 1
        # a write by another process sharing the database: the next request reads it anew
        other.import_embeddings(["s5"], vecs[5:6])
        r = sid.identify_embeddings(vecs[5], top_k=6, threshold=0.0, asnorm=True)[0]
        assert r.speaker == "s5" and len(r.candidates) == 6 and len(loads) == 2
        # scores equal the uncached rule on the database's current voiceprints
        loads.clear()
        _, prints, now = other.registry.all_voiceprints()
        from speakerid.scoring.scores import registry_asnorm

        want = registry_asnorm(prints, now, ["s5"], vecs[5][None])[0]
        assert r.candidates[0].score == pytest.approx(want, abs=1e-9)
        # a rename is a write too (the cohort knows speakers by name)
        other.rename("s0", "zero")
        r = sid.identify_embeddings(vecs[0], threshold=0.0, asnorm=True)[0]
        assert r.speaker == "zero" and len(loads) == 1
        sid.identify_embeddings(vecs[0], threshold=0.0, asnorm=True)
        assert len(loads) == 1


def test_a_speaker_removed_between_search_and_cohort_is_no_500(tmp_path, tiny_ckpt, monkeypatch):
    """The race, made deterministic: another process removes the best candidate right after
    this request's search (identify) or voiceprint read (verify)."""
    vecs = unit_rows(6, seed=52)
    db = tmp_path / "reg.db"
    with SpeakerID(db=db, model=tiny_ckpt) as sid, SpeakerID(db=db) as other:
        sid.import_embeddings([f"s{i}" for i in range(5)], vecs[:5])
        real_search = sid.registry.search

        def search_then_remove(queries, k):
            found = real_search(queries, k)
            other.remove("s1")
            return found

        monkeypatch.setattr(sid.registry, "search", search_then_remove)
        r = sid.identify_embeddings(vecs[1], top_k=3, threshold=-50.0, asnorm=True)[0]
        assert "s1" not in [c.speaker for c in r.candidates]
        assert r.speaker in ("s0", "s2", "s3", "s4") and len(r.candidates) == 3
        monkeypatch.undo()
        assert [s.name for s in sid.list()] == ["s0", "s2", "s3", "s4"]


def test_verify_of_a_speaker_removed_mid_request_is_a_404(tmp_path, tiny_ckpt, monkeypatch, voices):
    db = tmp_path / "reg.db"
    with SpeakerID(db=db, model=tiny_ckpt) as sid, SpeakerID(db=db) as other:
        for i in range(4):
            sid.enroll(f"v{i}", [voices[i]], force=True)
        real = sid.registry.voiceprint

        def read_then_remove(name):
            vp = real(name)
            other.remove(name)
            return vp

        monkeypatch.setattr(sid.registry, "voiceprint", read_then_remove)
        with pytest.raises(errors.SpeakerNotFoundError, match="no speaker named 'v2'"):
            sid.verify("v2", voices[2], threshold=0.0, asnorm=True, min_speech=0)


def _select_limits(sid) -> list:
    """The LIMIT of every SELECT that reads speakers' names other than the lookup of one name
    (None: no LIMIT)."""
    seen: list = []

    def spy(_conn, _cursor, statement, _params, context, _many):
        stmt = getattr(context.compiled, "statement", None)
        sql = " ".join(statement.split())
        if sql.upper().startswith("SELECT") and "speakers.name" in sql:
            if "WHERE speakers.name = " not in sql:
                seen.append(getattr(stmt, "_limit", None))

    event.listen(sid.registry.db.engine, "before_cursor_execute", spy)
    return seen


def test_did_you_mean_reads_a_bounded_number_of_names(db_url, tiny_ckpt, monkeypatch):
    monkeypatch.setattr(store, "SUGGEST_SCAN_MAX", 20, raising=False)
    monkeypatch.setattr(store, "SUGGEST_NEIGHBOURS", 5, raising=False)
    names = [f"user{i:03d}" for i in range(120)] + ["alice", "Alicia", "bob", "Émile"]
    with SpeakerID(db=db_url, model=tiny_ckpt) as sid:
        sid.import_embeddings(names, unit_rows(len(names), seed=53))
        seen = _select_limits(sid)
        compared: list[int] = []
        real = store.difflib.get_close_matches

        def counted(word, possibilities, *a, **kw):
            compared.append(len(possibilities))
            return real(word, possibilities, *a, **kw)

        monkeypatch.setattr(store.difflib, "get_close_matches", counted)
        for asked, hint in (
            ("alcie", "'alice'"),
            ("ALICE", "'alice'"),  # a case variant's neighbours
            ("Alcie", "'alice'"),
            ("user0077", "'user0"),
            ("emile", None),  # 'Émile' sorts after every ASCII name: not a neighbour
        ):
            with pytest.raises(errors.SpeakerNotFoundError) as exc:
                sid.show(asked)
            if hint:
                assert f"(did you mean {hint}" in str(exc.value), (asked, str(exc.value))
            else:
                assert "did you mean" not in str(exc.value)
        assert seen and all(limit is not None and limit <= 21 for limit in seen), seen
        assert compared and max(compared) <= 8 * 5
        # a small registry still compares every name (typos anywhere in the name)
        monkeypatch.setattr(store, "SUGGEST_SCAN_MAX", 1000)
        assert sid.registry.similar_names("emile") == ["Émile"]


def test_no_file_system_lookup_of_a_requested_name(tmp_path, tiny_ckpt, monkeypatch):
    """A name that is a path on the server gets the same 404 as any other, and the library
    never asks the file system about it (the swapped-arguments hint is the CLI's)."""
    real_file = tmp_path / "secret.txt"
    real_file.write_text("x")
    asked: list[str] = []
    import os

    real_stat = os.stat

    def spy(path, *a, **kw):
        asked.append(os.fspath(path))
        return real_stat(path, *a, **kw)

    with SpeakerID(db=tmp_path / "reg.db", model=tiny_ckpt) as sid:
        sid.import_embeddings(["alice"], unit_rows(1, seed=54))
        monkeypatch.setattr(os, "stat", spy)
        for name in (str(real_file), str(tmp_path / "missing.txt")):
            with pytest.raises(errors.SpeakerNotFoundError) as exc:
                sid.show(name)
            assert str(exc.value) == f"no speaker named {name!r} in the registry"
        monkeypatch.undo()
    assert str(real_file) not in asked


def test_list_speakers_in_pages(tmp_path):
    names = [f"s{i:04d}" for i in range(1200)] + ["Zoë", "zoe", "Émile", "B", "a/b", "ä"]
    db = tmp_path / "registry.db"
    with SpeakerID(db=db, model="demo") as sid:
        sid.import_embeddings(names, unit_rows(len(names), seed=55))
        everyone = [s.name for s in sid.list()]
    assert everyone == sorted(names)  # code-point order
    with Server(tmp_path, db=db) as srv, srv.client() as http:
        r = http.get("/v1/speakers")
        assert r.status_code == 200 and len(r.json()) == 1000  # the default page
        assert [row["name"] for row in r.json()] == everyone[:1000]
        assert set(r.json()[0]) == {"name", "utterances", "created", "updated"}
        nxt = r.links["next"]["url"]
        assert nxt == f"?limit=1000&after={quote(everyone[999], safe='')}"
        rest = http.get("/v1/speakers" + nxt)
        assert [row["name"] for row in rest.json()] == everyone[1000:]
        assert "next" not in rest.links and "link" not in rest.headers
        # small pages walk the same order; a last page that is exactly full has no next link
        seen, url = [], "/v1/speakers?limit=401&metadata=true"
        while url:
            page = http.get(url)
            assert page.status_code == 200 and len(page.json()) <= 401
            seen += [row["name"] for row in page.json()]
            nxt = page.links.get("next", {}).get("url")
            assert nxt is None or nxt.endswith("&metadata=true")  # the query carries on
            url = "/v1/speakers" + nxt if nxt else None
        assert seen == everyone
        full = http.get("/v1/speakers", params={"limit": len(names)})
        assert len(full.json()) == len(names) and "link" not in full.headers
        assert http.get("/v1/speakers", params={"after": "ä"}).json() == []
        after_b = http.get("/v1/speakers", params={"limit": 2, "after": "B"}).json()
        assert [row["name"] for row in after_b] == ["Zoë", "a/b"]
        problem(http.get("/v1/speakers", params={"limit": 0}), 400, "InvalidInputError", "limit")
        problem(
            http.get("/v1/speakers", params={"limit": 10_001}), 400, "InvalidInputError", "limit"
        )
        # the Python client follows the pages: list() is every speaker, as in-process
        with Client(srv.url) as client:
            listed = client.list()
        assert [s.name for s in listed] == everyone
        assert {s.name: s.utterances for s in listed}["Zoë"] == 1


def test_page_order_is_code_points_on_every_backend(sid_any):
    names = ["b", "B", "á", "a", "Z", "z", "ä", "a b", "ab", "日本", "Ω", "0"]
    sid_any.import_embeddings(names, unit_rows(len(names), seed=56))
    walked, after = [], None
    while True:
        page = sid_any.list(limit=5, after=after)
        walked += [s.name for s in page]
        if len(page) < 5:
            break
        after = page[-1].name
    assert walked == [s.name for s in sid_any.list()] == sorted(names)


def test_a_404_names_no_file_of_the_server(tmp_path):
    secret = tmp_path / "private.key"
    secret.write_text("x")
    missing = tmp_path / "absent.key"
    with Server(tmp_path) as srv, srv.client() as http:
        answers = [
            problem(http.get(f"/v1/speakers/{quote(str(p), safe='')}"), 404, "SpeakerNotFoundError")
            for p in (secret, missing)
        ]
    assert answers[0]["detail"] == f"no speaker named {str(secret)!r} in the registry"
    assert answers[1]["detail"] == f"no speaker named {str(missing)!r} in the registry"
