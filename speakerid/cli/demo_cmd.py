"""``speakerid demo``: the main job end to end on real voices, in a throw-away registry."""

from __future__ import annotations

import csv
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import weights
from ..errors import ModelError, SpeakerIDError
from .common import DeviceOpt, handle_errors, open_service

ROOT = Path(__file__).resolve().parents[2]
SHARED_DEV = ROOT.parent / "shared" / "datasets" / "speechocean762-dev"
SHARED_MODEL = ROOT.parent / "shared" / "models" / "eres2netv2-m32-so762.pt"


def _pick_model(requested: str | None) -> tuple[str, str]:
    """The official model if it can be had, else the shared real-voice test asset."""
    if requested:
        return requested, "as requested"
    if weights.installed_path("eres2netv2"):
        return "eres2netv2", "official ERes2NetV2 (installed)"
    try:
        weights.download("eres2netv2")
        return "eres2netv2", "official ERes2NetV2 (downloaded)"
    except ModelError as exc:
        if SHARED_MODEL.is_file():
            return str(SHARED_MODEL), (
                "TEST ASSET eres2netv2-m32-so762 (../shared/models), because the official "
                f"model is not available offline: {exc}"
            )
        raise


def _speakers(data: Path, count: int) -> dict[str, list[Path]]:
    by_spk: dict[str, list[Path]] = defaultdict(list)
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise SpeakerIDError(f"demo data not found: {manifest} (pass --data DIR)")
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            by_spk[row["speaker"]].append(data / row["path"])
    return dict(list(by_spk.items())[:count])


@handle_errors
def demo(
    model: Annotated[Optional[str], typer.Option("--model", "-m")] = None,
    data: Annotated[
        Path, typer.Option("--data", help="Folder with manifest.csv (path,speaker,...).")
    ] = SHARED_DEV,
    speakers: Annotated[int, typer.Option("--speakers", help="Speakers to enroll.")] = 6,
    device: DeviceOpt = None,
) -> None:
    """Enroll a few real speakers, identify unknown clips, verify claims, print the results."""
    model_ref, why = _pick_model(model)
    people = _speakers(data, speakers + 1)
    names = list(people)
    enrolled, stranger = names[:speakers], names[speakers]
    typer.echo(f"model: {why}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_service(Path(tmp) / "demo.db", model_ref, device) as sid,
    ):
        typer.echo(f"\n1. enroll {len(enrolled)} speakers from 3 recordings each")
        for name in enrolled:
            r = sid.enroll(name, people[name][:3])
            typer.echo(f"   speakerid enroll {name} <3 files>  -> {r.utterances} utterances")
        probes = [(n, people[n][5]) for n in enrolled] + [(stranger, people[stranger][0])]
        typer.echo("\n2. identify unknown clips (the last speaker was never enrolled)")
        t, source = sid.threshold()
        results = sid.identify_many([p for _, p in probes], top_k=2)
        correct = 0
        for (truth, path), r in zip(probes, results):
            answer = r.speaker or "unknown"
            expected = truth if truth in enrolled else "unknown"
            correct += answer == expected
            typer.echo(
                f"   {path.name}: {answer:<8} score {r.score:.3f}  "
                f"(truth: {expected}) {'OK' if answer == expected else 'MISS'}"
            )
        typer.echo(f"   {correct}/{len(probes)} correct at threshold {t} ({source})")
        typer.echo("\n3. verify claims")
        claim_true = sid.verify(enrolled[0], people[enrolled[0]][6])
        claim_false = sid.verify(enrolled[0], people[enrolled[1]][6])
        for label, v in (("genuine", claim_true), ("impostor", claim_false)):
            typer.echo(
                f"   {label}: is {Path(v.file).name} {v.speaker}? "
                f"{'accepted' if v.accepted else 'rejected'} (score {v.score:.3f})"
            )
    typer.echo("\nTry it yourself: speakerid enroll NAME a.wav b.wav; speakerid identify x.wav")
