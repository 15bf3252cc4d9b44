"""The ``speakerid`` command line: a thin layer over the library."""

from __future__ import annotations

import logging
import os

import typer

from . import model_cmd
from .embed_cmd import embed

app = typer.Typer(
    name="speakerid",
    help="Speaker enrollment, identification and verification (ERes2NetV2).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(model_cmd.app, name="model")
app.command("embed")(embed)


def main() -> None:
    """Console-script entry point."""
    level = os.environ.get("SPEAKERID_LOG", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(message)s")
    app()


__all__ = ["app", "main"]
