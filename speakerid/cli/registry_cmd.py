"""Commands that embed audio: enroll, enroll-dir, identify, verify, compare.

Exit codes: 0 success; verify/compare 1 when rejected (a probe without enough speech is rejected
with its reason); identify 1 when any file is unknown; 2 for errors (bad input, unknown speaker,
empty registry, model mismatch, ...). identify and verify answer every file they can: a bad file
gets its own error (JSON ``{"file", "error"}``, or an ``error:`` line on stderr) and the command
exits 2 after answering the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..audio.quality import MIN_SPEECH_SECONDS
from ..config import server_url
from ..errors import InvalidInputError, SpeakerNotFoundError
from ..results import EnrollResult, FileError
from .common import (
    AsnormOpt,
    BackendOpt,
    CompileOpt,
    DbOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    ServerOpt,
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
InputsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Audio files (wav/flac/mp3/ogg/opus/m4a/webm/...), folders (their audio files, "
        "recursively) or - for standard input."
    ),
]
FailFastOpt = Annotated[
    bool, typer.Option("--fail-fast", help="Stop at the first bad file (error, exit 2).")
]


def _inputs(files: list[Path]) -> list:
    """Folders → their audio files, ``-`` → the bytes of standard input."""
    from ..audio.decode import expand_sources

    return expand_sources(files, lambda: typer.get_binary_stream("stdin").read())


def _service(db, model, device, server, backend, precision, json_out: bool):
    """The service of a command that embeds: in-process, or the server of ``--server`` (else
    ``$SPEAKERID_SERVER``); progress shown unless ``--json``."""
    return open_service(
        db,
        model,
        device,
        json_mode=json_out,
        server=server_url(server),
        backend=backend,
        precision=precision,
    )


def _warn(results: list[EnrollResult]) -> None:
    for w in (w for r in results for w in r.warnings):
        typer.echo(f"warning: {w}", err=True)


def _echo_enrolled(r: EnrollResult, verb: str) -> None:
    """``VERB NAME: N new, M utterances in total`` and a line per skipped file."""
    typer.echo(f"{verb} {r.speaker}: {r.added} new, {plural(r.utterances, 'utterance')} in total")
    for s in r.skipped:
        typer.echo(f"skipped {s} (already enrolled)")


def _exit_for(results: list) -> None:
    """Exit 2 when any file failed, else 1 when any answered file was not accepted."""
    answered = [r for r in results if not isinstance(r, FileError)]
    if len(answered) < len(results):
        raise typer.Exit(2)
    if not all(r.accepted for r in answered):
        raise typer.Exit(1)


def _report_error(r) -> bool:
    """Print a per-file error on stderr (text mode); True if ``r`` was one."""
    if isinstance(r, FileError):
        typer.echo(f"error: {r.error}", err=True)
        return True
    return False


ForceOpt = Annotated[bool, typer.Option("--force", help="Enroll despite too little speech.")]
VadOpt = Annotated[bool, typer.Option("--vad", help="Trim silence before embedding.")]
MinSpeechOpt = Annotated[
    float, typer.Option("--min-speech", help="Minimum net speech (s); 0 disables the check.")
]


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
    force: ForceOpt = False,
    vad: VadOpt = False,
    min_speech: MinSpeechOpt = MIN_SPEECH_SECONDS,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    server: ServerOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll a speaker from one or more recordings (all-or-nothing).

    \b
    Examples:
      speakerid enroll alice alice1.wav alice2.flac
      speakerid enroll alice alice3.mp3 --append --meta team=red
    """
    with (
        _service(db, model, device, server, backend, precision, json_out) as sid,
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
    _warn([res])
    if json_out:
        emit_json(res.to_dict())
        return
    _echo_enrolled(res, "enrolled" if res.created else "updated")


@handle_errors
def enroll_dir(
    directory: Annotated[Path, typer.Argument(help="One sub-folder of audio per speaker.")],
    append: Annotated[bool, typer.Option("--append", help="Add to existing speakers.")] = False,
    skip_errors: Annotated[
        bool,
        typer.Option(
            "--skip-errors", help="Skip unreadable or refused files (reported) instead of failing."
        ),
    ] = False,
    force: ForceOpt = False,
    vad: VadOpt = False,
    min_speech: MinSpeechOpt = MIN_SPEECH_SECONDS,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll every sub-folder of DIRECTORY as a speaker, in one transaction.

    Same checks as enroll; files already enrolled are skipped without being embedded again.

    \b
    Examples:
      speakerid enroll-dir people/
      speakerid enroll-dir people/ --append --skip-errors
    """
    total = sum(1 for _ in directory.rglob("*") if _.is_file()) if directory.is_dir() else 0
    with (
        open_service(
            db, model, device, json_mode=json_out, backend=backend, precision=precision
        ) as sid,
        progress_bar("embedding", total, show_progress(json_out)) as advance,
    ):
        results, errors = sid.enroll_dir(
            directory,
            append=append,
            skip_errors=skip_errors,
            on_progress=advance,
            force=force,
            vad=vad,
            min_speech=min_speech,
        )
    _warn(results)
    if json_out:
        emit_json({"speakers": [r.to_dict() for r in results], "errors": errors})
        return
    for r in results:
        _echo_enrolled(r, "enrolled" if r.created else "updated" if r.added else "unchanged")
    for e in errors:
        typer.echo(f"skipped: {e}", err=True)


@handle_errors
def identify(
    files: InputsArg,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Candidates to list.")] = 1,
    threshold: ThresholdOpt = None,
    asnorm: AsnormOpt = False,
    fail_fast: FailFastOpt = False,
    min_speech: MinSpeechOpt = MIN_SPEECH_SECONDS,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    server: ServerOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Who is speaking? Open-set: below the threshold, or without speech, 'unknown'.

    Exit 0 when every file is identified, 1 when any is unknown, 2 when any file failed.

    \b
    Examples:
      speakerid identify unknown.wav other.ogg --top-k 3
      speakerid identify recordings/ --json
      speakerid identify - < call.wav
    """
    sources = _inputs(files)
    with (
        _service(db, model, device, server, backend, precision, json_out) as sid,
        progress_bar("identifying", len(sources), show_progress(json_out)) as advance,
    ):
        results = sid.identify_many(
            sources,
            top_k=top_k,
            threshold=threshold,
            on_progress=advance,
            asnorm=asnorm,
            fail_fast=fail_fast,
            min_speech=min_speech,
        )
    if json_out:
        emit_json([r.to_dict() for r in results])
    else:
        for r in results:
            if _report_error(r):
                continue
            if r.reason:
                typer.echo(f"{r.file}\tunknown\t({r.reason})")
                continue
            others = ", ".join(f"{c.speaker} {c.score:.3f}" for c in r.candidates)
            answer = r.speaker if r.accepted else "unknown"
            typer.echo(f"{r.file}\t{answer}\t{r.score:.3f}\t[{others}]")
    _exit_for(results)


@handle_errors
def verify(
    name: Annotated[str, typer.Argument(help="Claimed speaker.")],
    files: InputsArg,
    threshold: ThresholdOpt = None,
    asnorm: AsnormOpt = False,
    fail_fast: FailFastOpt = False,
    min_speech: MinSpeechOpt = MIN_SPEECH_SECONDS,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    server: ServerOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Is this really NAME? Exit 0 when accepted, 1 when rejected, 2 on error.

    One file gives one JSON object; several files (or a folder) an array, one entry per file,
    and exit 2 if any file failed, else 1 if any was rejected.

    \b
    Examples:
      speakerid verify alice claim.wav
      speakerid verify alice claim1.wav claim2.wav --threshold 0.5 --json
    """
    single = len(files) == 1 and not files[0].is_dir()
    sources = _inputs(files)
    with (
        _service(db, model, device, server, backend, precision, json_out) as sid,
        progress_bar("verifying", len(sources), show_progress(json_out) and not single) as adv,
    ):
        try:
            results = sid.verify_many(
                name,
                sources,
                threshold=threshold,
                asnorm=asnorm,
                on_progress=adv,
                fail_fast=fail_fast or single,  # one file: its error is the command's error
                min_speech=min_speech,
            )
        except SpeakerNotFoundError as exc:
            if Path(name).is_file():  # `verify claim.wav alice`: the name goes first
                raise SpeakerNotFoundError(
                    f"{exc}; {name!r} is a file: the speaker name comes first, then the audio"
                ) from None
            raise
    if json_out:
        emit_json(results[0].to_dict() if single else [r.to_dict() for r in results])
    else:
        for r in results:
            if _report_error(r):
                continue
            if r.reason:
                typer.echo(f"rejected: {r.file} vs {r.speaker}: {r.reason}")
                continue
            verdict = "accepted" if r.accepted else "rejected"
            op = ">=" if r.accepted else "<"
            typer.echo(
                f"{verdict}: {r.file} vs {r.speaker}: score {r.score:.3f} {op} "
                f"threshold {r.threshold:.3f}"
            )
    _exit_for(results)


@handle_errors
def compare(
    file1: Annotated[Path, typer.Argument(help="First audio file.")],
    file2: Annotated[Path, typer.Argument(help="Second audio file.")],
    threshold: ThresholdOpt = None,
    min_speech: MinSpeechOpt = MIN_SPEECH_SECONDS,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    server: ServerOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Same speaker in two files? Exit 0 when the score reaches the threshold, else 1.

    \b
    Example:
      speakerid compare a.wav b.wav
    """
    with _service(db, model, device, server, backend, precision, json_out) as sid:
        r = sid.compare(file1, file2, threshold=threshold, min_speech=min_speech)
    if json_out:
        emit_json(r.to_dict())
    elif r.reason:
        typer.echo(f"rejected: {r.reason}")
    else:
        verdict = "same speaker" if r.accepted else "different speakers"
        typer.echo(f"{verdict}: score {r.score:.3f} (threshold {r.threshold:.3f})")
    if not r.accepted:
        raise typer.Exit(1)
