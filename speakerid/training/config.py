"""What defines a training run: its configuration, results, schedules and resume rules.

Kept apart from the loop so that the CLI, tests and tools can build, compare and inspect runs
without importing the training machinery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..embedding.models.eres2netv2 import ERes2NetV2Config
from ..errors import InvalidInputError
from .data import SPEEDS

#: Progress callback: ``(phase, advance, total)``; phases: decode, init, train, validate.
Progress = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in the state file to refuse mismatched resumes)."""

    data: str
    output: str
    init: str | None = None  # model name or checkpoint path; None trains from scratch
    m_channels: int = 32
    base_width: int = 26
    scale: int = 2
    expansion: int = 2
    embedding_size: int = 192
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd (nesterov) or adamw
    lr: float = 0.1
    min_lr: float = 5e-5
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of all steps
    margin: float = 0.2
    margin_ramp: tuple[float, float] = (0.1, 0.4)  # fractions of all steps
    aam_scale: float = 32.0
    crop_seconds: tuple[float, float] = (2.0, 3.0)
    speeds: tuple[float, ...] = SPEEDS
    augment: bool = True
    head_init: str = "random"  # random or lda
    lda_pca_dim: int = 300
    lda_reg: float = 0.1
    freeze_bn: bool = False
    val_speakers: int = 10
    seed: int = 0
    device: str | None = None
    bf16: bool = True  # autocast on CUDA only
    half: bool = False  # store the output in fp16
    checkpoint_every: int = 200
    max_steps: int | None = None  # stop early (tests, time-boxed runs); resumable

    def model_config(self) -> ERes2NetV2Config:
        return ERes2NetV2Config(
            m_channels=self.m_channels,
            base_width=self.base_width,
            scale=self.scale,
            expansion=self.expansion,
            embedding_size=self.embedding_size,
        )


@dataclass
class EpochStats:
    epoch: int
    step: int
    lr: float
    margin: float
    loss: float
    accuracy: float
    val_eer: float | None
    seconds: float


@dataclass
class TrainResult:
    output: str
    state: str
    steps: int
    epochs_done: int
    best_epoch: int | None
    best_val_eer: float | None
    init_val_eer: float | None
    num_classes: int
    train_utterances: int
    val_speakers: int
    parameters: int
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0


def state_path(output: Path) -> Path:
    return output.with_name(output.name + ".state.pt")


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr``."""
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, frac)))


def margin_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Zero margin first (let the classes form), then a linear ramp to ``margin``."""
    lo, hi = cfg.margin_ramp
    frac = step / max(1, total)
    if frac <= lo:
        return 0.0
    return cfg.margin * min(1.0, (frac - lo) / max(1e-9, hi - lo))


def check_resume(saved: dict, cfg: TrainConfig) -> None:
    """Refuse to continue a run whose data or network was defined differently."""
    keys = (
        "data",
        "init",
        "m_channels",
        "base_width",
        "scale",
        "expansion",
        "embedding_size",
        "batch_size",
        "epochs",
        "speeds",
        "val_speakers",
        "seed",
        "crop_seconds",
        "head_init",
    )
    now = plain(asdict(cfg))
    diff = [k for k in keys if saved.get(k) != now.get(k)]
    if diff:
        raise InvalidInputError(
            f"cannot resume: {', '.join(diff)} differ from the saved run "
            "(use the same options, or --restart to start over)"
        )


def plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def check_config(cfg: TrainConfig) -> Path:
    """Refuse impossible options before any data is read; returns the output path."""
    output = Path(cfg.output)
    if output.suffix not in {".pt", ".pth", ".ckpt", ".bin"}:
        raise InvalidInputError(f"{output}: output must end in .pt")
    if not output.parent.is_dir():
        raise InvalidInputError(f"{output.parent}: output folder does not exist")
    if cfg.head_init not in {"random", "lda"}:
        raise InvalidInputError(f"unknown head init {cfg.head_init!r} (random or lda)")
    if cfg.optimizer not in {"sgd", "adamw"}:
        raise InvalidInputError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")
    if cfg.epochs < 1:
        raise InvalidInputError("epochs must be at least 1")
    return output
