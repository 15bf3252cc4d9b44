"""Lossless registry backups: ``speakerid export DIR`` writes, ``speakerid import DIR`` restores.

A backup folder (format version 1) holds:

- ``embeddings.npy``: float32 ``[utterances, dim]``, every stored utterance embedding, and
  ``names.txt``: the speaker of each row, and ``embeddings.npy.json``: the model that made them
  (``vector_files``). Together they stay readable by ``import-embeddings``.
- ``voiceprints.npy``: float32 ``[speakers, dim]``, row ``i`` = ``speakers[i]`` of the manifest.
- ``speakers.json``: the manifest: format and version, the model binding (name, ref, sha256, dim),
  both thresholds with their sources, every speaker (name, metadata, created, updated) with its
  utterances (row in ``embeddings.npy``, source, duration, audio sha256, created), and the sha256
  of every other file; its own ``checksum`` covers the rest of it. A damaged backup is refused
  before anything is written.

Restoring never loads or downloads a model: the backup carries the model identity, so a new
registry is bound to it offline, and a registry bound to another model refuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, config
from ..errors import BackupError, EmptyRegistryError, InvalidInputError, InvalidNameError
from ..results import RestoreResult
from .schema import utcnow
from .snapshot import BindingRecord, SpeakerRecord, UtteranceRecord
from .store import Registry, check_name
from .vector_files import Provenance, npy_bytes, provenance_json, sidecar
from .vectors import unit

log = logging.getLogger("speakerid")

FORMAT = "speakerid-backup"
VERSION = 1
MANIFEST = "speakers.json"
EMBEDDINGS = "embeddings.npy"
VOICEPRINTS = "voiceprints.npy"
NAMES = "names.txt"
#: The model of ``embeddings.npy`` for ``import-embeddings`` (``vector_files``).
EMBEDDINGS_PROVENANCE = sidecar(EMBEDDINGS).name
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: How far a stored voiceprint may be from the re-normalized mean of its embeddings.
_VOICEPRINT_TOLERANCE = 1e-4


# --- writing -----------------------------------------------------------------------------
def write_backup(registry: Registry, directory: str | os.PathLike) -> dict[str, Any]:
    """Write a consistent snapshot of ``registry`` into ``directory`` (manifest last)."""
    binding, speakers = registry.snapshot()
    if binding is None or not speakers:
        raise EmptyRegistryError("the registry is empty: nothing to export")
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"{out}: cannot create the backup folder ({exc})") from None
    entries, names, rows = [], [], 0
    for sp in speakers:
        utts = []
        for u in sp.utterances:
            utts.append(
                {
                    "row": rows,
                    "source": u.source,
                    "duration": u.duration,
                    "sha256": u.sha256,
                    "created": _stamp(u.created),
                }
            )
            names.append(sp.name)
            rows += 1
        entries.append(
            {
                "name": sp.name,
                "metadata": sp.metadata,
                "created": _stamp(sp.created),
                "updated": _stamp(sp.updated),
                "utterances": utts,
            }
        )
    emb = [u.vector for sp in speakers for u in sp.utterances]
    matrix = np.stack(emb) if emb else np.zeros((0, binding.dim), np.float32)
    files = {
        EMBEDDINGS: _npy(matrix),
        VOICEPRINTS: _npy(np.stack([sp.voiceprint for sp in speakers])),
        NAMES: "".join(f"{n}\n" for n in names).encode("utf-8"),
    }
    made_by = Provenance(binding.model_name, binding.model_ref, binding.model_sha256, binding.dim)
    files[EMBEDDINGS_PROVENANCE] = provenance_json(files[EMBEDDINGS], matrix.shape, made_by)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "speakerid": __version__,
        "exported": _stamp(utcnow()),
        "model": binding.model_name,
        "model_ref": binding.model_ref,
        "model_sha256": binding.model_sha256,
        "dim": binding.dim,
        "registry_created": _stamp(binding.created) if binding.created else None,
        "threshold": binding.threshold,
        "threshold_source": binding.threshold_source,
        "threshold_asnorm": binding.threshold_asnorm,
        "threshold_asnorm_source": binding.threshold_asnorm_source,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "speakers": entries,
    }
    manifest["checksum"] = manifest_digest(manifest)
    try:
        for name, data in files.items():
            _write_atomic(out / name, data)
        text = json.dumps(manifest, ensure_ascii=False, indent=1)
        _write_atomic(out / MANIFEST, text.encode("utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"{out}: cannot write the backup ({exc})") from None
    log.info("exported %d speakers, %d utterances to %s", len(speakers), rows, out)
    return {"directory": str(out), "speakers": len(speakers), "utterances": rows}


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest without its ``checksum`` field, as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _npy(arr: np.ndarray) -> bytes:
    return npy_bytes(arr)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _stamp(dt: datetime) -> str:
    """Naive UTC time with microseconds: restores to exactly the stored value."""
    return dt.isoformat(timespec="microseconds") + "Z"


# --- reading -----------------------------------------------------------------------------
def read_backup(directory: str | os.PathLike) -> tuple[BindingRecord, list[SpeakerRecord]]:
    """Parse and verify a backup folder completely (checksums, shapes, references)."""
    root = Path(directory)
    if not root.is_dir():
        raise BackupError(f"{root}: no such backup folder")
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{root}: not a speakerid backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: damaged backup manifest ({exc})") from None
    _check_format(manifest, root, path)
    if manifest.get("checksum") != manifest_digest(manifest):
        raise BackupError(f"{path}: damaged backup manifest (its checksum does not match)")
    try:
        files = manifest["files"]
        arrays = {name: _load_checked(root, name, files) for name in (EMBEDDINGS, VOICEPRINTS)}
        for name in files:
            if name not in arrays:
                _load_checked(root, name, files, parse=False)
        return _parse(manifest, arrays[EMBEDDINGS], arrays[VOICEPRINTS])
    except BackupError:
        raise
    except (KeyError, TypeError, ValueError, InvalidInputError, InvalidNameError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise BackupError(f"{path}: damaged backup manifest ({detail})") from None


def _check_format(manifest: Any, root: Path, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        if isinstance(manifest, dict) and "format" not in manifest and "speakers" in manifest:
            made = manifest.get("model_sha256")
            made = f" (sha256 {str(made)[:12]})" if made else ""
            raise BackupError(
                f"{root}: an export of an older speakerid without a backup manifest; import "
                f"its vectors with speakerid import-embeddings {root / EMBEDDINGS} "
                f"--names {root / NAMES} --model MODEL, the model that made them: "
                f"{manifest.get('model')!r}{made}"
            )
        raise BackupError(f"{path}: not a speakerid backup manifest")
    version = manifest.get("version")
    if version != VERSION:
        hint = "upgrade speakerid" if isinstance(version, int) and version > VERSION else ""
        raise BackupError(
            f"{path}: backup format version {version!r} is not supported (this speakerid "
            f"reads version {VERSION}){'; ' + hint if hint else ''}"
        )


def _load_checked(root: Path, name: str, files: dict, parse: bool = True) -> np.ndarray | None:
    """A file of the backup, refused unless its bytes match the manifest's sha256."""
    if name not in files or "/" in name or "\\" in name or name.startswith("."):
        raise BackupError(f"{root / MANIFEST}: damaged backup manifest (no checksum of {name})")
    try:
        data = (root / name).read_bytes()
    except OSError as exc:
        raise BackupError(f"{root / name}: missing or unreadable backup file ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != files[name]:
        raise BackupError(
            f"{root / name}: damaged backup: sha256 {digest[:12]} does not match "
            f"{str(files[name])[:12]} recorded in {MANIFEST}"
        )
    if not parse:
        return None
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BackupError(f"{root / name}: not a readable .npy file ({exc})") from None
    if arr.dtype != np.dtype("<f4") or arr.ndim != 2 or not np.isfinite(arr).all():
        raise BackupError(f"{root / name}: expected a finite float32 matrix")
    return arr


def _parse(m: dict, emb: np.ndarray, vps: np.ndarray) -> tuple[BindingRecord, list[SpeakerRecord]]:
    dim = m["dim"]
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim {dim!r}")
    sha = m["model_sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError(f"model_sha256 {sha!r}")
    binding = BindingRecord(
        _text(m["model"]),
        _text(m["model_ref"]),
        sha,
        dim,
        _time(m["registry_created"]) if m["registry_created"] is not None else None,
        _threshold(m["threshold"], False),
        _opt_text(m["threshold_source"]),
        _threshold(m["threshold_asnorm"], True),
        _opt_text(m["threshold_asnorm_source"]),
    )
    entries = m["speakers"]
    if not isinstance(entries, list):
        raise TypeError("speakers is not a list")
    if emb.shape[1] != dim or vps.shape != (len(entries), dim):
        raise ValueError(
            f"{EMBEDDINGS} {emb.shape} / {VOICEPRINTS} {vps.shape} do not fit {len(entries)} "
            f"speakers of dimension {dim}"
        )
    norms = np.linalg.norm(emb, axis=1)
    if len(norms) and np.max(np.abs(norms - 1.0)) > 1e-3:
        raise ValueError(f"{EMBEDDINGS} holds vectors that are not unit length")
    owner = np.full(len(emb), -1, dtype=np.int64)  # speaker index of each row
    speakers = []
    for i, e in enumerate(entries):
        name = _text(e["name"])
        if check_name(name) != name:
            raise ValueError(f"speaker name {name!r} is not normalized")
        meta = e["metadata"]
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"metadata of {name!r} is not an object")
        utts = tuple(_utterance(u, emb, owner, i) for u in e["utterances"])
        hashes = [u.sha256 for u in utts if u.sha256]
        if len(set(hashes)) != len(hashes):
            raise ValueError(f"the same audio sha256 appears twice for {name!r}")
        speakers.append(
            SpeakerRecord(name, meta, _time(e["created"]), _time(e["updated"]), vps[i], utts)
        )
    if (owner < 0).any():
        n = int((owner < 0).sum())
        raise ValueError(f"{n} {'row' if n == 1 else 'rows'} of {EMBEDDINGS} belong to no speaker")
    _check_voiceprints(speakers, emb, owner, vps)
    names = [sp.name for sp in speakers]
    if len(set(names)) != len(names):
        raise ValueError("the same speaker name appears twice")
    return binding, speakers


def _check_voiceprints(
    speakers: list[SpeakerRecord], emb: np.ndarray, owner: np.ndarray, vps: np.ndarray
) -> None:
    """Each voiceprint must be the re-normalized mean of its speaker's rows (vectorized)."""
    counts = np.bincount(owner, minlength=len(vps))
    has = counts > 0
    sums = np.zeros(vps.shape, np.float32)
    if has.any():
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums[has] = np.add.reduceat(emb[np.argsort(owner, kind="stable")], starts[has])
    err = np.max(np.abs(unit(sums) - vps), axis=1) if len(vps) else np.zeros(0)
    bad = np.flatnonzero(has & (err > _VOICEPRINT_TOLERANCE))
    if len(bad):
        raise ValueError(f"voiceprint of {speakers[bad[0]].name!r} does not match its embeddings")


def _utterance(u: dict, emb: np.ndarray, owner: np.ndarray, speaker: int) -> UtteranceRecord:
    row = u["row"]
    if not isinstance(row, int) or not 0 <= row < len(emb) or owner[row] >= 0:
        raise ValueError(f"utterance row {row!r} is out of range or used twice")
    owner[row] = speaker
    dur = u["duration"]
    if dur is not None and (isinstance(dur, bool) or not isinstance(dur, (int, float))):
        raise TypeError(f"duration {dur!r}")
    sha = u["sha256"]
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        raise ValueError(f"audio sha256 {sha!r}")
    dur = None if dur is None else float(dur)
    return UtteranceRecord(emb[row], _opt_text(u["source"]), dur, sha, _time(u["created"]))


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise TypeError(f"expected a non-empty string, got {v!r}")
    return v


def _opt_text(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _threshold(v: Any, asnorm: bool) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"threshold {v!r}")
    return config.parse_threshold(v, asnorm)


def _time(v: Any) -> datetime:
    if not isinstance(v, str) or not v.endswith("Z"):
        raise ValueError(f"timestamp {v!r}")
    dt = datetime.fromisoformat(v[:-1])
    if dt.tzinfo is not None:
        raise ValueError(f"timestamp {v!r}")
    return dt


# --- restoring ---------------------------------------------------------------------------
def restore_backup(
    registry: Registry | Callable[[], Registry],
    directory: str | os.PathLike,
    on_conflict: str = "error",
) -> RestoreResult:
    """Verify a backup folder, then write it into ``registry`` in one transaction.

    ``registry`` may be a factory, called only once the backup has been verified, so that a
    damaged backup never creates a registry file."""
    binding, speakers = read_backup(directory)
    if callable(registry):
        registry = registry()
    rep = registry.restore(binding, speakers, on_conflict)
    log.info("restored %d speakers from %s", len(rep.restored), directory)
    return RestoreResult(
        str(directory),
        binding.model_name,
        len(rep.restored),
        rep.utterances,
        rep.skipped,
        rep.replaced,
        rep.thresholds_restored,
        rep.bound,
    )
