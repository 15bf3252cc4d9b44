"""The ``speakerid`` command line: a thin layer over the library."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated, Any

import typer

from .. import __version__


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

#: Every command, in help order: (name, module, attribute, a sub-app rather than a command).
#: Modules are imported only for the commands a process builds (see ``main``).
COMMANDS: list[tuple[str, str, str, bool]] = [
    ("model", "model_cmd", "app", True),
    ("embed", "embed_cmd", "embed", False),
    ("enroll", "registry_cmd", "enroll", False),
    ("enroll-dir", "registry_cmd", "enroll_dir", False),
    ("identify", "registry_cmd", "identify", False),
    ("verify", "registry_cmd", "verify", False),
    ("compare", "registry_cmd", "compare", False),
    ("track", "track_cmd", "track", False),
    ("listen", "listen_cmd", "listen", False),
    ("list", "manage_cmd", "list_speakers", False),
    ("show", "manage_cmd", "show", False),
    ("remove", "manage_cmd", "remove", False),
    ("rename", "manage_cmd", "rename", False),
    ("import-embeddings", "manage_cmd", "import_embeddings", False),
    ("export", "manage_cmd", "export", False),
    ("import", "manage_cmd", "import_backup", False),
    ("info", "manage_cmd", "info", False),
    ("threshold", "manage_cmd", "threshold", False),
    ("index", "manage_cmd", "index_app", True),
    ("registry", "copy_cmd", "app", True),
    ("demo", "demo_cmd", "demo", False),
    ("evaluate", "eval_cmd", "evaluate", False),
    ("calibrate", "eval_cmd", "calibrate", False),
    ("train", "train_cmd", "train", False),
    ("serve", "serve_cmd", "serve", False),
    ("keys", "serve_cmd", "keys_app", True),
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"speakerid {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Speaker enrollment, identification and verification (ERes2NetV2)."""


def build_app(only: str | None = None) -> typer.Typer:
    """The ``speakerid`` app with every command, or with only the command ``only``.

    Why: typer builds a parser (with a pydantic adapter per parameter) for every command it
    holds, and each command's module has imports of its own; a one-shot ``speakerid verify``
    needs one of ~25 commands, and building all of them cost ~0.2 s of its start-up.
    """
    app = typer.Typer(
        name="speakerid",
        help="Speaker enrollment, identification and verification (ERes2NetV2).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(_root)
    for name, module, attr, group in COMMANDS:
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(f".{module}", __name__), attr)
        if group:
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app (tests, ``typer.testing.CliRunner``), built once
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command_in(argv: list[str]) -> str | None:
    """The command a command line runs, when it names one (its first word)."""
    names = {name for name, *_ in COMMANDS}
    return argv[0] if argv and argv[0] in names else None


def main() -> None:
    """Console-script entry point."""
    level = os.environ.get("SPEAKERID_LOG", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(message)s")
    build_app(only=_command_in(sys.argv[1:]))(prog_name="speakerid")


__all__ = ["app", "build_app", "main"]
