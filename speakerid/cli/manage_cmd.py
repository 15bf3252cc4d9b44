"""Commands that never load the model (and never import torch): list, show, remove, rename,
import-embeddings, export, import, index, info, threshold."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import server_url
from ..errors import InvalidInputError
from .common import (
    DbOpt,
    JsonOpt,
    ModelOpt,
    ServerOpt,
    emit_json,
    fail,
    handle_errors,
    open_service,
    plural,
    stdout_is_tty,
)

index_app = typer.Typer(
    help="Check or rebuild the search index (a cache of the database).", no_args_is_help=True
)


@handle_errors
def list_speakers(db: DbOpt = None, json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """Enrolled speakers.

    \b
    Examples:
      speakerid list
      speakerid list --json
    """
    with open_service(db, server=server_url(server)) as sid:
        rows = sid.list()
    if json_out:
        emit_json([{k: v for k, v in r.to_dict().items() if k != "metadata"} for r in rows])
        return
    if not rows:
        typer.echo("no speakers enrolled")
        return
    if not stdout_is_tty():  # scripts: name, utterances, created, updated (tab-separated)
        for r in rows:
            d = r.to_dict()
            typer.echo(f"{r.name}\t{r.utterances}\t{d['created']}\t{d['updated']}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, highlight=False)
    for header in ("Speaker", "Utterances", "Created (UTC)", "Updated (UTC)"):
        table.add_column(header, justify="right" if header == "Utterances" else "left")
    for r in rows:
        d = r.to_dict()
        table.add_row(r.name, str(r.utterances), d["created"], d["updated"])
    console = Console(highlight=False)
    console.print(table)
    total = sum(r.utterances for r in rows)
    console.print(f"{plural(len(rows), 'speaker')}, {plural(total, 'utterance')}")


@handle_errors
def show(
    name: Annotated[str, typer.Argument()],
    db: DbOpt = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """One speaker's utterances (sources, durations, hashes) and metadata.

    \b
    Example:
      speakerid show alice
    """
    with open_service(db, server=server_url(server)) as sid:
        info = sid.show(name).to_dict()
    if json_out:
        emit_json(info)
        return
    typer.echo(
        f"{info['name']}: {plural(info['utterances'], 'utterance')}, created {info['created']}, "
        f"updated {info['updated']}"
    )
    for k, v in (info.get("metadata") or {}).items():
        typer.echo(f"  {k} = {v}")
    for u in info["sources"]:
        dur = f"{u['duration']:.2f} s" if u["duration"] is not None else "-"
        typer.echo(f"  {u['source'] or '(imported)'}\t{dur}\t{(u['sha256'] or '')[:12]}")


@handle_errors
def remove(
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: DbOpt = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Delete a speaker and all its embeddings (database and index).

    \b
    Example:
      speakerid remove alice --yes
    """
    with open_service(db, server=server_url(server)) as sid:
        sid.show(name)  # unknown speaker: error before asking
        if not yes:
            if not sys.stdin.isatty():
                raise fail(f"refusing to remove {name!r} without --yes (not interactive)")
            typer.confirm(f"Remove speaker {name!r} and all its embeddings?", abort=True)
        count = sid.remove(name)
    if json_out:
        emit_json({"removed": name, "utterances": count})
    else:
        typer.echo(f"removed {name} ({plural(count, 'utterance')})")


@handle_errors
def rename(
    old: Annotated[str, typer.Argument()],
    new: Annotated[str, typer.Argument()],
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Rename a speaker.

    \b
    Example:
      speakerid rename alice "Alice Smith"
    """
    with open_service(db) as sid:
        sid.rename(old, new)
    if json_out:
        emit_json({"old": old, "new": new})
    else:
        typer.echo(f"renamed {old} -> {new}")


@handle_errors
def import_embeddings(
    files: Annotated[
        list[Path],
        typer.Argument(help=".npy files (one embedding each, or an N x dim matrix with --names)."),
    ],
    names: Annotated[
        Optional[Path], typer.Option("--names", help="Names file, one per row of the matrix.")
    ] = None,
    speaker: Annotated[
        Optional[str], typer.Option("--speaker", help="Assign every file to this speaker.")
    ] = None,
    append: Annotated[bool, typer.Option("--append", help="Add to existing speakers.")] = False,
    db: DbOpt = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="The model that made the vectors (name or checkpoint path): needed for bare "
            ".npy files such as 3D-Speaker infer_sv.py outputs; files written by speakerid "
            "embed -o carry theirs (NAME.npy.json).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Import embeddings computed elsewhere (3D-Speaker infer_sv.py .npy outputs or a matrix).

    Without --names/--speaker each file is one speaker named after the file stem. The
    embeddings must come from the registry's model: files written by speakerid embed -o or
    export carry their model (NAME.npy.json) and another model's are refused; bare .npy
    files need --model, the model that made them (it also binds a new registry).

    \b
    Examples:
      speakerid import-embeddings emb/*.npy
      speakerid import-embeddings out/*.npy --model eres2netv2
      speakerid import-embeddings matrix.npy --names names.txt --model eres2netv2
    """
    with open_service(db, model) as sid:
        results = sid.import_embedding_files(files, names, speaker, model, append=append)
    if json_out:
        emit_json([r.to_dict() for r in results])
    else:
        typer.echo(
            f"imported {plural(sum(r.added for r in results), 'embedding')} for "
            f"{plural(len(results), 'speaker')}"
        )


@handle_errors
def export(
    directory: Annotated[Path, typer.Argument(help="Output folder.")],
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Back up the registry losslessly (speakerid import DIR restores it).

    Writes embeddings.npy + names.txt (also readable by import-embeddings), voiceprints.npy and
    speakers.json (model binding, thresholds, metadata, times, sources, hashes, checksums).

    \b
    Example:
      speakerid export backup/
    """
    with open_service(db) as sid:
        summary = sid.export(directory)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(
            f"exported {plural(summary['speakers'], 'speaker')}, "
            f"{plural(summary['utterances'], 'embedding')} to {summary['directory']}"
        )


@handle_errors
def import_backup(
    directory: Annotated[Path, typer.Argument(help="A folder written by speakerid export.")],
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Keep speakers already in the registry.")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite speakers already in the registry.")
    ] = False,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Restore a backup (all or nothing; offline: no model is loaded or downloaded).

    A new registry is bound to the backup's model and gets its thresholds; a registry bound to
    another model refuses it. Speakers that already exist refuse the import unless
    --skip-existing or --replace.

    \b
    Examples:
      speakerid import backup/
      speakerid import backup/ --db other.db --skip-existing
    """
    if skip_existing and replace:
        raise InvalidInputError("--skip-existing and --replace exclude each other")
    mode = "skip" if skip_existing else "replace" if replace else "error"
    with open_service(db) as sid:
        res = sid.restore(directory, on_conflict=mode)
    if json_out:
        emit_json(res.to_dict())
        return
    typer.echo(
        f"imported {plural(res.speakers, 'speaker')}, {plural(res.utterances, 'embedding')} "
        f"(model {res.model}) from {res.directory}"
    )
    if res.skipped:
        kept = plural(len(res.skipped), "existing speaker")
        typer.echo(f"kept {kept}: {', '.join(res.skipped)}")
    if res.replaced:
        typer.echo(f"replaced {plural(len(res.replaced), 'speaker')}: {', '.join(res.replaced)}")
    if not res.thresholds_restored:
        typer.echo("kept the registry's thresholds (it already had speakers)")


def _report(rep, json_out: bool) -> None:
    if json_out:
        emit_json(rep.to_dict())
    else:
        state = "ok" if rep.ok else "PROBLEMS"
        typer.echo(
            f"{state}: {rep.kind} index, {rep.entries} entries, {rep.speakers} speakers, "
            f"generation {rep.generation}{' (rebuilt)' if rep.rebuilt else ''}"
        )
        for p in rep.problems:
            typer.echo(f"  - {p}")
    if not rep.ok:
        raise typer.Exit(1)


@index_app.command("check")
@handle_errors
def index_check(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Verify the index against the database (exit 1 when it is missing or stale).

    \b
    Example:
      speakerid index check
    """
    with open_service(db) as sid:
        _report(sid.check_index(), json_out)


@index_app.command("rebuild")
@handle_errors
def index_rebuild(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Rebuild the index from the database.

    \b
    Example:
      speakerid index rebuild
    """
    with open_service(db) as sid:
        _report(sid.rebuild_index(), json_out)


@handle_errors
def info(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Registry path, bound model, counts, threshold and index state.

    \b
    Examples:
      speakerid info
      speakerid info --db voices.db --json
    """
    with open_service(db) as sid:
        data = sid.info().to_dict()
    if json_out:
        emit_json(data)
        return
    for k, v in data.items():
        typer.echo(f"{k:<17} {v}")


@handle_errors
def threshold(
    value: Annotated[Optional[float], typer.Argument(help="New registry threshold.")] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Forget the stored value: back to the model card's.")
    ] = False,
    db: DbOpt = None,
    model: ModelOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the effective threshold, store VALUE as the registry's, or --reset it.

    \b
    Examples:
      speakerid threshold
      speakerid threshold 0.42
      speakerid threshold --reset
    """
    if reset and value is not None:
        raise InvalidInputError("give a threshold value or --reset, not both")
    with open_service(db, model) as sid:
        if value is not None:
            sid.set_threshold(value, "set by user")
        elif reset:
            sid.set_threshold(None)
        t, source = sid.threshold()
    if json_out:
        emit_json({"threshold": t, "source": source})
    else:
        typer.echo(f"{t} ({source})")
