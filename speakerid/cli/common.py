"""Shared CLI plumbing: error handling, JSON output, progress bars, common options."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from .. import config
from ..errors import InvalidInputError, SpeakerIDError

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Model name or checkpoint path (default: $SPEAKERID_MODEL or eres2netv2).",
    ),
]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help="cpu (default), cuda, cuda:N or auto.")
]
BackendOpt = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        help="auto (default: ONNX Runtime on CPU, PyTorch on CUDA), onnx or torch "
        "(default: $SPEAKERID_BACKEND, else auto).",
    ),
]
PrecisionOpt = Annotated[
    Optional[str],
    typer.Option(
        "--precision",
        help="fp32 (default, exact); int8 (ONNX Runtime with quantized convolutions, CPU), "
        "tf32 (CUDA tensor cores) or bf16 (PyTorch autocast): faster, scores shift slightly "
        "(default: $SPEAKERID_PRECISION, else fp32).",
    ),
]
DbOpt = Annotated[
    Optional[str],
    typer.Option(
        "--db",
        help="Registry: a SQLite file (or sqlite:///PATH) or postgresql+psycopg://user:pass@"
        "host:port/dbname (default: $SPEAKERID_DB, else $SPEAKERID_HOME/registry.db).",
    ),
]


ServerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--server",
        help="URL of a speakerid server to ask instead (default: $SPEAKERID_SERVER; "
        "key: $SPEAKERID_KEY).",
    ),
]


ThresholdOpt = Annotated[
    Optional[float],
    typer.Option("--threshold", "-t", help="Cosine threshold (default: registry/env/0.365)."),
]

AsnormOpt = Annotated[
    bool,
    typer.Option("--asnorm", help="AS-Norm scores (cohort: the registry's other speakers)."),
]


def _threads(value: str | None) -> str | None:
    """``--threads N``: validated here (one-line error), applied by the library through
    ``$SPEAKERID_THREADS`` when the model is loaded, so every path that computes sees it."""
    if value is not None:
        value = value.strip()
        if value != "auto":
            try:
                value = str(config.parse_threads(value, "--threads"))
            except SpeakerIDError as exc:
                raise fail(str(exc), exc.exit_code) from None
        os.environ[config.ENV_THREADS] = value
    return value


ThreadsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--threads",
        metavar="N",
        callback=_threads,
        help="Compute threads: a number or auto (default: $SPEAKERID_THREADS or auto).",
    ),
]


def _compile(value: bool) -> bool:
    """``--compile``: applied by the library through ``$SPEAKERID_COMPILE`` (like --threads)."""
    if value:
        os.environ[config.ENV_COMPILE] = "1"
    return value


CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        callback=_compile,
        help="Run the PyTorch network through torch.compile (CUDA; the first batches of each "
        "process compile it; default: $SPEAKERID_COMPILE).",
    ),
]


def open_service(
    db: str | Path | None,
    model: str | None = None,
    device: str | None = None,
    threshold: float | None = None,
    json_mode: bool = True,
    server: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
):
    """The library facade for a command; the model is only loaded if the command embeds.

    With ``server`` (a URL, see ``config.server_url``) the command asks that speakerid server
    through :class:`speakerid.client.Client`, which has the same methods and results."""
    if server:
        if db or model or device:
            raise InvalidInputError(
                "--db, --model and --device do not apply with --server or $SPEAKERID_SERVER "
                "(the server has its own registry and model)"
            )
        from ..client import Client

        return Client(server)
    from ..service.facade import SpeakerID

    return SpeakerID(
        db=db,
        model=model,
        threshold=threshold,
        device=device,
        download_progress=download_progress(show_progress(json_mode)),
        backend=backend,
        on_prepare=prepare_status(show_progress(json_mode)),
        precision=precision,
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn library errors into a one-line message and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpeakerIDError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def plural(n: int, word: str) -> str:
    """``1 utterance``, ``2 utterances``: counts read as words, never ``utterance(s)``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def stdout_is_tty() -> bool:
    """Tables for humans on a terminal, tab-separated lines for scripts otherwise."""
    return sys.stdout.isatty()


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))


def show_progress(json_mode: bool) -> bool:
    """Progress bars only for humans: on a TTY and not in --json mode."""
    return not json_mode and sys.stderr.isatty()


@contextmanager
def progress_bar(
    description: str, total: int | None, enabled: bool
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1)``; a rich bar on stderr when enabled, a no-op otherwise."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def prepare_status(enabled: bool) -> Callable[[str], Any] | None:
    """What a TTY shows while a model is exported for ONNX Runtime (first use of a model):
    a spinner with the library's message on stderr, then one line saying it is done."""
    if not enabled:
        return None

    @contextmanager
    def status(message: str) -> Iterator[None]:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(message):
            yield
        console.print(f"{message.split(' (')[0]}: done")

    return status


def download_progress(enabled: bool) -> Callable[[int, int | None], None] | None:
    """A byte-progress callback for model downloads (rich bar on a TTY)."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    prog = Progress(
        *Progress.get_default_columns(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    state: dict[str, Any] = {}

    def update(done: int, total: int | None) -> None:
        if "task" not in state:
            prog.start()
            state["task"] = prog.add_task("downloading model", total=total)
        prog.update(state["task"], completed=done, total=total)
        if total is not None and done >= total:
            prog.stop()

    return update
