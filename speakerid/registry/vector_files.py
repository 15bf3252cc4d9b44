"""Embedding files that carry their model: plain ``.npy`` vectors with a ``.npy.json`` sidecar.

A vector is only comparable with vectors of the model that made it, and a bare ``.npy`` does
not say which model that was: another model's vectors of the same size would be imported into
a registry without complaint and corrupt every later answer. So every ``.npy`` speakerid
writes (``embed --output``, the ``embeddings.npy`` of ``export``) gets a sidecar
``NAME.npy.json`` beside it: the model's name, reference, sha256 and dimension, and the sha256
of the ``.npy`` bytes (``sha256sum NAME.npy``), so that a sidecar left beside a replaced file is
noticed. The ``.npy`` stays a plain array that numpy and 3D-Speaker's tools read as before, the
sidecar is JSON any tool reads, and the pair survives a copy of the folder.

Reading decides which model made a batch of files (``made_by``): the sidecars', which must
agree with each other and with a model the user names; bare files (3D-Speaker's
``infer_sv.py`` outputs) are refused unless the user names the model that made them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelMismatchError

FORMAT = "speakerid-embedding"
VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Provenance:
    """The model that made some vectors: what a registry binds to (``Registry.bind``)."""

    name: str
    ref: str
    sha256: str
    dim: int

    @classmethod
    def of(cls, embedder: Any) -> Provenance:
        """The provenance of what ``embedder`` (an ``Embedder``) computes."""
        return cls(embedder.name, embedder.ref, embedder.sha256, int(embedder.dim))

    def describe(self) -> str:
        return f"model {self.name!r} (sha256 {self.sha256[:12]})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "sha256": self.sha256, "dim": self.dim}


def sidecar(path: str | os.PathLike) -> Path:
    """Where the provenance of ``path`` lives: ``NAME.npy`` -> ``NAME.npy.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def npy_bytes(vectors: np.ndarray) -> bytes:
    """``vectors`` as the bytes of a little-endian float32 ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vectors, dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


def provenance_json(
    data: bytes, shape: Sequence[int], model: Provenance, source: dict[str, Any] | None = None
) -> bytes:
    """The sidecar of the ``.npy`` file ``data`` (its bytes) made by ``model``."""
    from .. import __version__

    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "npy_sha256": hashlib.sha256(data).hexdigest(),
        "shape": [int(n) for n in shape],
        "model": model.to_dict(),
    }
    if source:
        doc["source"] = source
    doc["speakerid"] = __version__
    doc["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def save(
    path: str | os.PathLike,
    vectors: np.ndarray,
    model: Provenance,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``vectors`` (one vector or a matrix) as a plain ``.npy`` and its sidecar.

    The ``.npy`` is written first: a sidecar left from an earlier file of that name no longer
    matches its sha256 and is refused on reading rather than believed."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim not in (1, 2) or arr.shape[-1] != model.dim:
        raise InvalidInputError(
            f"{path}: vectors of shape {tuple(arr.shape)} are not {model.dim}-dimensional"
        )
    out = Path(path)
    data = npy_bytes(arr)
    try:
        _write(out, data)
        _write(sidecar(out), provenance_json(data, arr.shape, model, source))
    except OSError as exc:
        raise InvalidInputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return out


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- reading -----------------------------------------------------------------------------
@dataclass
class EmbeddingBatch:
    """Vectors read from files for ``import-embeddings``: one row per name, and per file the
    model its sidecar names (None: a bare file)."""

    names: list[str]
    vectors: np.ndarray
    sources: list[str]
    files: list[Path]
    models: list[Provenance | None]


def read(
    files: Sequence[str | os.PathLike],
    names_file: str | os.PathLike | None = None,
    speaker: str | None = None,
) -> EmbeddingBatch:
    """Read ``.npy`` files: one vector each (named after the file stem, or all ``speaker``),
    or with ``names_file`` one N x dim matrix whose rows the file names, one name a line."""
    paths = [Path(f) for f in files]
    if not paths:
        raise InvalidInputError("no .npy files to import")
    if names_file is not None:
        if len(paths) != 1:
            raise InvalidInputError("--names goes with exactly one N x dim .npy matrix")
        matrix, model = _load(paths[0])
        try:
            text = Path(names_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(
                f"{names_file}: cannot read names file ({exc.strerror})"
            ) from None
        labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
        sources = [f"{paths[0].name}[{i}]" for i in range(len(labels))]
        return EmbeddingBatch(labels, matrix, sources, paths, [model])
    rows, models = [], []
    for f in paths:
        arr, model = _load(f)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            raise InvalidInputError(f"{f}: expected one embedding, got shape {arr.shape}")
        rows.append(arr)
        models.append(model)
    if len({r.shape for r in rows}) != 1:
        raise InvalidInputError("the .npy files have different embedding sizes")
    labels = [speaker or f.stem for f in paths]
    return EmbeddingBatch(labels, np.stack(rows), [f.name for f in paths], paths, models)


def _load(path: Path) -> tuple[np.ndarray, Provenance | None]:
    """The array of ``path`` and the model its sidecar names (checked against its bytes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: not a readable .npy file ({exc.strerror})") from None
    if not data:
        raise InvalidInputError(f"{path}: not a readable .npy file (empty)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npy file ({exc})") from None
    return arr, _provenance(path, data, arr)


def _provenance(path: Path, data: bytes, arr: np.ndarray) -> Provenance | None:
    side = sidecar(path)
    try:
        text = side.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInputError(f"{side}: cannot read ({exc.strerror})") from None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
        version = doc.get("version")
        if isinstance(version, int) and version > VERSION:
            raise InvalidInputError(
                f"{side}: written by a newer speakerid (format version {version}; this one "
                f"reads version {VERSION}): upgrade speakerid"
            )
        m = doc["model"]
        model = Provenance(str(m["name"]), str(m["ref"]), str(m["sha256"]), int(m["dim"]))
        expected = doc["npy_sha256"]
        if version != VERSION:
            raise ValueError(f"version {version!r}")
        if not (_SHA256.fullmatch(model.sha256) and _SHA256.fullmatch(str(expected))):
            raise ValueError("a sha256 is not 64 hex digits")
    except InvalidInputError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInputError(
            f"{side}: not a speakerid embedding provenance file ({detail})"
        ) from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise InvalidInputError(
            f"{path} does not match {side.name} (its sha256 differs: the .npy changed after "
            f"speakerid wrote it); delete {side.name} and say which model made {path.name} "
            f"with --model"
        )
    if arr.ndim == 0 or arr.shape[-1] != model.dim:
        raise InvalidInputError(
            f"{side}: says {model.dim}-dimensional vectors, {path.name} holds shape {arr.shape}"
        )
    return model


def made_by(batch: EmbeddingBatch, declared: Provenance | None) -> Provenance:
    """The model that made every vector of ``batch``: the one its sidecars name (all the
    same, and the ``declared`` one when the user names a model), or for bare files the
    ``declared`` model, without which they are refused."""
    carried = [(f, m) for f, m in zip(batch.files, batch.models) if m is not None]
    for f, m in carried:
        if declared is not None and m.sha256 != declared.sha256:
            raise ModelMismatchError(
                f"{f} was made by {m.describe()} (per {sidecar(f).name}), not by --model "
                f"{declared.name!r} (sha256 {declared.sha256[:12]})"
            )
        first, fm = carried[0]  # the others must agree with the first
        if m.sha256 != fm.sha256:
            raise ModelMismatchError(
                f"{first} ({fm.describe()}) and {f} ({m.describe()}) were made by different "
                f"models, whose vectors are not comparable: import them separately"
            )
    bare = [f for f, m in zip(batch.files, batch.models) if m is None]
    if bare and declared is None:
        one = len(bare) == 1
        raise InvalidInputError(
            f"{describe_files(bare)} {'carries' if one else 'carry'} no model (no "
            f"{sidecar(bare[0]).name} beside {'it' if one else 'them'}, as with 3D-Speaker's "
            f"infer_sv.py outputs): say which model made {'it' if one else 'them'} with "
            f"--model NAME_OR_PATH"
        )
    return declared if declared is not None else carried[0][1]


def describe_files(paths: Sequence[Path]) -> str:
    """``a.npy`` or ``a.npy and 2 more files``: which files an error is about, in one line."""
    more = len(paths) - 1
    return f"{paths[0]}" + (f" and {more} more file{'' if more == 1 else 's'}" if more else "")
