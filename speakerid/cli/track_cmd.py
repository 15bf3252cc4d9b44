"""``speakerid track``: who speaks when in recordings, named by the registry.

Exit codes: 0 every file tracked; 2 for errors (bad arguments, or a file that could not be
read: its error is reported and the other files are still tracked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import server_url
from ..errors import InvalidInputError
from ..results import FileError, TrackResult
from .common import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    ServerOpt,
    ThresholdOpt,
    emit_json,
    handle_errors,
    open_service,
    progress_bar,
    show_progress,
)
from .registry_cmd import FailFastOpt, InputsArg, _inputs


def _pairs(items: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        voice, sep, name = item.partition("=")
        if not sep or not voice.strip() or not name.strip():
            raise InvalidInputError(f"--enroll-unknown expects VOICE=NAME, got {item!r}")
        out.append((voice.strip(), name.strip()))
    return out


def _plot_path(base: Path, source: str, several: bool) -> Path:
    if not several:
        return base
    return base.with_name(f"{base.stem}-{Path(source).stem}{base.suffix or '.png'}")


def _print_text(r: TrackResult) -> None:
    voices = ", ".join(f"{s.speaker} {s.seconds:.1f} s" for s in r.speakers) or "no speech"
    typer.echo(f"{r.file}: {r.duration:.1f} s, {len(r.speakers)} speakers: {voices}")
    for s in r.segments:
        score = "" if s.score is None else f"\t{s.score:.3f}"
        typer.echo(f"  {s.start:9.2f} {s.end:9.2f}  {s.speaker}{score}")


@handle_errors
def track(
    files: InputsArg,
    rttm: Annotated[
        Optional[Path], typer.Option("--rttm", help="Write all segments to this RTTM file.")
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Timeline PNG (several files: one per file, -stem added)."),
    ] = None,
    threshold: ThresholdOpt = None,
    num_speakers: Annotated[
        Optional[int], typer.Option("--num-speakers", help="Exact number of speakers.")
    ] = None,
    max_speakers: Annotated[
        Optional[int], typer.Option("--max-speakers", help="At most this many speakers.")
    ] = None,
    enroll_unknown: Annotated[
        Optional[list[str]],
        typer.Option(
            "--enroll-unknown",
            help="VOICE=NAME: enroll an unknown voice (e.g. unknown-2=Carol); one FILE only.",
        ),
    ] = None,
    append: Annotated[
        bool, typer.Option("--append", help="--enroll-unknown: add to an existing speaker.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="--enroll-unknown: skip the quality refusals.")
    ] = False,
    fail_fast: FailFastOpt = False,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    server: ServerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Who speaks when? Enrolled voices by name, the others unknown-1, unknown-2, ...

    Without a registry (or with another model than the registry's) every voice is unknown.

    \b
    Examples:
      speakerid track meeting.wav --rttm meeting.rttm --plot meeting.png
      speakerid track meeting.wav --enroll-unknown unknown-2=Carol
    """
    pairs = _pairs(enroll_unknown)
    if pairs and (len(files) != 1 or files[0].is_dir() or str(files[0]) == "-"):
        raise InvalidInputError("--enroll-unknown needs exactly one FILE (not a folder or -)")
    server = server_url(server)
    if pairs and server:
        raise InvalidInputError(
            "--enroll-unknown works on a local registry only (not with --server): track "
            "there, then enroll the voice's speech with speakerid enroll --server"
        )
    sources = _inputs(files)
    for out in (rttm,) if rttm else ():  # refused before any work, not after it
        if out.is_dir() or not out.parent.is_dir():
            raise InvalidInputError(f"cannot write {out}: no such folder or a folder there")
    from ..audio.stream import probe_duration
    from ..tracking.segments import rttm_lines

    durations = [probe_duration(src) for src in sources]
    total = 2 * sum(durations) if all(d is not None for d in durations) else None
    with open_service(db, model, device, json_mode=json_out, server=server) as sid:
        with progress_bar("tracking", total, show_progress(json_out)) as advance:
            results = sid.track_many(
                sources,
                threshold=threshold,
                num_speakers=num_speakers,
                max_speakers=max_speakers,
                on_progress=advance,
                fail_fast=fail_fast,
            )
        ok = [r for r in results if not isinstance(r, FileError)]
        if rttm:
            text = "".join(rttm_lines(Path(r.file).stem, r.segments) for r in ok)
            try:
                rttm.write_text(text)
            except OSError as exc:
                raise InvalidInputError(f"cannot write {rttm}: {exc.strerror or exc}") from None
        if plot:
            from ..tracking.plot import write_timeline

            for r in ok:
                write_timeline(r, _plot_path(plot, r.file, len(sources) > 1))
        if not json_out:
            for r in results:
                if isinstance(r, FileError):
                    typer.echo(f"error: {r.error}", err=True)
                else:
                    _print_text(r)
        enrolled = []  # after the answer is out: a refused voice leaves it printed
        for voice, name in pairs if ok else []:
            e = sid.enroll_voice(ok[0], sources[0], voice, name, append=append, force=force)
            enrolled.append(e)
            for w in e.warnings:
                typer.echo(f"warning: {w}", err=True)
            if not json_out:
                verb = "enrolled" if e.created else "updated"
                typer.echo(
                    f"{verb} {e.speaker} from {voice}: {e.added} new, "
                    f"{e.utterances} utterances in total"
                )
    if json_out:
        rows = [r.to_dict() for r in results]
        if enrolled:
            rows[0]["enrolled_voices"] = [e.to_dict() for e in enrolled]
        emit_json(rows)
    if len(ok) < len(results):
        raise typer.Exit(2)
