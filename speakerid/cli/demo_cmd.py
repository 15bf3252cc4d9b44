"""``speakerid demo``: the main job end to end on real voices, in a throw-away registry."""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..embedding import weights
from ..errors import InvalidInputError, ModelError
from .common import DeviceOpt, JsonOpt, ThreadsOpt, emit_json, handle_errors, open_service, plural

ROOT = Path(__file__).resolve().parents[2]
#: The sample clips: in an installed wheel they ship as speakerid/assets/clips (pyproject.toml),
#: in a checkout they are data/clips.
_PACKAGED = Path(__file__).resolve().parents[1] / "assets" / "clips"
CLIPS = _PACKAGED if (_PACKAGED / "manifest.csv").is_file() else ROOT / "data" / "clips"


def _pick_model(requested: str | None) -> tuple[str, str]:
    """The official model if installed or downloadable, else the bundled demo model."""
    if requested:
        return requested, "as requested"
    if weights.installed_path("eres2netv2"):
        return "eres2netv2", "official ERes2NetV2 (installed)"
    reason = "offline mode (SPEAKERID_OFFLINE)"
    if os.environ.get(weights.ENV_OFFLINE, "") in {"", "0"}:
        try:
            weights.download("eres2netv2")
            return "eres2netv2", "official ERes2NetV2 (downloaded)"
        except ModelError as exc:
            reason = str(exc).split("; ")[0]  # the cause; the install hint follows below
    if weights.bundled_path("demo") is None:
        raise InvalidInputError(f"no model available: {reason}")
    card = weights.model_card("demo")
    return "demo", (
        f"BUNDLED DEMO MODEL 'demo' ({card.get('summary', 'small ERes2NetV2')}), because the "
        f"official model is not available: {reason}. "
        "Install it with: speakerid model download eres2netv2 (offline: speakerid model "
        "install FILE --name eres2netv2)"
    )


@dataclass
class Plan:
    """Who is enrolled from which files, and which clips are then identified."""

    enroll: dict[str, list[Path]] = field(default_factory=dict)
    probes: list[tuple[str, Path]] = field(default_factory=list)


def _plan(data: Path, speakers: int) -> Plan:
    """Read ``manifest.csv``; a ``role`` column (enroll/probe) is used when present."""
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise InvalidInputError(f"demo data not found: {manifest} (pass --data DIR)")
    by_spk: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_spk[row["speaker"]].append((row.get("role") or "", data / row["path"]))
    plan = Plan()
    for spk, rows in by_spk.items():
        files = [p for _, p in rows]
        if any(role for role, _ in rows):  # roles given by the manifest
            enroll = [p for role, p in rows if role == "enroll"]
            probes = [p for role, p in rows if role == "probe"]
        elif len(plan.enroll) < speakers:  # first 3 files enroll, the 6th is the probe
            enroll, probes = files[:3], files[5:6]
        else:  # one more speaker, never enrolled: an unknown voice
            enroll, probes = [], files[:1]
        if enroll and len(plan.enroll) < speakers:
            plan.enroll[spk] = enroll
        elif enroll:
            continue
        plan.probes += [(spk, p) for p in probes[:1]]
        if len(plan.enroll) >= speakers and any(t not in plan.enroll for t, _ in plan.probes):
            break
    if len(plan.enroll) < 2 or not plan.probes:
        raise InvalidInputError(f"{manifest}: the demo needs at least 2 speakers and a probe")
    return plan


@handle_errors
def demo(
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m", help="Model (default: the official one, else the bundled demo model)."
        ),
    ] = None,
    data: Annotated[
        Path, typer.Option("--data", help="Folder with manifest.csv (path,speaker[,role]).")
    ] = CLIPS,
    speakers: Annotated[int, typer.Option("--speakers", help="Speakers to enroll.")] = 6,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll a few real speakers, identify unknown clips, verify claims, print the results.

    \b
    Examples:
      speakerid demo
      speakerid demo --json
    """
    model_ref, why = _pick_model(model)
    plan = _plan(data, speakers)
    names = list(plan.enroll)
    say = (lambda _text: None) if json_out else typer.echo
    say(f"model: {why}")
    report: dict = {"model": {"name": model_ref, "reason": why}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_service(Path(tmp) / "demo.db", model_ref, device) as sid,
    ):
        say(f"\n1. enroll {len(names)} speakers")
        report["enrolled"] = []
        for name, files in plan.enroll.items():
            r = sid.enroll(name, files)
            report["enrolled"].append(
                {"speaker": name, "files": [str(f) for f in files], "utterances": r.utterances}
            )
            say(
                f"   enrolled {name} from {plural(len(files), 'file')} "
                f"-> {plural(r.utterances, 'utterance')}"
            )
        unknown = sum(truth not in plan.enroll for truth, _ in plan.probes)
        say(f"\n2. identify {len(plan.probes)} clips ({unknown} from a voice never enrolled)")
        t, source = sid.threshold()
        report["threshold"], report["threshold_source"] = t, source
        results = sid.identify_many([p for _, p in plan.probes], top_k=2)
        correct = 0
        report["identified"] = []
        for (truth, path), r in zip(plan.probes, results):
            answer = r.speaker or "unknown"
            expected = truth if truth in plan.enroll else "unknown"
            correct += answer == expected
            report["identified"].append(
                {
                    "file": str(path),
                    "truth": truth if truth in plan.enroll else None,  # None: never enrolled
                    "answer": r.speaker,
                    "score": round(r.score, 6),
                    "correct": answer == expected,
                }
            )
            say(
                f"   {path.name}: {answer:<8} score {r.score:.3f}  "
                f"(truth: {expected}) {'OK' if answer == expected else 'MISS'}"
            )
        report["correct"] = correct
        say(f"   {correct}/{len(plan.probes)} correct at threshold {t:.3f} ({source})")
        say("\n3. verify claims")
        probe_of = {truth: p for truth, p in plan.probes}
        claims = [("genuine", names[0], probe_of.get(names[0]))]
        claims.append(("impostor", names[0], probe_of.get(names[1])))
        report["verified"] = []
        for label, claimed, path in claims:
            if path is None:
                continue
            v = sid.verify(claimed, path)
            report["verified"].append({"claim": label, **v.to_dict()})
            say(
                f"   {label}: is {Path(v.file).name} {v.speaker}? "
                f"{'accepted' if v.accepted else 'rejected'} (score {v.score:.3f})"
            )
    report["try_it"] = try_it_commands(model_ref, plan)
    if json_out:
        emit_json(report)
        return
    typer.echo("\nTry it yourself, in this order (the first command creates ./speakerid-demo.db):")
    for line in report["try_it"]:
        typer.echo(f"  {line}")


def _speakerid_command() -> str:
    """How to run speakerid from here, as printed: on PATH, the venv's script, or python -m."""
    script = Path(sys.executable).parent / "speakerid"
    on_path = shutil.which("speakerid")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "speakerid"
    if script.is_file():
        return shlex.quote(_relative(script))
    return f"{shlex.quote(sys.executable)} -m speakerid"


def _relative(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def try_it_commands(model_ref: str, plan: Plan) -> list[str]:
    """Commands that work exactly as printed (offline too): same model, a registry file here."""
    exe = _speakerid_command()
    db = "--db speakerid-demo.db"
    name, files = next(iter(plan.enroll.items()))
    probe = next((p for truth, p in plan.probes if truth == name), files[-1])
    model = "" if model_ref == "eres2netv2" else f" --model {shlex.quote(model_ref)}"
    quoted = " ".join(shlex.quote(_relative(f)) for f in files)
    return [
        f"{exe} enroll {shlex.quote(name)} {quoted} --append {db}{model}",
        f"{exe} identify {shlex.quote(_relative(probe))} {db}",
        f"{exe} verify {shlex.quote(name)} {shlex.quote(_relative(probe))} {db}",
    ]
