"""The package's public names: what `from speakerid import ...` offers, and what it costs."""

from __future__ import annotations

import subprocess
import sys

import speakerid
from speakerid.client import Client
from speakerid.service.facade import SpeakerID


def test_every_public_name_resolves():
    for name in speakerid.__all__:
        assert getattr(speakerid, name) is not None, name
    assert speakerid.SpeakerID is SpeakerID
    assert speakerid.Client is Client


def test_import_is_light_and_names_load_lazily():
    code = (
        "import sys, speakerid\n"
        "heavy = [m for m in ('torch', 'sqlalchemy', 'onnxruntime', 'faiss') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from speakerid import Client\n"
        "assert 'torch' not in sys.modules and 'sqlalchemy' not in sys.modules\n"
        "from speakerid import SpeakerID\n"
        "print(SpeakerID.__module__, Client.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["speakerid.service.facade", "speakerid.client"]


def test_unknown_name_is_an_attribute_error():
    try:
        speakerid.Nope  # noqa: B018
    except AttributeError as exc:
        assert "has no attribute 'Nope'" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("speakerid.Nope resolved")
