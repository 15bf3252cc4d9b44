"""Live tracking: who is speaking *now*, from 16 kHz audio that arrives in pieces.

    Silero VAD (streamed, ``vad.VadStream``)  ->  turns (a pause or a change of voice ends one)
    ->  every ``STEP`` s: the turn's last ``RECENT`` s embedded and identified  ->  "partial"
    ->  when a turn ends: the turn's audio embedded and identified as ``identify`` would  ->
    "segment"

A turn opens when the VAD hears speech and ends after ``TURN_PAUSE`` s without it, when a
different voice takes over inside continuous speech, or after ``MAX_TURN`` s (then a new turn
of the same voice goes on). A change of voice is found from the partials' own embeddings: the
turn keeps the mean of its earlier, settled clips as its reference, and two clips in a row that
score below ``CHANGE_COS`` against it end the turn where the new voice began (the longest pause
inside the first such clip, else its middle). Nothing is computed that a partial does not
already need, except the one embedding of the new turn's first clip after a change.

Final segments are named by exactly the rule of ``identify`` on that stretch of audio: the same
speech gate (``MIN_SPEECH_SECONDS`` of speech, else no name), the same embedding of the whole
stretch and the same open-set search at the threshold. Voices the registry does not know are
``unknown-1``, ``unknown-2``, ... in order of appearance: a segment joins the unknown voice whose
mean embedding it matches at the threshold, else it starts a new one. State is bounded: the
audio of the open turn (at most ``MAX_TURN`` s), its per-window speech probabilities and at most
``MAX_VOICES`` unknown voices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..audio.decode import SAMPLE_RATE, AudioClip
from ..audio.gates import probe_rejection
from ..audio.quality import MIN_SPEECH_SECONDS
from ..audio.vad import MIN_SILENCE_MS, NEG_THRESHOLD, SPEECH_PAD_MS, THRESHOLD, WINDOW, VadStream
from ..results import TurnEvent

log = logging.getLogger("speakerid")

#: Seconds of stream audio between two partials of one turn.
STEP = 0.5
#: Seconds of the turn behind each partial (and each change-of-voice check).
RECENT = 2.0
#: Silence that ends a turn (the annotation convention of the bench conversations: shorter
#: pauses belong to the turn).
TURN_PAUSE = 0.5
#: Longest turn: its audio is all the stream holds; a longer monologue goes on in a new turn.
MAX_TURN = 30.0
#: A partial clip scoring below this cosine against its turn's settled clips may be another
#: voice (two in a row end the turn). Chosen on the dev conversations (bench/live.py --split dev).
CHANGE_COS = 0.25
#: Lead over the runner-up a name needs (0: ``identify``'s rule, the threshold alone).
MARGIN = 0.0
#: Unknown voices remembered per stream (the oldest are forgotten beyond this).
MAX_VOICES = 64

Embed = Callable[[np.ndarray], np.ndarray]  # 16 kHz samples -> unit embedding
#: unit rows -> IdentifyResult per row, or None while the registry has nobody enrolled
Identify = Callable[[np.ndarray], Sequence | None]

_PAD = SPEECH_PAD_MS * SAMPLE_RATE // 1000
_MIN_SILENCE = MIN_SILENCE_MS * SAMPLE_RATE // 1000


@dataclass
class _Clip:
    """One partial's clip ``[a, b)`` and its embedding; ``odd``: it failed the change check."""

    a: int
    b: int
    vector: np.ndarray
    odd: bool = False


@dataclass
class _Turn:
    start: int
    last_speech: int
    next_step: int
    speech: int = 0  # samples the VAD counted as speech
    clips: list[_Clip] = field(default_factory=list)  # not yet settled into the reference
    ref: np.ndarray | None = None  # sum of settled clips' embeddings
    suspect: _Clip | None = None  # the first clip of a possible change of voice


class UnknownVoices:
    """Voices of one stream that the registry does not know: ``unknown-1``, ``unknown-2``, ...
    Each keeps the sum of its segments' embeddings; a segment joins the best voice whose mean
    it matches at ``threshold``, else it is a new voice."""

    def __init__(self, threshold: float, limit: int = MAX_VOICES) -> None:
        self.threshold = threshold
        self.limit = limit
        self.count = 0
        self._sums: dict[str, np.ndarray] = {}

    def match(self, vector: np.ndarray) -> str | None:
        """The voice ``vector`` matches (None: a new voice)."""
        best, name = self.threshold, None
        for label, total in self._sums.items():
            score = float(vector @ total) / max(float(np.linalg.norm(total)), 1e-12)
            if score >= best:
                best, name = score, label
        return name

    def provisional(self, vector: np.ndarray) -> str:
        """The label ``vector`` would get now (a partial's answer; nothing is stored)."""
        return self.match(vector) or f"unknown-{self.count + 1}"

    def add(self, vector: np.ndarray) -> str:
        """The label of a final segment's voice, remembered."""
        label = self.match(vector)
        if label is None:
            self.count += 1
            label = f"unknown-{self.count}"
            if len(self._sums) >= self.limit:
                self._sums.pop(next(iter(self._sums)))
            self._sums[label] = np.zeros_like(vector, dtype=np.float64)
        self._sums[label] = self._sums[label] + vector
        return label


class LiveTracker:
    """The live path's state for one stream of 16 kHz float32 samples (see the module).

    ``embed(samples)``: a unit embedding, as ``identify`` embeds a file; ``identify(rows)``: the
    registry's answers (None, or answering None: no registry, every voice unknown);
    ``threshold``: the identification threshold, also used to tell unknown voices apart."""

    def __init__(self, embed: Embed, identify: Identify | None, threshold: float) -> None:
        self.embed = embed
        self.identify = identify
        self.threshold = threshold
        self.voices = UnknownVoices(threshold)
        self.vad = VadStream()
        self.received = 0  # samples fed
        self._store = np.zeros(4 * SAMPLE_RATE, np.float32)  # grows by doubling
        self._held = 0  # samples of _store in use
        self._buf_start = 0  # sample index of _buf[0]
        self._window = 0  # index of the next VAD window
        self._speaking = False
        self._low_since: int | None = None
        self._probs: list[float] = []  # per window since _probs_start (the open turn's)
        self._probs_start = 0
        self._turn: _Turn | None = None
        self._last_end = 0  # end of the last final segment
        self._closed = False
        self._partials = True
        self.shed = 0  # partials not computed (feed(partials=False))

    # --- input -------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray, partials: bool = True) -> list[TurnEvent]:
        """Events caused by the next samples (float32 in [-1, 1], 16 kHz, mono). With
        ``partials`` False no partial (and no change-of-voice check) is computed for them: a
        front that has fallen behind real time sheds that work to catch up, and still gets
        every final segment."""
        self._partials = partials
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._append(x)
        self.received += len(x)
        events: list[TurnEvent] = []
        for p in self.vad.push(x):
            events.extend(self._on_window(float(p)))
        self._trim()
        return events

    def close(self) -> list[TurnEvent]:
        """The last events: the open turn ends with the audio."""
        if self._closed:
            return []
        self._closed = True
        events: list[TurnEvent] = []
        for p in self.vad.flush():
            events.extend(self._on_window(float(p), last=True))
        turn = self._turn
        if turn is not None:
            end = min(self.received, turn.last_speech + _PAD)
            events.extend(self._finish(turn, max(end, turn.start + 1)))
            self._turn = None
        return events

    # --- per VAD window ----------------------------------------------------------------------
    def _on_window(self, p: float, last: bool = False) -> list[TurnEvent]:
        a = self._window * WINDOW
        b = min(a + WINDOW, self.received) if last else a + WINDOW
        self._window += 1
        if p >= THRESHOLD:  # Silero's hysteresis, as vad.segments_from_probs
            self._speaking, self._low_since = True, None
        elif p < NEG_THRESHOLD and self._speaking:
            self._low_since = a if self._low_since is None else self._low_since
            if b - self._low_since >= _MIN_SILENCE:
                self._speaking = False
        events: list[TurnEvent] = []
        turn = self._turn
        if turn is None:
            if p < THRESHOLD:
                return events
            start = max(self._last_end, a - _PAD)
            turn = self._turn = _Turn(start, b, start)
            self._probs, self._probs_start = [], a // WINDOW
        self._probs.append(p)
        if self._speaking:
            turn.speech += b - a
            if p >= NEG_THRESHOLD:
                turn.last_speech = b
        if not self._speaking and b - turn.last_speech >= TURN_PAUSE * SAMPLE_RATE:
            events.extend(self._finish(turn, min(b, turn.last_speech + _PAD)))
            self._turn = None
            return events
        if b - turn.start >= MAX_TURN * SAMPLE_RATE:
            events.extend(self._finish(turn, b))
            self._turn = _Turn(b, b, b) if self._speaking else None
            self._probs, self._probs_start = [], self._window
            return events
        if b >= turn.next_step and turn.speech >= MIN_SPEECH_SECONDS * SAMPLE_RATE:
            if self._partials:
                events.extend(self._step(turn, b))
            else:
                turn.next_step = b + int(STEP * SAMPLE_RATE)
                self.shed += 1
        return events

    @property
    def _buf(self) -> np.ndarray:
        """The audio held: the open turn's (or the last moment's), from ``_buf_start``."""
        return self._store[: self._held]

    def _append(self, x: np.ndarray) -> None:
        """Add samples without copying what is held (a turn holds up to MAX_TURN s)."""
        need = self._held + len(x)
        if need > len(self._store):
            grown = np.zeros(max(need, 2 * len(self._store)), np.float32)
            grown[: self._held] = self._buf
            self._store = grown
        self._store[self._held : need] = x
        self._held = need

    def _samples(self, a: int, b: int) -> np.ndarray:
        return self._buf[a - self._buf_start : b - self._buf_start]

    def _trim(self) -> None:
        """Keep only the open turn's audio (or the last moment, where the next turn may start)."""
        keep = self._turn.start if self._turn else self.received - 2 * WINDOW - _PAD
        keep = max(self._buf_start, keep)
        if keep > self._buf_start:
            rest = self._store[keep - self._buf_start : self._held]
            self._store[: len(rest)] = rest  # (overlapping copy: numpy buffers it)
            self._held, self._buf_start = len(rest), keep

    # --- partials and changes of voice --------------------------------------------------------
    def _step(self, turn: _Turn, now: int) -> list[TurnEvent]:
        turn.next_step = now + int(STEP * SAMPLE_RATE)
        a = max(turn.start, now - int(RECENT * SAMPLE_RATE))
        clip = _Clip(a, now, self.embed(self._samples(a, now)))
        full = int(RECENT * SAMPLE_RATE)
        for c in list(turn.clips):  # clips that end before this one starts are settled
            if c.b <= a:
                turn.clips.remove(c)
                if not c.odd and c.b - c.a >= full:  # a turn's first, shorter clips are noisy
                    turn.ref = c.vector.astype(np.float64) + (0 if turn.ref is None else turn.ref)
        turn.clips.append(clip)
        if turn.ref is not None and a > turn.start:
            ref = turn.ref / max(float(np.linalg.norm(turn.ref)), 1e-12)
            clip.odd = float(clip.vector @ ref) < CHANGE_COS
            if clip.odd and turn.suspect is not None:
                return self._change(turn, self._change_point(turn, turn.suspect), now)
            turn.suspect = clip if clip.odd else None
        return [self._partial(turn, clip.vector, now)]

    def _partial(self, turn: _Turn, vector: np.ndarray, now: int) -> TurnEvent:
        speaker, enrolled, score = self._name(vector, final=False)
        return TurnEvent(
            "partial", turn.start / SAMPLE_RATE, now / SAMPLE_RATE, speaker, enrolled, score
        )

    def _change_point(self, turn: _Turn, suspect: _Clip) -> int:
        """Where the new voice began, given the first clip that sounded unlike the turn: a clip
        reads as another voice only once that voice fills most of it, so the change lies near
        the clip's start. The middle of the longest pause (windows below the VAD's speech-end
        threshold) from half a clip before to half a clip after that start, else a quarter
        into the clip."""
        half = int(RECENT * SAMPLE_RATE) // 2
        lo, hi = max(turn.start, suspect.a - half), suspect.a + half
        best, run, start, at = 0, 0, 0, suspect.a + half // 2
        for k in range(-(-lo // WINDOW), hi // WINDOW):
            i = k - self._probs_start
            low = 0 <= i < len(self._probs) and self._probs[i] < NEG_THRESHOLD
            run, start = (run + 1, start if run else k) if low else (0, k)
            if low and run > best:
                best, at = run, (start * WINDOW + (k + 1) * WINDOW) // 2
        return max(turn.start + 1, at)

    def _change(self, turn: _Turn, at: int, now: int) -> list[TurnEvent]:
        """End ``turn`` at ``at`` and open the new voice's turn there."""
        events = self._finish(turn, at)
        new = self._turn = _Turn(at, now, now)
        first = at // WINDOW - self._probs_start
        probs = self._probs[max(0, first) :]
        self._probs, self._probs_start = probs, self._probs_start + max(0, first)
        new.speech = sum(WINDOW for p in probs if p >= NEG_THRESHOLD)
        new.clips = [c for c in turn.clips if c.a >= at]
        if new.speech >= MIN_SPEECH_SECONDS * SAMPLE_RATE:
            new.next_step = now + int(STEP * SAMPLE_RATE)
            a = max(at, now - int(RECENT * SAMPLE_RATE))
            vector = self.embed(self._samples(a, now))
            new.clips.append(_Clip(a, now, vector))
            events.append(self._partial(new, vector, now))
        return events

    # --- final segments ----------------------------------------------------------------------
    def _finish(self, turn: _Turn, end: int) -> list[TurnEvent]:
        """The final segment of ``turn`` ending at ``end``, named as ``identify`` names it."""
        start = max(turn.start, self._last_end)
        end = max(end, start + 1)
        self._last_end = end
        samples = self._samples(start, end)
        clip = AudioClip(samples, "<stream>", SAMPLE_RATE, 1, "")
        why, _ = probe_rejection(clip, MIN_SPEECH_SECONDS)
        if why is not None:
            speaker, enrolled, score = None, False, None
        else:
            speaker, enrolled, score = self._name(self.embed(samples), final=True)
        return [
            TurnEvent("segment", start / SAMPLE_RATE, end / SAMPLE_RATE, speaker, enrolled, score)
        ]

    def _name(self, vector: np.ndarray, final: bool) -> tuple[str, bool, float | None]:
        score = None
        answers = self.identify(vector[None, :]) if self.identify is not None else None
        if answers:
            (r,) = answers
            c = r.candidates
            lead = c[0].score - c[1].score if len(c) > 1 else 2.0
            if r.accepted and lead >= MARGIN:
                return r.speaker, True, float(r.score)
            score = float(r.score) if r.candidates else None
        label = self.voices.add(vector) if final else self.voices.provisional(vector)
        return label, False, score
