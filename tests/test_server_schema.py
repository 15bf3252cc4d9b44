"""Schemathesis against ``/openapi.json`` of a real server: generated requests for every
operation (bounded examples) never get a 5xx, and every answer matches the document (status
codes, content types, bodies, headers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .serverkit import Server, clip_bytes, clips, env_for

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A server with an admin key and two speakers, so that reads find something."""
    work = tmp_path_factory.mktemp("schema")
    made = subprocess.run(
        [sys.executable, "-m", "speakerid", "keys", "create", "fuzz-admin-7f3a", "--scope",
         "admin", "--json", "--db", str(work / "registry.db")],
        cwd=work, env=env_for(work / "home"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    key = json.loads(made.stdout)["key"]
    with Server(work) as s, s.client(key) as c:
        for name, spk in (("alice", "so0003"), ("bob", "so0092")):
            files = [("files", clip_bytes(p)) for p in clips(spk)[:2]]
            assert c.post(f"/v1/speakers/{name}/enrollments", files=files).status_code == 201
        yield s, key


def fuzz(op, base_url: str, headers: dict, seen: dict[str, set[int]]) -> None:
    """12 generated requests for one operation (derandomized: the same ones every run)."""
    label = f"{op.method.upper()} {op.path}"

    @settings(
        max_examples=12,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy())
    def check(case):
        if label == "DELETE /v1/keys/{name}":
            case.path_parameters = {"name": "no-such-key"}  # keep the fuzzer's own key
        r = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=120)
        seen.setdefault(label, set()).add(r.status_code)

    check()


def test_api_conforms_to_its_openapi_document(fuzzed):
    srv, key = fuzzed
    schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == 19
    seen: dict[str, set[int]] = {}
    for op in operations:
        fuzz(op, srv.url, {"Authorization": f"Bearer {key}"}, seen)
    print(seen)
    assert len(seen) == len(operations)
    assert 400 in seen["POST /v1/identify"] and 200 in seen["GET /v1/speakers"]
    assert "Traceback" not in srv.logs()
