"""``speakerid serve`` (the HTTP service) and ``speakerid keys create|list|revoke``."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    CompileOpt,
    DbOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    emit_json,
    handle_errors,
    open_service,
)

keys_app = typer.Typer(
    help="API keys of the HTTP service (stored hashed in the registry).", no_args_is_help=True
)


@handle_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8000,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    compile: CompileOpt = False,
    workers: Annotated[
        int, typer.Option("--workers", help="Processes, each with the model (cores shared).")
    ] = 1,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Serve a non-loopback address without keys (a proxy in front authenticates).",
        ),
    ] = False,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest request body, MiB.")
    ] = 25.0,
    max_audio_seconds: Annotated[
        float, typer.Option("--max-audio-seconds", help="Longest audio per file, seconds.")
    ] = 300.0,
    max_files: Annotated[int, typer.Option("--max-files", help="Most files per request.")] = 32,
    batch_max: Annotated[
        int, typer.Option("--batch-max", help="Most clips embedded in one batch.")
    ] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option("--batch-wait-ms", help="Wait for more requests before a batch.")
    ] = 2.0,
    embed_timeout: Annotated[
        float,
        typer.Option("--embed-timeout", help="Seconds a request waits for embeddings; then 503."),
    ] = 120.0,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency", help="Requests in the service at once (0: 2 per core; GPU: 2 batches)."
        ),
    ] = 0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            help="Open connections per process; beyond it requests get 503 at once.",
        ),
    ] = 64,
    max_streams: Annotated[
        int,
        typer.Option("--max-streams", help="Live streams (/v1/stream) open at once; more: 1013."),
    ] = 16,
    max_stream_seconds: Annotated[
        float,
        typer.Option("--max-stream-seconds", help="Longest live stream, seconds of audio."),
    ] = 3600.0,
    stream_idle_seconds: Annotated[
        float,
        typer.Option(
            "--stream-idle-seconds", help="Close a live stream that sends nothing this long."
        ),
    ] = 30.0,
    log_level: Annotated[
        str, typer.Option("--log-level", help="uvicorn log level (warning hides access logs).")
    ] = "info",
) -> None:
    """Serve the registry over HTTP (JSON API, web page at /, docs at /docs) until SIGTERM.

    With no API keys the server runs open, on a loopback address only, to requests that name
    it in their Host header; the first key closes it until it is restarted.

    \b
    Examples:
      speakerid serve
      speakerid serve --host 0.0.0.0 --port 8000 --workers 2
      speakerid serve --device cuda --precision bf16 --compile
    """
    import os

    from .. import config
    from ..server.runner import run
    from ..server.settings import ServerSettings

    if precision:  # like --compile: through the environment, so every worker process sees it
        os.environ[config.ENV_PRECISION] = config.check_precision(precision)

    settings = ServerSettings(
        db=str(db) if db else None,
        model=model,
        device=device,
        host=host,
        port=port,
        workers=workers,
        no_auth=no_auth,
        max_upload_mb=max_upload_mb,
        max_audio_seconds=max_audio_seconds,
        max_files=max_files,
        batch_max=batch_max,
        batch_wait_ms=batch_wait_ms,
        embed_timeout=embed_timeout,
        concurrency=concurrency,
        max_connections=max_connections,
        max_streams=max_streams,
        max_stream_seconds=max_stream_seconds,
        stream_idle_seconds=stream_idle_seconds,
    )
    run(settings, log_level=log_level)


ScopeOpt = Annotated[
    str,
    typer.Option(
        "--scope",
        help="read (identify, verify, ...), write (+ enroll, rename, "
        "remove) or admin (+ keys, thresholds).",
    ),
]


@keys_app.command("create")
@handle_errors
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scope: ScopeOpt = "read",
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a key and print its secret (shown once: only its hash is stored).

    \b
    Example:
      speakerid keys create frontdesk --scope read
    """
    from ..registry.keys import check_scope

    check_scope(scope)
    with open_service(db) as sid:
        info, secret = sid.api_keys(create=True).create(name, scope)
    if json_out:
        emit_json({"name": info.name, "scope": info.scope, "key": secret})
        return
    typer.echo(secret)
    typer.echo(
        f"created API key {info.name!r} (scope {info.scope}); the secret above is not stored "
        f"and cannot be shown again",
        err=True,
    )


@keys_app.command("list")
@handle_errors
def list_keys(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Keys: name, scope, creation time (never the secrets).

    \b
    Example:
      speakerid keys list --json
    """
    with open_service(db) as sid:
        rows = [k.to_dict() for k in sid.api_keys().list()]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no API keys (a server started on a loopback address now runs open)")
    for r in rows:
        typer.echo(f"{r['name']}\t{r['scope']}\tcreated {r['created']}")


@keys_app.command("revoke")
@handle_errors
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a key (running servers refuse it from the next request on; revoking the last
    key does not reopen a running server).

    \b
    Example:
      speakerid keys revoke frontdesk
    """
    with open_service(db) as sid:
        sid.api_keys().revoke(name)
    if json_out:
        emit_json({"revoked": name})
    else:
        typer.echo(f"revoked API key {name}")
