"""``speakerid evaluate`` and ``speakerid calibrate``: accuracy measured on the user's data."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..scoring.trials import MAX_NONTARGETS, MAX_TARGETS
from .common import (
    BackendOpt,
    CompileOpt,
    DbOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    ThreadsOpt,
    ThresholdOpt,
    emit_json,
    handle_errors,
    open_service,
    show_progress,
)

SourceArg = Annotated[
    Path,
    typer.Argument(help="Folder (one sub-folder per speaker) or a trial list 'enroll test label'."),
]
RootOpt = Annotated[Optional[Path], typer.Option("--root", help="Base folder of trial paths.")]
CohortOpt = Annotated[
    Optional[Path],
    typer.Option("--cohort", help="AS-Norm cohort: folder of audio from speakers not under test."),
]
CohortMaxOpt = Annotated[int, typer.Option("--cohort-max", help="Cohort files to use.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Trial generation seed.")]
MaxTargetsOpt = Annotated[
    int,
    typer.Option("--max-targets", help="Same-speaker pairs at most (above: seeded sample)."),
]
MaxNontargetsOpt = Annotated[
    int,
    typer.Option(
        "--max-nontargets", help="Different-speaker pairs at most (above: seeded sample)."
    ),
]
PlotOpt = Annotated[
    Optional[Path], typer.Option("--plot", help="Write det.png and scores.png here.")
]
VadOpt = Annotated[bool, typer.Option("--vad", help="Trim silence before embedding.")]


def _cohort_files(folder: Path | None, limit: int, seed: int) -> list[Path]:
    if folder is None:
        return []
    import random

    from ..audio.decode import AUDIO_EXTENSIONS
    from ..errors import InvalidInputError

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if len(files) < 2:
        raise InvalidInputError(f"{folder}: cohort needs at least 2 audio files")
    return sorted(random.Random(seed).sample(files, min(limit, len(files))))


def _run(
    sid,
    source,
    root,
    seed,
    max_targets,
    max_nontargets,
    enroll_k,
    threshold,
    cohort,
    cohort_max,
    vad,
    max_seconds,
    json_out,
):
    from ..scoring.evaluation import evaluate
    from .common import progress_bar

    files = _cohort_files(cohort, cohort_max, seed)
    sid.registry_free()
    t, _ = sid.threshold(threshold)
    with progress_bar("embedding", None, show_progress(json_out)) as advance:
        return evaluate(
            sid.embedder,
            source,
            root=root,
            seed=seed,
            max_targets=max_targets,
            max_nontargets=max_nontargets,
            enroll_k=enroll_k,
            threshold=t,
            cohort=files,
            vad=vad,
            max_seconds=max_seconds,
            on_progress=advance,
        )


def _print_report(rep) -> None:
    pct = lambda x: f"{100 * x:6.2f}%"  # noqa: E731
    typer.echo(
        f"model {rep.model}: {rep.target_trials} target / {rep.nontarget_trials} "
        f"non-target trials{' (VAD)' if rep.vad else ''}: {rep.trials}"
    )
    rows = [
        ("EER", pct(rep.eer), f"threshold {rep.eer_threshold:.4f}"),
        ("minDCF p=0.01", f"{rep.min_dcf_p01:7.4f}", ""),
        ("minDCF p=0.05", f"{rep.min_dcf_p05:7.4f}", ""),
        ("FAR 1%", f"thr {rep.threshold_far_1pct:.4f}", f"FRR {pct(rep.frr_at_far_1pct)}"),
        ("FAR 0.1%", f"thr {rep.threshold_far_01pct:.4f}", f"FRR {pct(rep.frr_at_far_01pct)}"),
        (
            f"at {rep.threshold:.4f}",
            f"FAR {pct(rep.far_at_threshold)}",
            f"FRR {pct(rep.frr_at_threshold)}",
        ),
    ]
    if rep.asnorm:
        a = rep.asnorm
        rows += [
            ("AS-Norm EER", pct(a["eer"]), f"threshold {a['eer_threshold']:.4f}"),
            ("AS-Norm minDCF 0.01", f"{a['min_dcf_p01']:7.4f}", f"cohort {a['cohort']}"),
        ]
    ident = rep.identification or {}
    for mode in ("mean", "max"):
        if f"top1_{mode}" in ident:
            rows.append(
                (f"top-1/top-5 ({mode})", pct(ident[f"top1_{mode}"]), pct(ident[f"top5_{mode}"]))
            )
    if "open_set_far" in ident:
        rows.append(
            (
                "open-set FAR",
                pct(ident["open_set_far"]),
                f"{ident['impostor_probes']} impostor probes",
            )
        )
    for name, a, b in rows:
        typer.echo(f"  {name:<22} {a:>14}  {b}")


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)


def _plots(directory: Path, rep, threshold: float | None, asnorm: bool = False) -> list[str]:
    from ..scoring.plots import write_plots

    raw = ("raw cosine", (rep.scores["target"], rep.scores["nontarget"]))
    norm = ("AS-Norm", (rep.scores.get("asnorm_target"), rep.scores.get("asnorm_nontarget")))
    curves = dict([norm, raw] if asnorm else [raw, norm] if rep.asnorm else [raw])
    return [str(p) for p in write_plots(directory, curves, threshold, rep.model)]


@handle_errors
def evaluate(
    source: SourceArg,
    root: RootOpt = None,
    seed: SeedOpt = 0,
    max_targets: MaxTargetsOpt = MAX_TARGETS,
    max_nontargets: MaxNontargetsOpt = MAX_NONTARGETS,
    enroll_k: Annotated[
        int, typer.Option("--enroll-k", help="Utterances enrolled per speaker for identification.")
    ] = 3,
    threshold: ThresholdOpt = None,
    cohort: CohortOpt = None,
    cohort_max: CohortMaxOpt = 600,
    vad: VadOpt = False,
    max_seconds: Annotated[
        Optional[float],
        typer.Option("--max-seconds", help="Crop every file to its first S seconds."),
    ] = None,
    plot: PlotOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """EER, minDCF, thresholds at 1%/0.1% FAR, identification accuracy, open-set FAR.

    \b
    Examples:
      speakerid evaluate people/ --plot plots/
      speakerid evaluate trials.txt --root audio/ --json
    """
    with open_service(
        db, model, device, json_mode=json_out, backend=backend, precision=precision
    ) as sid:
        rep = _run(
            sid,
            source,
            root,
            seed,
            max_targets,
            max_nontargets,
            enroll_k,
            threshold,
            cohort,
            cohort_max,
            vad,
            max_seconds,
            json_out,
        )
    data = rep.to_dict()
    if plot:
        data["plots"] = _plots(plot, rep, rep.threshold)
    if json_out:
        emit_json(data)
    else:
        _print_report(rep)
        for p in data.get("plots", []):
            typer.echo(f"  wrote {p}")
    _warn(rep.warnings)


@handle_errors
def calibrate(
    source: SourceArg,
    target_far: Annotated[
        float, typer.Option("--target-far", help="False-accept rate to allow.")
    ] = 0.01,
    apply: Annotated[
        bool, typer.Option("--apply", help="Store it as the registry's threshold.")
    ] = False,
    asnorm: Annotated[
        bool, typer.Option("--asnorm", help="Calibrate AS-Norm scores (needs --cohort).")
    ] = False,
    root: RootOpt = None,
    seed: SeedOpt = 0,
    max_targets: MaxTargetsOpt = MAX_TARGETS,
    max_nontargets: MaxNontargetsOpt = MAX_NONTARGETS,
    cohort: CohortOpt = None,
    cohort_max: CohortMaxOpt = 600,
    plot: PlotOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recommend the threshold that keeps false accepts at --target-far on your data.

    \b
    Example:
      speakerid calibrate people/ --target-far 0.01 --apply
    """
    from ..errors import InvalidInputError
    from ..scoring.evaluation import calibrate as recommend

    if not 0.0 < target_far < 1.0:
        raise InvalidInputError("--target-far must be between 0 and 1")
    if asnorm and cohort is None:
        raise InvalidInputError("--asnorm needs --cohort DIR (audio of speakers not under test)")
    with open_service(
        db, model, device, json_mode=json_out, backend=backend, precision=precision
    ) as sid:
        rep = _run(
            sid,
            source,
            root,
            seed,
            max_targets,
            max_nontargets,
            0,
            None,
            cohort if asnorm else None,
            cohort_max,
            False,
            None,
            json_out,
        )
        # AS-Norm scores come from scoring.asnorm_scores, the definition verify/identify use
        cal = recommend(rep, target_far, asnorm)
        source_note = (
            f"calibrate {date.today().isoformat()}: FAR {100 * cal.far:.2f}% / FRR "
            f"{100 * cal.frr:.2f}% on {source} ({cal.target_trials}+{cal.nontarget_trials} "
            f"trials, model {rep.model})"
        )
        if apply:
            sid.set_threshold(cal.threshold, source_note, asnorm=asnorm)
    out = {
        "threshold": cal.threshold,
        "far": cal.far,
        "frr": cal.frr,
        "target_far": target_far,
        "asnorm": asnorm,
        "eer": cal.eer,
        "applied": apply,
        "source": source_note,
        "target_trials": cal.target_trials,
        "nontarget_trials": cal.nontarget_trials,
        "trials": cal.trials,
        "warnings": cal.warnings,
    }
    if plot:
        out["plots"] = _plots(plot, rep, cal.threshold, asnorm)
    if json_out:
        emit_json(out)
    else:
        typer.echo(
            f"recommended threshold {cal.threshold:.4f}: FAR {100 * cal.far:.2f}%, FRR "
            f"{100 * cal.frr:.2f}% (EER {100 * cal.eer:.2f}%) from {cal.target_trials:,} target "
            f"/ {cal.nontarget_trials:,} non-target trials"
            + (" - stored in the registry" if apply else "")
        )
    _warn(cal.warnings)
