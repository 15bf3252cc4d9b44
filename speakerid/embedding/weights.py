"""Model management: the table of known models, download/cache/install, checkpoint loading.

Files live in ``$SPEAKERID_HOME/models/<name>/<file>``. Downloads go over HTTPS to a temporary
file in the same folder, are verified against the pinned sha256, and only then renamed into
place, so an interrupted or corrupt download never leaves a file that looks installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import cache_dir, models_dir
from ..errors import (
    ChecksumMismatchError,
    DownloadError,
    InvalidCheckpointError,
    ModelNotInstalledError,
    UnknownModelError,
)

log = logging.getLogger("speakerid")

ENV_OFFLINE = "SPEAKERID_OFFLINE"
ENV_BASE_URL = "SPEAKERID_MODELSCOPE_URL"
DEFAULT_BASE_URL = "https://modelscope.cn/models"

Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class KnownModel:
    """One pinned entry of the model table."""

    name: str
    model_id: str
    revision: str
    filename: str
    sha256: str | None
    config: Mapping[str, int] = field(default_factory=dict)
    parameters: int = 0
    description: str = ""
    #: Cosine threshold from the model's card (the official cards publish 0.365 for both).
    threshold: float | None = None

    def url(self, base_url: str | None = None) -> str:
        base = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.model_id}/resolve/{self.revision}/{self.filename}"

    @property
    def path(self) -> Path:
        return models_dir() / self.name / self.filename


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="eres2netv2",
            model_id="iic/speech_eres2netv2_sv_zh-cn_16k-common",
            revision="v1.0.1",
            filename="pretrained_eres2netv2.ckpt",
            # Reported by a third party for the v1.0.1 file; unverified here.
            sha256="0eb4057106b2573dd7b132cf0c36273ab29afd192c1610f80baa9c556dbb963c",
            config={"m_channels": 64, "base_width": 26, "scale": 2, "expansion": 2},
            parameters=17_859_632,
            description="ERes2NetV2 common, 200k speakers, 3.81% EER on CN-Celeb",
            threshold=0.365,
        ),
        KnownModel(
            name="eres2netv2-w24s4ep4",
            model_id="iic/speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common",
            revision="v1.0.1",
            filename="pretrained_eres2netv2w24s4ep4.ckpt",
            sha256=None,
            config={"m_channels": 64, "base_width": 24, "scale": 4, "expansion": 4},
            parameters=53_513_632,
            description="ERes2NetV2 w24s4ep4 (wider, slower), 200k speakers",
            threshold=0.365,
        ),
    )
}


#: Models shipped inside the package (``speakerid/assets``): usable offline, no download.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_MODELS: dict[str, str] = {"demo": "demo-eres2netv2-m16.pt"}


def bundled_path(name: str) -> Path | None:
    """The packaged file of a bundled model, if this installation has it."""
    file = BUNDLED_MODELS.get(name)
    path = ASSETS_DIR / file if file else None
    return path if path is not None and path.is_file() else None


def model_card(name: str) -> dict:
    """A bundled model's card (``<file>.json`` next to it): metrics, recommended threshold."""
    import json

    path = bundled_path(name)
    card = path.with_suffix(".json") if path else None
    if card is None or not card.is_file():
        return {}
    return json.loads(card.read_text(encoding="utf-8"))


def get_known(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        names = ", ".join(sorted(set(KNOWN_MODELS) | set(BUNDLED_MODELS)))
        raise UnknownModelError(
            f"unknown model {name!r}: use one of {names}, an installed name, or a checkpoint path"
        ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: A file changed less than this long ago is not memoized (timestamps are coarse: a rewrite of
#: the same size within one clock tick could keep them; git's "racy" rule).
RACY_SECONDS = 2.0


def checkpoint_sha256(path: Path) -> str:
    """``sha256_file`` remembered per file (under ``$SPEAKERID_CACHE/sha256``) while its size,
    mtime, ctime and inode stay the same: a one-shot command would otherwise re-hash the
    checkpoint every time (70 MB for the common model, ~0.1 s). Any write changes the ctime,
    which users cannot set back, so a changed file is hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    memo = cache_dir() / "sha256" / f"{key}.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved["path"] == str(path) and saved["stat"] == stamp:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_SECONDS * 1e9:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"path": str(path), "stat": stamp, "sha256": digest}))
            os.replace(tmp, memo)
        except OSError:  # a read-only cache only costs the hashing
            pass
    return digest


def installed_path(name: str) -> Path | None:
    """The cached file of an installed model (known or custom), if present."""
    folder = models_dir() / name
    if name in KNOWN_MODELS:
        p = KNOWN_MODELS[name].path
        return p if p.is_file() else None
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return files[0] if files else None
    return None


def installed_models() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and installed_path(p.name))


def manual_install_hint(model: KnownModel) -> str:
    """The ways out when a known model cannot be downloaded (offline first run)."""
    return (
        f"use the bundled offline model with --model demo (or SPEAKERID_MODEL=demo), or "
        f"download {model.url()} on a connected machine and run: "
        f"speakerid model install FILE --name {model.name}"
    )


def _check_url(url: str) -> None:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise DownloadError(f"refusing to download over {parts.scheme or 'no scheme'}: {url}")


def download_file(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> str:
    """Fetch ``url`` into ``dest`` atomically; verify ``sha256`` when given. Returns the digest."""
    import urllib.error  # here, not at import: one-shot commands never download (~13 ms)
    import urllib.request

    _check_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "speakerid"})  # noqa: S310
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
                total = resp.headers.get("Content-Length")
                total_n = int(total) if total and total.isdigit() else None
                done = 0
                if progress:
                    progress(0, total_n)
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total_n)
                if total_n is not None and done != total_n:
                    raise DownloadError(
                        f"download of {url} was cut off after {done} of {total_n} bytes"
                    )
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if sha256 and digest != sha256.lower():
            raise ChecksumMismatchError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}; "
                f"if you trust this file, re-run with --sha256 {digest}"
            )
        os.replace(tmp, dest)
        return digest
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)


def download(
    name: str,
    progress: Progress | None = None,
    sha256: str | None = None,
    base_url: str | None = None,
    force: bool = False,
) -> Path:
    """Download a known model into the cache (no-op when present, unless ``force``)."""
    model = get_known(name)
    if model.path.is_file() and not force:
        return model.path
    if os.environ.get(ENV_OFFLINE):
        raise ModelNotInstalledError(
            f"model {name!r} is not installed and {ENV_OFFLINE} is set; "
            f"{manual_install_hint(model)}"
        )
    expected = sha256 or model.sha256
    try:
        digest = download_file(model.url(base_url), model.path, expected, progress)
    except ChecksumMismatchError:
        raise
    except DownloadError as exc:
        cause = str(exc).split(": ", 1)[-1] if str(exc).startswith("cannot download") else exc
        raise DownloadError(
            f"cannot download model {name!r} ({cause}); {manual_install_hint(model)}"
        ) from None
    log.info("downloaded %s (%s) to %s", name, digest, model.path)
    return model.path


def install(
    source: Path, name: str | None = None, sha256: str | None = None, force: bool = False
) -> Path:
    """Copy a local checkpoint into the cache under ``name`` after validating it."""
    source = Path(source)
    if not source.is_file():
        raise ModelNotInstalledError(f"{source}: no such file")
    name = name or source.stem
    if "/" in name or name.startswith(".") or not name.strip():
        raise UnknownModelError(f"invalid model name {name!r}")
    digest = sha256_file(source)
    if name in KNOWN_MODELS:
        expected = sha256 or KNOWN_MODELS[name].sha256
        if expected and digest != expected.lower() and not force:
            raise ChecksumMismatchError(
                f"{source}: sha256 {digest} does not match the pinned {expected} of {name!r}; "
                f"if you trust this file, re-run with --sha256 {digest}"
            )
        dest = KNOWN_MODELS[name].path
    else:
        dest = models_dir() / name / source.name
    load_model(source)  # refuses anything that is not an ERes2NetV2 checkpoint
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.iterdir():
        if old.is_file() and old != dest:
            old.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return dest


@dataclass(frozen=True)
class ResolvedModel:
    """A model file ready to load, with the identity a registry binds to."""

    name: str
    path: Path
    sha256: str
    #: What a registry stores to find this model again: a model name (known, bundled or
    #: installed) or the absolute path of a checkpoint file. Always resolvable by ``resolve``.
    ref: str = ""


@dataclass(frozen=True)
class ModelIdentity:
    """Who a model is (name, resolvable reference, sha256), learned without loading it."""

    name: str
    ref: str
    sha256: str


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.endswith((".pt", ".ckpt", ".pth", ".bin"))


def resolve(name_or_path: str | os.PathLike, progress: Progress | None = None) -> ResolvedModel:
    """A known/installed model name (downloading known ones on first use) or a checkpoint path."""
    text = str(name_or_path)
    as_path = Path(text).expanduser()
    if as_path.is_file():
        full = as_path.resolve()
        return ResolvedModel(as_path.stem, full, checkpoint_sha256(full), str(full))
    bundled = bundled_path(text)
    if bundled is not None:
        return ResolvedModel(text, bundled, checkpoint_sha256(bundled), text)
    if text in KNOWN_MODELS:
        path = installed_path(text) or download(text, progress=progress)
        return ResolvedModel(text, path, checkpoint_sha256(path), text)
    path = installed_path(text)
    if path:
        return ResolvedModel(text, path, checkpoint_sha256(path), text)
    if _looks_like_path(text):
        raise ModelNotInstalledError(f"{text}: no such model file")
    get_known(text)  # raises UnknownModelError with the list of names
    raise AssertionError("unreachable")  # pragma: no cover


def identity(name_or_path: str | os.PathLike, progress: Progress | None = None) -> ModelIdentity:
    """Name, reference and sha256 of a model, without downloading a pinned known model."""
    text = str(name_or_path)
    known = KNOWN_MODELS.get(text)
    if known is not None and known.sha256 and installed_path(text) is None:
        if bundled_path(text) is None and not Path(text).expanduser().is_file():
            return ModelIdentity(text, text, known.sha256)
    r = resolve(text, progress=progress)
    return ModelIdentity(r.name, r.ref, r.sha256)


def model_card_for(ref: str, sha256: str | None = None) -> dict:
    """The card of any model reference: a bundled model's packaged card, a checkpoint's
    ``<file>.json`` beside it (ignored when its ``sha256`` names another file), or the
    known-model table's published values. Empty when there is none. Never downloads."""
    import json

    if bundled_path(ref) is not None:
        return model_card(ref)
    known = KNOWN_MODELS.get(ref)
    if known is not None:
        return {"recommended_threshold": known.threshold} if known.threshold else {}
    path = Path(ref).expanduser() if _looks_like_path(ref) else installed_path(ref)
    side = path.with_suffix(".json") if path is not None else None
    if side is None or not side.is_file():
        return {}
    try:
        card = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring unreadable model card %s", side)
        return {}
    if not isinstance(card, dict) or (sha256 and card.get("sha256") not in (None, sha256)):
        return {}
    return card


def card_threshold(ref: str, sha256: str | None = None) -> float | None:
    """The cosine threshold a model's card recommends: ``recommended_threshold``, else the
    EER threshold of its own evaluation (``evaluation.this_model.eer_threshold_cosine``)."""
    card = model_card_for(ref, sha256)
    value = card.get("recommended_threshold")
    if value is None:
        value = ((card.get("evaluation") or {}).get("this_model") or {}).get("eer_threshold_cosine")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def describe(name_or_path: str | os.PathLike) -> dict:
    """What ``model info`` shows. A known model that is not installed is described from the
    pinned table (never downloaded); anything on disk from its weights."""
    from .models.eres2netv2 import count_parameters

    text = str(name_or_path)
    known = KNOWN_MODELS.get(text)
    if known is not None and installed_path(text) is None and bundled_path(text) is None:
        return {
            "name": known.name,
            "installed": False,
            "path": None,
            "url": known.url(),
            "sha256": known.sha256,
            "architecture": "ERes2NetV2",
            "config": dict(known.config),
            "parameters": known.parameters,
            "dim": 192,
            "threshold": known.threshold,
        }
    resolved = resolve(text)
    net = load_model(resolved.path)
    return {
        "name": resolved.name,
        "installed": True,
        "path": str(resolved.path),
        "sha256": resolved.sha256,
        "architecture": "ERes2NetV2",
        "config": net.config.to_dict(),
        "parameters": count_parameters(net),
        "dim": net.config.embedding_size,
        "threshold": card_threshold(resolved.ref, resolved.sha256),
    }


_WRAPPER_KEYS = ("state_dict", "model", "embedding_model", "model_state_dict", "module")


def load_state_dict(path: Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and unwrap common containers."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles/zip files
        kind = type(exc).__name__
        raise InvalidCheckpointError(
            f"{path}: not a loadable checkpoint ({kind}; only plain tensor files are accepted)"
        ) from None
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and "conv1.weight" not in obj:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidCheckpointError(f"{path}: not an ERes2NetV2 checkpoint (no state dict found)")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    if "conv1.weight" not in sd or "seg_1.weight" not in sd:
        raise InvalidCheckpointError(f"{path}: not an ERes2NetV2 checkpoint (unexpected keys)")
    # fp16/bf16 files (e.g. small bundled models) are computed in fp32.
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_model(path: Path):
    """Load a checkpoint into an ERes2NetV2 of the inferred configuration (eval mode, CPU)."""
    from .models.eres2netv2 import build_from_state_dict

    try:
        return build_from_state_dict(load_state_dict(path))
    except InvalidCheckpointError as exc:
        msg = str(exc)
        raise InvalidCheckpointError(
            msg if msg.startswith(str(path)) else f"{path}: {msg}"
        ) from None
