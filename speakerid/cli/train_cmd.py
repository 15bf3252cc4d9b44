"""``speakerid train``: train or fine-tune an ERes2NetV2 on labeled audio."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DeviceOpt, JsonOpt, ThreadsOpt, emit_json, handle_errors, show_progress

#: Peak learning rates by (optimizer, fine-tuning): fine-tuning uses 1/20 of the from-scratch rate.
DEFAULT_LR = {
    ("sgd", False): 0.1,
    ("sgd", True): 0.005,
    ("adamw", False): 2e-3,
    ("adamw", True): 1e-4,
}

PHASES = {
    "decode": "decoding audio",
    "init": "LDA head init",
    "train": "training",
    "validate": "validating",
}


def _progress(enabled: bool, stack: ExitStack):
    """A multi-phase rich progress callback ``(phase, advance, total)``; no-op when disabled."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = stack.enter_context(
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
    )
    tasks: dict[str, int] = {}

    def update(phase: str, advance: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = prog.add_task(PHASES.get(phase, phase), total=total, completed=advance)
        else:
            prog.update(tasks[phase], advance=advance, total=total)

    return update


@handle_errors
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Folder with one sub-folder per speaker, or a manifest CSV with path,speaker."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.pt).")],
    init: Annotated[
        Optional[str],
        typer.Option("--init", help="Start from this model name or checkpoint (fine-tuning)."),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    lr: Annotated[
        Optional[float],
        typer.Option(
            "--lr",
            help="Peak learning rate (default: SGD 0.1, or 0.005 with --init; AdamW 2e-3 / 1e-4).",
        ),
    ] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adamw.")] = "sgd",
    margin: Annotated[float, typer.Option("--margin", help="AAM-softmax margin.")] = 0.2,
    m_channels: Annotated[int, typer.Option("--m-channels", help="Width (from scratch).")] = 32,
    crop: Annotated[str, typer.Option("--crop", help="Crop length range in seconds.")] = "2.0-3.0",
    speeds: Annotated[
        str,
        typer.Option(
            "--speeds", help="Speed perturbation factors (extra classes); '1.0' to disable."
        ),
    ] = "1.0,0.9,1.1",
    augment: Annotated[bool, typer.Option("--augment/--no-augment")] = True,
    head_init: Annotated[
        str,
        typer.Option(
            "--head-init", help="random, or lda: fit seg_1 in closed form before training."
        ),
    ] = "random",
    freeze_bn: Annotated[
        bool,
        typer.Option(
            "--freeze-bn", help="Keep BatchNorm statistics fixed (small data, fine-tuning)."
        ),
    ] = False,
    val_speakers: Annotated[
        int, typer.Option("--val-speakers", help="Speakers held out for validation EER (0: none).")
    ] = 10,
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", help="Stop after this many steps (resumable).")
    ] = None,
    half: Annotated[bool, typer.Option("--half", help="Store the output in fp16.")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore a saved training state and start over.")
    ] = False,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train with AAM-softmax; re-running the same command resumes from OUTPUT.state.pt.

    \b
    Example:
      speakerid train people/ -o mine.pt --init eres2netv2 --epochs 5
    """
    from ..errors import InvalidInputError
    from ..training.trainer import TrainConfig
    from ..training.trainer import train as run_training

    try:
        lo, hi = (float(x) for x in crop.split("-"))
        speed_list = tuple(float(x) for x in speeds.split(","))
    except ValueError:
        raise InvalidInputError("--crop is MIN-MAX seconds, --speeds a comma list") from None
    if 1.0 not in speed_list or any(not 0.5 <= s <= 2.0 for s in speed_list):
        raise InvalidInputError("--speeds must include 1.0 and stay within 0.5-2.0")
    cfg = TrainConfig(
        data=str(data),
        output=str(output),
        init=init,
        m_channels=m_channels,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr
        if lr is not None
        else DEFAULT_LR[(optimizer, bool(init))]
        if (optimizer, bool(init)) in DEFAULT_LR
        else 0.1,
        margin=margin,
        crop_seconds=(lo, hi),
        speeds=speed_list,
        augment=augment,
        head_init=head_init,
        freeze_bn=freeze_bn,
        val_speakers=val_speakers,
        seed=seed,
        device=device,
        half=half,
        max_steps=max_steps,
    )
    with ExitStack() as stack:
        result = run_training(cfg, _progress(show_progress(json_out), stack), restart=restart)
    if json_out:
        emit_json(asdict(result))
        return
    for h in result.history:
        val = "-" if h.val_eer is None else f"{h.val_eer:.2%}"
        typer.echo(
            f"epoch {h.epoch:3d}  step {h.step:6d}  loss {h.loss:7.3f}  "
            f"acc {h.accuracy:6.1%}  val EER {val}  ({h.seconds:.0f} s)"
        )
    if result.init_val_eer is not None:
        typer.echo(f"validation EER before training: {result.init_val_eer:.2%}")
    if result.best_val_eer is not None:
        typer.echo(f"best validation EER {result.best_val_eer:.2%} (epoch {result.best_epoch})")
    typer.echo(
        f"wrote {result.output} ({result.parameters:,} parameters, "
        f"{result.steps} steps, {result.seconds:.0f} s)"
    )
