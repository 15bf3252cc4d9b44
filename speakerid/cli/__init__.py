"""The ``speakerid`` command line: a thin layer over the library."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from .. import __version__
from . import copy_cmd, eval_cmd, manage_cmd, model_cmd, registry_cmd, serve_cmd
from .demo_cmd import demo
from .embed_cmd import embed
from .track_cmd import track
from .train_cmd import train


def _show_flags_as_flags() -> None:
    """Boolean flags take no value, so their help shows no type.

    typer's rich help (0.2x) prints every option's annotation type, flags included
    (``--append <bool>``, even ``--help <bool>``), although its plain help and click omit it
    for flags. The option declarations are right (``is_flag``); the display is fixed here.
    """
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_flags_hidden", False):
        return  # older typer: no such column; or already fixed

    def display_type_rich(self, ctx):
        if self.is_flag or self.count:
            return None
        return shown(self, ctx)

    display_type_rich._flags_hidden = True
    TyperOption.display_type_rich = display_type_rich


_show_flags_as_flags()

app = typer.Typer(
    name="speakerid",
    help="Speaker enrollment, identification and verification (ERes2NetV2).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"speakerid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Speaker enrollment, identification and verification (ERes2NetV2)."""


app.add_typer(model_cmd.app, name="model")
app.command("embed")(embed)
app.command("enroll")(registry_cmd.enroll)
app.command("enroll-dir")(registry_cmd.enroll_dir)
app.command("identify")(registry_cmd.identify)
app.command("verify")(registry_cmd.verify)
app.command("compare")(registry_cmd.compare)
app.command("track")(track)
app.command("list")(manage_cmd.list_speakers)
app.command("show")(manage_cmd.show)
app.command("remove")(manage_cmd.remove)
app.command("rename")(manage_cmd.rename)
app.command("import-embeddings")(manage_cmd.import_embeddings)
app.command("export")(manage_cmd.export)
app.command("import")(manage_cmd.import_backup)
app.command("info")(manage_cmd.info)
app.command("threshold")(manage_cmd.threshold)
app.add_typer(manage_cmd.index_app, name="index")
app.add_typer(copy_cmd.app, name="registry")
app.command("demo")(demo)
app.command("evaluate")(eval_cmd.evaluate)
app.command("calibrate")(eval_cmd.calibrate)
app.command("train")(train)
app.command("serve")(serve_cmd.serve)
app.add_typer(serve_cmd.keys_app, name="keys")


def main() -> None:
    """Console-script entry point."""
    level = os.environ.get("SPEAKERID_LOG", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(message)s")
    app()


__all__ = ["app", "main"]
