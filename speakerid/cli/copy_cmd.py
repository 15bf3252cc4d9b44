"""``speakerid registry copy SRC DST``: move a registry between databases (never loads a model)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonOpt, emit_json, handle_errors

app = typer.Typer(
    help="Whole-registry operations across databases (SQLite <-> PostgreSQL).",
    no_args_is_help=True,
)

LocationArg = Annotated[
    str,
    typer.Argument(
        help="A SQLite file (or sqlite:///PATH) or postgresql+psycopg://user:pass@host/db."
    ),
]


@app.command("copy")
@handle_errors
def copy(source: LocationArg, destination: LocationArg, json_out: JsonOpt = False) -> None:
    """Copy every speaker, recording and setting of SOURCE into a new or empty DESTINATION,
    verified by counts and a checksum of all vectors before it is committed.

    \b
    Example:
      speakerid registry copy registry.db postgresql://speakerid@db.example/voices
    """
    from ..service.facade import copy_registry

    res = copy_registry(source, destination)
    if json_out:
        emit_json(res.to_dict())
        return
    typer.echo(
        f"copied {res.speakers} speakers ({res.utterances} utterances) from {res.source} "
        f"({res.source_backend}) to {res.destination} ({res.destination_backend}); "
        f"checksum {res.checksum[:16]} verified"
    )
