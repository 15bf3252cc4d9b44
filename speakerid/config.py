"""Where speakerid keeps its files and which defaults apply.

Everything is resolved from environment variables at call time (not import time) so tests and
scripts can point one process at several homes.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInputError

#: The model card's cosine threshold for ERes2NetV2 common; calibration tools recommend better ones.
DEFAULT_THRESHOLD = 0.365
#: The model a new registry is bound to when nothing else is asked for.
DEFAULT_MODEL = "eres2netv2"

ENV_HOME = "SPEAKERID_HOME"
ENV_DB = "SPEAKERID_DB"
ENV_MODEL = "SPEAKERID_MODEL"
ENV_THRESHOLD = "SPEAKERID_THRESHOLD"
ENV_DEVICE = "SPEAKERID_DEVICE"
ENV_INDEX = "SPEAKERID_INDEX"
ENV_BACKEND = "SPEAKERID_BACKEND"
ENV_SERVER = "SPEAKERID_SERVER"
ENV_KEY = "SPEAKERID_KEY"
ENV_THREADS = "SPEAKERID_THREADS"
ENV_CACHE = "SPEAKERID_CACHE"
ENV_PRECISION = "SPEAKERID_PRECISION"
ENV_COMPILE = "SPEAKERID_COMPILE"
ENV_MAX_AUDIO_SECONDS = "SPEAKERID_MAX_AUDIO_SECONDS"
ENV_MAX_TRACK_SECONDS = "SPEAKERID_MAX_TRACK_SECONDS"
#: Longest audio per file that the commands decoding a file whole (enroll, identify, verify,
#: compare, embed, ...) accept: 1 h is 230 MB as 16 kHz float32, 1.6 GB at the peak of loading
#: it from 48 kHz (bench/decode_bomb.py). A few MB of Opus can hold hours; beyond, one line.
DEFAULT_MAX_AUDIO_SECONDS = 3600.0
#: Longest recording ``track`` accepts: it streams (memory stays bounded at any length), so this
#: bounds only the time a file can take.
DEFAULT_MAX_TRACK_SECONDS = 86400.0
#: ``fp32`` is exact (on CUDA too: no TF32 in the convolutions). The others are opt-in and shift
#: embeddings slightly (docs/performance.md): ``int8``, the ONNX Runtime network with dynamically
#: quantized convolutions (CPU); ``tf32``, CUDA tensor cores on float32 (PyTorch's own default for
#: convolutions); ``bf16``, PyTorch autocast to bfloat16 (pooling stays float32).
PRECISIONS = ("fp32", "tf32", "bf16", "int8")
#: ``auto``: the fastest exact backend available (ONNX Runtime on CPU, PyTorch on CUDA).
BACKENDS = ("auto", "torch", "onnx")
INDEX_KINDS = ("auto", "flat", "pq", "hnsw")
#: Most compute threads the automatic choice uses (more rarely pays for one utterance at a time).
MAX_AUTO_THREADS = 4
#: Iterations an OpenMP (libgomp) thread busy-waits at a barrier before it sleeps; libgomp's own
#: default (300000) is milliseconds of spinning per operator (docs/performance.md, "Threads").
OPENMP_SPIN_COUNT = 1000


def home_dir() -> Path:
    """The speakerid home: ``$SPEAKERID_HOME`` or a per-user data dir (XDG on Linux)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    if os.name == "nt":  # pragma: no cover - not exercised on the CI platform
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":  # pragma: no cover
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "speakerid"


def cache_dir() -> Path:
    """Files derived from models (ONNX exports): ``$SPEAKERID_CACHE``, else the home.

    Keyed by checkpoint sha256, so one cache can serve many homes (tests share one)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else home_dir()


def models_dir() -> Path:
    """Cache of downloaded or installed model files."""
    return home_dir() / "models"


def default_db_path() -> Path:
    return home_dir() / "registry.db"


def default_db() -> str:
    """``$SPEAKERID_DB`` (a path, ``sqlite:///PATH`` or ``postgresql+psycopg://...``), else
    ``$SPEAKERID_HOME/registry.db``."""
    return os.environ.get(ENV_DB) or str(default_db_path())


def default_model() -> str:
    return os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def requested_model(explicit: str | os.PathLike | None = None) -> str | None:
    """The model the user asked for (``--model``, else ``$SPEAKERID_MODEL``), or None.

    A registry that is already bound uses its own model unless one is requested; a requested
    model is accepted on a bound registry only when its sha256 is the bound one.
    """
    if explicit:
        return str(explicit)
    return os.environ.get(ENV_MODEL) or None


def default_device() -> str:
    return os.environ.get(ENV_DEVICE) or "cpu"


def default_backend() -> str:
    """``$SPEAKERID_BACKEND``: ``auto`` (default: ONNX Runtime on CPU, PyTorch on CUDA),
    ``torch`` or ``onnx`` (ONNX Runtime, CPU only)."""
    name = os.environ.get(ENV_BACKEND) or "auto"
    return check_backend(name, f"${ENV_BACKEND}={name!r}")


def default_precision() -> str:
    """``$SPEAKERID_PRECISION``: ``fp32`` (default, exact), ``tf32``/``bf16`` (PyTorch, CUDA)
    or ``int8`` (ONNX Runtime, CPU)."""
    name = os.environ.get(ENV_PRECISION) or "fp32"
    return check_precision(name, f"${ENV_PRECISION}={name!r}")


def default_compile() -> bool:
    """``$SPEAKERID_COMPILE``: ``1`` runs the PyTorch network through ``torch.compile`` (CUDA)."""
    value = (os.environ.get(ENV_COMPILE) or "0").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInputError(f"${ENV_COMPILE}={value!r}: use 1 or 0")


def check_precision(name: str, label: str | None = None) -> str:
    """``name`` if it is a known precision, else a one-line error."""
    if name not in PRECISIONS:
        where = label or f"unknown precision {name!r}"
        raise InvalidInputError(f"{where}: use one of {', '.join(PRECISIONS)}")
    return name


def check_backend(name: str, label: str | None = None) -> str:
    """``name`` if it is a known backend, else a one-line error (``label`` says where from)."""
    from .errors import InvalidInputError

    if name not in BACKENDS:
        where = label or f"unknown backend {name!r}"
        raise InvalidInputError(f"{where}: use one of {', '.join(BACKENDS)}")
    return name


def parse_threshold(value: float | str, asnorm: bool = False) -> float:
    """Validate a threshold: a cosine in [-1, 1], or any finite z-score for AS-Norm scores."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"threshold must be a number, got {value!r}") from None
    if asnorm:
        if t != t or t in (float("inf"), float("-inf")):
            raise InvalidInputError(f"AS-Norm threshold must be finite, got {t}")
        return t
    if not -1.0 <= t <= 1.0:
        raise InvalidInputError(f"threshold must be a cosine in [-1, 1], got {t}")
    return t


def default_index_kind() -> str:
    """``$SPEAKERID_INDEX`` (auto, flat, pq, hnsw); auto picks by registry size."""
    from .errors import InvalidInputError

    kind = os.environ.get(ENV_INDEX) or "auto"
    if kind not in INDEX_KINDS:
        raise InvalidInputError(f"${ENV_INDEX}={kind!r}: use one of {', '.join(INDEX_KINDS)}")
    return kind


def env_threshold() -> float | None:
    """``$SPEAKERID_THRESHOLD`` if set (validated), else None."""
    raw = os.environ.get(ENV_THRESHOLD)
    return None if raw in (None, "") else parse_threshold(raw)


def _seconds(env: str, default: float) -> float:
    raw = (os.environ.get(env) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise InvalidInputError(f"${env}={raw!r}: use a positive number of seconds")
    return value


def max_audio_seconds() -> float:
    """``$SPEAKERID_MAX_AUDIO_SECONDS`` (default 3600): the most audio one file may hold where
    it is decoded whole (``speakerid.audio.decode.decode_limit``)."""
    return _seconds(ENV_MAX_AUDIO_SECONDS, DEFAULT_MAX_AUDIO_SECONDS)


def max_track_seconds() -> float:
    """``$SPEAKERID_MAX_TRACK_SECONDS`` (default 86400): the longest recording ``track``
    streams."""
    return _seconds(ENV_MAX_TRACK_SECONDS, DEFAULT_MAX_TRACK_SECONDS)


def server_url(explicit: str | None = None) -> str | None:
    """The speakerid server to use (``--server URL``, else ``$SPEAKERID_SERVER``), or None to
    work in-process. Its API key comes from ``$SPEAKERID_KEY`` (never a command-line flag)."""
    return explicit or os.environ.get(ENV_SERVER) or None


def bound_openmp_spinning() -> None:
    """Keep OpenMP threads from busy-waiting for milliseconds (read once, when torch loads),
    and numpy's OpenBLAS from spinning a second core after every small matrix product.

    With libgomp's default, a 2-thread team whose second core is taken by another process spins
    away a whole time slice at every operator: 14-27x slower than idle. 1000 spins keep the
    idle speed and degrade like one thread under load (measured, docs/performance.md). Called
    on ``import speakerid``, so it works when speakerid is imported before torch; the user's
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` win.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))
    # numpy's OpenBLAS keeps a thread per core that busy-waits after every product, and
    # speakerid's products are small (the fbank's mel product, resampling): with the default,
    # each 2 s embedding cost 115-190 ms of CPU for 57 ms of work, 2-3x, and a live server
    # spent 3.6x the CPU of the same stream in-process (docs/performance.md, "Threads"). Read
    # when numpy loads, so it only works when speakerid is imported first; the user's
    # OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS, which OpenBLAS also reads) wins.
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def parse_threads(value: int | str, label: str = "threads") -> int:
    """A compute thread count: a positive integer (``label`` names where it came from)."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInputError(f"{label} must be a positive integer, got {value!r}") from None
    if not 1 <= n <= 1024:
        raise InvalidInputError(f"{label} must be between 1 and 1024, got {n}")
    return n


def auto_threads(cores: int | None = None) -> int:
    """The thread count used when nothing is asked for: every core, at most 4.

    With bounded OpenMP spinning (:func:`bound_openmp_spinning`) 2 threads on 2 cores are 1.3-1.5x
    faster than 1 when idle and no slower under load (docs/performance.md, "Threads").
    """
    cores = available_cores() if cores is None else cores
    return max(1, min(cores, MAX_AUTO_THREADS))


def default_threads() -> int:
    """``$SPEAKERID_THREADS`` (validated; ``auto`` or empty: :func:`auto_threads`)."""
    raw = (os.environ.get(ENV_THREADS) or "").strip()
    if raw in ("", "auto"):
        return auto_threads()
    return parse_threads(raw, f"${ENV_THREADS}")
