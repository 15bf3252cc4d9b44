"""The ``speakerid`` command line: a thin layer over the library."""

from __future__ import annotations

import logging
import os

import typer

from . import eval_cmd, manage_cmd, model_cmd, registry_cmd
from .demo_cmd import demo
from .embed_cmd import embed
from .track_cmd import track
from .train_cmd import train

app = typer.Typer(
    name="speakerid",
    help="Speaker enrollment, identification and verification (ERes2NetV2).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
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
app.command("demo")(demo)
app.command("evaluate")(eval_cmd.evaluate)
app.command("calibrate")(eval_cmd.calibrate)
app.command("train")(train)


def main() -> None:
    """Console-script entry point."""
    level = os.environ.get("SPEAKERID_LOG", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(message)s")
    app()


__all__ = ["app", "main"]
