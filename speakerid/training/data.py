"""Labeled training audio: reading folders/manifests, speaker splits, speed perturbation, crops.

All audio of a training set is decoded once into memory (2.9 h of 16 kHz speech is 0.7 GB as
float32); crops are then cut without touching the disk again, which is what keeps a 2-core
machine busy with the network instead of the decoder.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.decode import AUDIO_EXTENSIONS, SAMPLE_RATE, load_audio, speaker_folders
from ..errors import AudioError, InvalidInputError

log = logging.getLogger("speakerid")

#: Speed factors used as extra classes (Kaldi/3D-Speaker recipe): a voice sped up by 10% is
#: treated as a different speaker, which triples the number of classes the head separates.
SPEEDS = (1.0, 0.9, 1.1)


@dataclass(frozen=True)
class LabeledFile:
    path: Path
    speaker: str


def read_labeled(source: Path) -> list[LabeledFile]:
    """Files and labels from a manifest CSV (``path,speaker``), or a folder per speaker.

    A folder that contains ``manifest.csv`` is read through the manifest; relative manifest
    paths are taken relative to the manifest's folder.
    """
    source = Path(source)
    if source.is_dir() and (source / "manifest.csv").is_file():
        source = source / "manifest.csv"
    if source.is_file():
        return _read_manifest(source)
    if not source.exists():
        raise InvalidInputError(f"{source}: no such file or directory")
    items = [LabeledFile(p, spk) for spk, files in speaker_folders(source).items() for p in files]
    if not items:
        raise InvalidInputError(f"{source}: no speaker sub-folders with audio files")
    return items


def _read_manifest(path: Path) -> list[LabeledFile]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"path", "speaker"} <= fields:
            raise InvalidInputError(f"{path}: manifest needs the columns path,speaker")
        items = []
        for n, row in enumerate(reader, start=2):
            p, spk = (row.get("path") or "").strip(), (row.get("speaker") or "").strip()
            if not p or not spk:
                raise InvalidInputError(f"{path}:{n}: empty path or speaker")
            file = Path(p) if Path(p).is_absolute() else path.parent / p
            if file.suffix.lower() not in AUDIO_EXTENSIONS:
                raise InvalidInputError(f"{path}:{n}: {p} is not an audio file")
            items.append(LabeledFile(file, spk))
    if not items:
        raise InvalidInputError(f"{path}: manifest has no rows")
    return items


def split_speakers(
    items: Sequence[LabeledFile], val_speakers: int, seed: int = 0
) -> tuple[list[LabeledFile], list[LabeledFile]]:
    """Hold out whole speakers for validation (EER needs voices the network never saw)."""
    speakers = sorted({it.speaker for it in items})
    if val_speakers <= 0:
        return list(items), []
    if len(speakers) - val_speakers < 2 or val_speakers < 2:
        raise InvalidInputError(
            f"cannot hold out {val_speakers} of {len(speakers)} speakers for validation "
            "(need at least 2 on each side)"
        )
    rng = np.random.default_rng(seed)
    held = set(rng.choice(speakers, size=val_speakers, replace=False).tolist())
    return [i for i in items if i.speaker not in held], [i for i in items if i.speaker in held]


def decode_all(
    items: Sequence[LabeledFile], progress: Callable[[int], None] | None = None
) -> list[np.ndarray]:
    """Decode every file to 16 kHz mono float32; a bad file is an error naming it."""
    waves = []
    for it in items:
        try:
            waves.append(load_audio(it.path).samples)
        except AudioError as exc:
            raise InvalidInputError(f"training data: {exc}") from None
        if progress:
            progress(1)
    return waves


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster (pitch and tempo change together, like sox speed)."""
    if factor == 1.0:
        return wave
    import torch
    import torchaudio.functional as AF

    orig = int(round(SAMPLE_RATE * factor))
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig, SAMPLE_RATE)
    return out.numpy().astype(np.float32, copy=False)


@dataclass
class TrainingSet:
    """In-memory utterances with integer class labels (speaker × speed)."""

    waves: list[np.ndarray]
    labels: np.ndarray
    speakers: list[str]
    num_classes: int


def build_training_set(
    items: Sequence[LabeledFile],
    waves: Sequence[np.ndarray],
    speeds: Sequence[float] = SPEEDS,
) -> TrainingSet:
    """Labels ``speaker_index + k * n_speakers`` for speed ``speeds[k]``."""
    speakers = sorted({it.speaker for it in items})
    index = {s: i for i, s in enumerate(speakers)}
    out_waves, labels = [], []
    for k, factor in enumerate(speeds):
        for it, w in zip(items, waves):
            out_waves.append(speed_perturb(w, factor))
            labels.append(index[it.speaker] + k * len(speakers))
    return TrainingSet(
        out_waves, np.asarray(labels, dtype=np.int64), speakers, len(speakers) * len(speeds)
    )


@dataclass(frozen=True)
class Crop:
    utterance: int
    start: int
    length: int


class CropSampler:
    """Batches of random fixed-length crops, reproducible from ``(seed, epoch)``.

    Every utterance appears once per epoch. A batch shares one crop length (drawn from
    ``crop_frames``) so it stacks into one tensor; utterances shorter than the crop are
    repeated end to end, as in 3D-Speaker, instead of being zero-padded.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        crop_seconds: tuple[float, float] = (2.0, 3.0),
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError("batch size must be at least 1")
        lo, hi = crop_seconds
        if not 0.2 <= lo <= hi:
            raise InvalidInputError(f"bad crop length range {lo}-{hi} s")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.crop_samples = (int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE))
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[list[Crop]]:
        """The batches of ``epoch``; ``skip`` drops the first batches (resuming mid-epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        lo, hi = self.crop_samples
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            length = int(rng.integers(lo, hi + 1))
            starts = [int(rng.integers(0, max(1, self.lengths[i] - length + 1))) for i in idx]
            if b >= skip:
                yield [Crop(int(i), s, length) for i, s in zip(idx, starts)]


def cut(wave: np.ndarray, crop: Crop) -> np.ndarray:
    """The crop's samples, repeating short utterances to fill it."""
    if len(wave) < crop.length:
        wave = np.tile(wave, -(-crop.length // len(wave)))
    return wave[crop.start : crop.start + crop.length]
