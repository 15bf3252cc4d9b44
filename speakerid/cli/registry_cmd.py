"""Commands that embed audio: enroll, enroll-dir, identify, verify, compare.

Exit codes: 0 success; verify/compare 1 when rejected; identify 1 when any file is unknown;
2 for errors (bad input, unknown speaker, empty registry, model mismatch, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidInputError
from ..quality import MIN_SPEECH_SECONDS
from .common import (
    AsnormOpt,
    DbOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    ThresholdOpt,
    emit_json,
    handle_errors,
    open_service,
    plural,
    progress_bar,
    show_progress,
)

FilesArg = Annotated[list[Path], typer.Argument(help="Audio files (wav/flac/ogg/opus/mp3).")]


def _metadata(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    meta = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--meta expects KEY=VALUE, got {p!r}")
        meta[key.strip()] = value
    return meta


@handle_errors
def enroll(
    name: Annotated[str, typer.Argument(help="Speaker name (spaces and Unicode allowed).")],
    files: FilesArg,
    append: Annotated[bool, typer.Option("--append", help="Add to an existing speaker.")] = False,
    meta: Annotated[Optional[list[str]], typer.Option("--meta", help="KEY=VALUE metadata.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Enroll despite too little speech.")
    ] = False,
    vad: Annotated[bool, typer.Option("--vad", help="Trim silence before embedding.")] = False,
    min_speech: Annotated[
        float, typer.Option("--min-speech", help="Minimum net speech (s).")
    ] = MIN_SPEECH_SECONDS,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll a speaker from one or more recordings (all-or-nothing).

    \b
    Examples:
      speakerid enroll alice alice1.wav alice2.flac
      speakerid enroll alice alice3.mp3 --append --meta team=red
    """
    with (
        open_service(db, model, device, json_mode=json_out) as sid,
        progress_bar("embedding", len(files), show_progress(json_out)) as advance,
    ):
        res = sid.enroll(
            name,
            files,
            append=append,
            metadata=_metadata(meta),
            on_progress=advance,
            force=force,
            vad=vad,
            min_speech=min_speech,
        )
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    if json_out:
        emit_json(res.to_dict())
        return
    verb = "enrolled" if res.created else "updated"
    typer.echo(
        f"{verb} {res.speaker}: {res.added} new, {plural(res.utterances, 'utterance')} in total"
    )
    for s in res.skipped:
        typer.echo(f"skipped {s} (already enrolled)")


@handle_errors
def enroll_dir(
    directory: Annotated[Path, typer.Argument(help="One sub-folder of audio per speaker.")],
    append: Annotated[bool, typer.Option("--append", help="Add to existing speakers.")] = False,
    skip_errors: Annotated[
        bool, typer.Option("--skip-errors", help="Skip unreadable files instead of failing.")
    ] = False,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll every sub-folder of DIRECTORY as a speaker, in one transaction.

    \b
    Examples:
      speakerid enroll-dir people/
      speakerid enroll-dir people/ --append --skip-errors
    """
    total = sum(1 for _ in directory.rglob("*") if _.is_file()) if directory.is_dir() else 0
    with (
        open_service(db, model, device, json_mode=json_out) as sid,
        progress_bar("embedding", total, show_progress(json_out)) as advance,
    ):
        results, errors = sid.enroll_dir(
            directory, append=append, skip_errors=skip_errors, on_progress=advance
        )
    if json_out:
        emit_json({"speakers": [r.to_dict() for r in results], "errors": errors})
        return
    for r in results:
        typer.echo(
            f"{'enrolled' if r.created else 'updated'} {r.speaker}: {r.added} new, "
            f"{plural(r.utterances, 'utterance')} in total"
        )
    for e in errors:
        typer.echo(f"skipped: {e}", err=True)


@handle_errors
def identify(
    files: FilesArg,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Candidates to list.")] = 1,
    threshold: ThresholdOpt = None,
    asnorm: AsnormOpt = False,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Who is speaking? Open-set: below the threshold the answer is 'unknown'.

    \b
    Examples:
      speakerid identify unknown.wav other.ogg --top-k 3
      speakerid identify call.wav --json
    """
    with (
        open_service(db, model, device, json_mode=json_out) as sid,
        progress_bar("identifying", len(files), show_progress(json_out)) as advance,
    ):
        results = sid.identify_many(
            files, top_k=top_k, threshold=threshold, on_progress=advance, asnorm=asnorm
        )
    if json_out:
        emit_json([r.to_dict() for r in results])
    else:
        for r in results:
            others = ", ".join(f"{c.speaker} {c.score:.3f}" for c in r.candidates)
            answer = r.speaker if r.accepted else "unknown"
            typer.echo(f"{r.file}\t{answer}\t{r.score:.3f}\t[{others}]")
    if not all(r.accepted for r in results):
        raise typer.Exit(1)


@handle_errors
def verify(
    name: Annotated[str, typer.Argument(help="Claimed speaker.")],
    file: Annotated[Path, typer.Argument(help="Audio file.")],
    threshold: ThresholdOpt = None,
    asnorm: AsnormOpt = False,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Is this really NAME? Exit 0 when accepted, 1 when rejected, 2 on error.

    \b
    Examples:
      speakerid verify alice claim.wav
      speakerid verify alice claim.wav --threshold 0.5 --json
    """
    with open_service(db, model, device, json_mode=json_out) as sid:
        r = sid.verify(name, file, threshold=threshold, asnorm=asnorm)
    if json_out:
        emit_json(r.to_dict())
    else:
        verdict = "accepted" if r.accepted else "rejected"
        op = ">=" if r.accepted else "<"
        typer.echo(
            f"{verdict}: {r.file} vs {r.speaker}: score {r.score:.3f} {op} "
            f"threshold {r.threshold:.3f}"
        )
    if not r.accepted:
        raise typer.Exit(1)


@handle_errors
def compare(
    file1: Annotated[Path, typer.Argument(help="First audio file.")],
    file2: Annotated[Path, typer.Argument(help="Second audio file.")],
    threshold: ThresholdOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Same speaker in two files? Exit 0 when the score reaches the threshold, else 1.

    \b
    Example:
      speakerid compare a.wav b.wav
    """
    with open_service(db, model, device, json_mode=json_out) as sid:
        r = sid.compare(file1, file2, threshold=threshold)
    if json_out:
        emit_json(r.to_dict())
    else:
        verdict = "same speaker" if r.accepted else "different speakers"
        typer.echo(f"{verdict}: score {r.score:.3f} (threshold {r.threshold:.3f})")
    if not r.accepted:
        raise typer.Exit(1)
