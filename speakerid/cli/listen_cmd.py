"""``speakerid listen``: who is speaking *now*, from the microphone, a file or stdin.

The command only translates: the live stream (``SpeakerID.stream``, or ``Client.stream`` with
``--server``) decides every name and time; this module feeds it chunks (``listen_input``) and
prints its events. Ctrl-C ends the input; the stream is then closed as at the end of a file, so
the turn in progress still gets its final segment. Exit codes: 0 (also after Ctrl-C), 2 for
errors (one line), 130 for a second Ctrl-C while the stream closes.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Annotated, Any, Optional

import typer

from ..config import server_url
from ..errors import InvalidInputError
from .common import (
    DbOpt,
    DeviceOpt,
    ModelOpt,
    ServerOpt,
    ThresholdOpt,
    handle_errors,
    open_service,
    plural,
    show_progress,
    stdout_is_tty,
)

#: The RTTM label of a final segment with too little speech to be named (``speaker`` null in
#: JSON). Not a voice: unlike ``unknown-1``, ``unknown-2``, ... it may hold several people.
UNNAMED = "unknown"


def segment_line(ev: Any) -> str:
    """A final segment as ``track`` prints one: start, end, speaker, tab, score."""
    score = "" if ev.score is None else f"\t{ev.score:.3f}"
    return f"{ev.start:9.2f} {ev.end:9.2f}  {ev.speaker or UNNAMED}{score}"


class _LiveLine:
    """The line a terminal shows under the segments: who is speaking now, how sure, and the
    stream's time. rich re-renders it several times a second, so the time moves in silence."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.turn: Any = None  # the last partial of the turn in progress

    def __rich__(self) -> Any:
        from rich.text import Text

        line = Text()
        line.append(f"{self.source.seconds:8.1f} s  ", style="dim")
        turn = self.turn
        if turn is None:
            return line.append("—  (no one speaking)", style="dim")
        if turn.speaker is None:
            return line.append("…  (listening)", style="dim")
        line.append(turn.speaker, style="bold green" if turn.enrolled else "bold yellow")
        if turn.score is not None:
            line.append(f"  {turn.score:.3f}")
        return line.append(f"  since {turn.start:.1f} s", style="dim")


class _Output:
    """Events to stdout (--json lines, a live line on a terminal, else final segments as
    plain lines) and final segments to ``--rttm``, each written and flushed as it comes."""

    def __init__(self, json_mode: bool, rttm: Path | None, source: Any) -> None:
        self.json_mode = json_mode
        self.rttm_path = rttm
        self.source = source
        self.rttm: IO[str] | None = None
        self.segments = 0
        self.live: Any = None
        self.line: _LiveLine | None = None
        self.broken = False  # stdout was closed by its reader (e.g. | head)

    @contextmanager
    def opened(self) -> Iterator[_Output]:
        live = None
        if not self.json_mode and stdout_is_tty():
            from rich.console import Console
            from rich.live import Live

            self.line = _LiveLine(self.source)
            live = self.live = Live(
                self.line, console=Console(), refresh_per_second=8, transient=True
            )
            live.start()
        try:
            yield self
        finally:
            if live is not None:
                live.stop()
            if self.rttm is not None:
                self.rttm.close()

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self.broken = True
            self.source.stop.set()  # nobody reads on: end the stream as Ctrl-C would

    def _open_rttm(self) -> None:
        if self.rttm_path is None or self.rttm is not None:
            return
        try:
            self.rttm = open(self.rttm_path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write {self.rttm_path}: {exc.strerror or exc}"
            ) from None

    def emit(self, events: Iterable[Any]) -> None:
        from ..tracking.segments import rttm_lines

        for ev in events:
            if ev.type == "ready":
                self._open_rttm()
            if self.json_mode:
                self._write(json.dumps(ev.to_dict(), ensure_ascii=False))
            elif ev.type == "partial":
                if self.line is not None:
                    self.line.turn = ev
            elif ev.type == "segment":
                if self.live is not None:
                    self.line.turn = None
                    self.live.console.print(segment_line(ev), markup=False, highlight=False)
                else:
                    self._write(segment_line(ev))
            if ev.type == "segment":
                self.segments += 1
                if self.rttm is not None:
                    named = replace(ev, speaker=ev.speaker or UNNAMED)
                    self.rttm.write(rttm_lines(self.source.uri, [named]))
                    self.rttm.flush()


@contextmanager
def _ctrl_c_ends(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C ends the input (the stream then closes and gives its last segments);
    a second one interrupts at once (exit 130)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (an embedding program): its own rules apply
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _source(input_: str | None, sample_rate: int | None, fast: bool, stop: threading.Event):
    from . import listen_input

    if sample_rate is not None and input_ in (None, "-"):
        from ..service.live import check_rate  # the stream's own rule, before any model loads

        check_rate(sample_rate)
    if input_ is None:
        if fast:
            raise InvalidInputError("--fast applies to --input FILE or --input - only")
        return listen_input.microphone_source(sample_rate, stop)
    if input_ == "-":
        return listen_input.stdin_source(sample_rate or 16000, stop, fast)
    if sample_rate is not None:
        raise InvalidInputError(
            "--sample-rate applies to --input - and the microphone (a file carries its own)"
        )
    return listen_input.file_source(input_, stop, fast)


@handle_errors
def listen(
    input_: Annotated[
        Optional[str],
        typer.Option(
            "--input",
            "-i",
            metavar="FILE|-",
            help="An audio file, or - for raw little-endian int16 mono PCM on stdin "
            "(default: the microphone).",
        ),
    ] = None,
    sample_rate: Annotated[
        Optional[int],
        typer.Option(
            "--sample-rate",
            help="Rate of the PCM on stdin (default 16000) or of the microphone (default: "
            "its own).",
        ),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option("--fast", help="Feed --input as fast as possible, not at real time."),
    ] = False,
    duration: Annotated[
        Optional[float],
        typer.Option(
            "--duration",
            metavar="SECONDS",
            help="Stop after this many seconds of audio (default: the end of --input; the "
            "microphone: Ctrl-C).",
        ),
    ] = None,
    rttm: Annotated[
        Optional[Path],
        typer.Option("--rttm", help="Write the final segments to this RTTM file as they come."),
    ] = None,
    threshold: ThresholdOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    server: ServerOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON event per line on stdout, as they come.")
    ] = False,
) -> None:
    """Who is speaking now? Names voices live, from the microphone until Ctrl-C.

    A terminal shows who speaks now (score, time) and each turn when it ends.

    --json prints every event (ready, partial, segment) as one line as it comes.

    \b
    Examples:
      speakerid listen
      speakerid listen --input meeting.wav --rttm meeting.rttm
      speakerid listen --input call.m4a --fast --json
      speakerid listen --input - --sample-rate 8000 < call.pcm
      speakerid listen --server http://10.0.0.5:8000
    """
    server = server_url(server)
    stop = threading.Event()
    source = _source(input_, sample_rate, fast, stop)
    source.set_duration(duration)
    out = _Output(json_out, rttm, source)
    if show_progress(json_out):
        typer.echo(f"listening to {source.description}; Ctrl-C to stop", err=True)
    with open_service(db, model, device, json_mode=json_out, server=server) as sid:
        with out.opened():
            if server:
                events = sid.stream(source.chunks(), sample_rate=source.rate, threshold=threshold)
                with _ctrl_c_ends(stop):
                    for ev in events:
                        out.emit([ev])
            else:
                stream = sid.stream(threshold=threshold, sample_rate=source.rate)
                out.emit(stream.start())
                with _ctrl_c_ends(stop):
                    for chunk in source.chunks():
                        out.emit(stream.feed(chunk))
                    out.emit(stream.close())
    if source.error is not None:
        raise source.error
    if show_progress(json_out):
        done = plural(out.segments, "segment")
        typer.echo(f"listened to {source.seconds:.1f} s: {done}", err=True)


__all__ = ["listen", "segment_line"]
