"""The training loop: AAM-softmax on random crops, warm-up + cosine LR, validation EER, resume.

State is saved to ``<output>.state.pt`` every ``checkpoint_every`` steps and at the end of
every epoch; running the same command again resumes from it (crops and augmentation are drawn
from ``(seed, epoch, batch)``, so a resumed run sees exactly the batches an uninterrupted one
would). The output file is a plain state dict in the official ERes2NetV2 key layout -- the
epoch with the best validation EER -- loadable by ``speakerid embed --model`` and 3D-Speaker.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..embedding import weights
from ..embedding.features import fbank, fbank_batch
from ..embedding.models.eres2netv2 import ERes2NetV2
from ..embedding.runtime import apply_threads
from ..errors import SpeakerIDError
from ..scoring.metrics import eer
from . import data as D
from .augment import Augmenter
from .config import (
    EpochStats,
    Progress,
    TrainConfig,
    TrainResult,
    check_config,
    check_resume,
    lr_at,
    margin_at,
    plain,
    state_path,
)
from .head import init_head_lda
from .loss import AAMSoftmax

log = logging.getLogger("speakerid")

__all__ = [
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "calibrate_batchnorm",
    "lr_at",
    "margin_at",
    "state_path",
    "train",
    "validation_eer",
]

VAL_MAX_SECONDS = 10.0


def _device(name: str | None) -> torch.device:
    from ..embedding.runtime import resolve_device

    return resolve_device(name)


def _build_model(cfg: TrainConfig) -> ERes2NetV2:
    if cfg.init:
        resolved = weights.resolve(cfg.init)
        return weights.load_model(resolved.path)
    torch.manual_seed(cfg.seed)
    return ERes2NetV2(cfg.model_config())


def _set_bn_eval(model: torch.nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Replace BatchNorm running statistics by their average over ``batches`` (train mode)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    for feats in batches:
        model(feats)
    for bn, mom in zip(bns, saved):
        bn.momentum = mom
    model.eval()


def _features(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    wav = torch.from_numpy(batch).to(device)
    if device.type == "cpu":
        return torch.stack([fbank(w) for w in wav])
    return torch.stack(fbank_batch(list(wav), device))


@torch.inference_mode()
def validation_eer(
    model: torch.nn.Module, feats: list[torch.Tensor], labels: np.ndarray, device: torch.device
) -> float:
    """EER over all pairs of the held-out utterances (cosine of L2-normalised embeddings)."""
    was_training = model.training
    model.eval()
    try:
        emb = torch.cat([model(f.unsqueeze(0).to(device)).float().cpu() for f in feats])
    finally:
        model.train(was_training)
    emb = torch.nn.functional.normalize(emb, dim=1).numpy().astype(np.float64)
    scores = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    return eer(scores[iu][same], scores[iu][~same])[0]


def train(cfg: TrainConfig, progress: Progress | None = None, restart: bool = False) -> TrainResult:
    """Train (or resume) according to ``cfg``; returns per-epoch statistics."""
    started = time.monotonic()
    report = progress or (lambda _phase, _adv, _total: None)
    output = check_config(cfg)
    apply_threads()  # $SPEAKERID_THREADS / --threads, before any torch work
    device = _device(cfg.device)
    state_file = state_path(output)
    saved = None
    if state_file.is_file() and not restart:
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        check_resume(saved["config"], cfg)
        log.info("resuming %s at step %d", state_file, saved["step"])

    items = D.read_labeled(Path(cfg.data))
    train_items, val_items = D.split_speakers(items, cfg.val_speakers, cfg.seed)
    n_files = len(items)
    report("decode", 0, n_files)
    waves = D.decode_all(train_items, lambda n: report("decode", n, n_files))
    val_waves = D.decode_all(val_items, lambda n: report("decode", n, n_files))
    tset = D.build_training_set(train_items, waves, cfg.speeds)
    val_feats = [fbank(w[: int(VAL_MAX_SECONDS * 16000)]) for w in val_waves]
    val_labels = np.array([it.speaker for it in val_items])

    model = _build_model(cfg).to(device)
    head = AAMSoftmax(model.config.embedding_size, tset.num_classes, cfg.margin, cfg.aam_scale)
    head.to(device)
    params = [
        {
            "params": [p for p in model.parameters() if p.dim() > 1],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0},
        {"params": list(head.parameters()), "weight_decay": cfg.weight_decay},
    ]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98))

    sampler = D.CropSampler(
        [len(w) for w in tset.waves], cfg.batch_size, cfg.crop_seconds, cfg.seed
    )
    per_epoch = len(sampler)
    total = per_epoch * cfg.epochs
    history: list[EpochStats] = []
    best_sd, best_eer, best_epoch, init_eer = None, None, None, None
    step = 0
    losses: list[float] = []
    accs: list[float] = []
    partial: dict = {"losses": [], "accuracies": []}
    if saved is not None:
        model.load_state_dict(saved["model"])
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["optimizer"])
        step = int(saved["step"])
        history = [EpochStats(**h) for h in saved["history"]]
        best_sd, best_eer = saved.get("best_model"), saved.get("best_val_eer")
        best_epoch, init_eer = saved.get("best_epoch"), saved.get("init_val_eer")
        partial = saved.get("partial_epoch", {"losses": [], "accuracies": []})
    else:
        if cfg.head_init == "lda":
            centroids = _lda_init(cfg, model, tset, device, report)
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(centroids).float())
        if val_feats:
            init_eer = validation_eer(model, val_feats, val_labels, device)
            log.info("validation EER before training: %.4f", init_eer)
            best_sd, best_eer, best_epoch = _cpu_copy(model), init_eer, 0

    def save_state() -> None:
        state = {
            "config": plain(asdict(cfg)),
            "model": model.state_dict(),
            "head": head.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "history": [asdict(h) for h in history],
            "best_model": best_sd,
            "best_val_eer": best_eer,
            "best_epoch": best_epoch,
            "init_val_eer": init_eer,
            # running statistics of an unfinished epoch, so its summary survives a resume
            "partial_epoch": {"losses": losses, "accuracies": accs},
        }
        _atomic_save(state, state_file)

    augmenter = Augmenter() if cfg.augment else None
    use_bf16 = cfg.bf16 and device.type == "cuda"
    stop_at = total if cfg.max_steps is None else min(total, cfg.max_steps)
    report("train", step, stop_at)
    while step < stop_at:
        epoch, skip = divmod(step, per_epoch)
        t0, losses, accs = time.monotonic(), [], []
        if skip and saved is not None:
            losses, accs = list(partial["losses"]), list(partial["accuracies"])
        model.train()
        if cfg.freeze_bn:
            _set_bn_eval(model)
        for b, crops in enumerate(sampler.epoch(epoch, skip=skip), start=skip):
            if step >= stop_at:
                break
            batch = np.stack([D.cut(tset.waves[c.utterance], c) for c in crops])
            if augmenter is not None:
                augmenter.strength = min(1.0, step / max(1.0, 0.15 * total))
                batch = augmenter(batch, np.random.default_rng([cfg.seed, epoch, b, 1]))
            labels = torch.from_numpy(tset.labels[[c.utterance for c in crops]]).to(device)
            lr = lr_at(cfg, step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            head.set_margin(margin_at(cfg, step, total))
            feats = _features(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, acc = head(model(feats), labels)
            if not torch.isfinite(loss):
                raise SpeakerIDError(
                    f"training diverged at step {step} (loss {float(loss)}); lower --lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            accs.append(float(acc))
            report("train", 1, stop_at)
            if step % cfg.checkpoint_every == 0:
                save_state()
                log.info(
                    "step %d/%d: loss %.3f acc %.3f lr %.2e",
                    step,
                    stop_at,
                    np.mean(losses[-50:]),
                    np.mean(accs[-50:]),
                    lr,
                )
        if step % per_epoch == 0:  # a whole epoch is done: validate and keep the best
            val = None
            if val_feats:
                report("validate", 0, 1)
                val = validation_eer(model, val_feats, val_labels, device)
                if best_eer is None or val < best_eer:
                    best_sd, best_eer, best_epoch = _cpu_copy(model), val, epoch + 1
            history.append(
                EpochStats(
                    epoch=epoch + 1,
                    step=step,
                    lr=lr_at(cfg, step - 1, total),
                    margin=float(head.margin),
                    loss=float(np.mean(losses)) if losses else math.nan,
                    accuracy=float(np.mean(accs)) if accs else math.nan,
                    val_eer=val,
                    seconds=time.monotonic() - t0,
                )
            )
            log.info("epoch %d: %s", epoch + 1, history[-1])
        save_state()

    final = best_sd if best_sd is not None else _cpu_copy(model)
    if cfg.half:
        final = {k: v.half() if v.is_floating_point() else v for k, v in final.items()}
    _atomic_save(final, output)
    from ..embedding.models.eres2netv2 import count_parameters

    return TrainResult(
        output=str(output),
        state=str(state_file),
        steps=step,
        epochs_done=step // per_epoch,
        best_epoch=best_epoch,
        best_val_eer=best_eer,
        init_val_eer=init_eer,
        num_classes=tset.num_classes,
        train_utterances=len(train_items),
        val_speakers=len(set(val_labels.tolist())),
        parameters=count_parameters(model),
        history=history,
        seconds=time.monotonic() - started,
    )


def _lda_init(
    cfg: TrainConfig, model: ERes2NetV2, tset: D.TrainingSet, device: torch.device, report: Progress
) -> np.ndarray:
    """Calibrate BatchNorm on training crops (fresh networks only), then fit seg_1 by LDA."""
    model.cpu()
    if not cfg.init and not cfg.freeze_bn:
        sampler = D.CropSampler(
            [len(w) for w in tset.waves], cfg.batch_size, cfg.crop_seconds, cfg.seed + 1
        )
        batches = []
        for crops in sampler.epoch(0):
            batches.append(
                _features(
                    np.stack([D.cut(tset.waves[c.utterance], c) for c in crops]),
                    torch.device("cpu"),
                )
            )
            if len(batches) * cfg.batch_size >= 1024:
                break
        calibrate_batchnorm(model, batches)
    feats = [fbank(w[: int(VAL_MAX_SECONDS * 16000)]) for w in tset.waves]
    report("init", 0, len(feats))
    centroids = init_head_lda(
        model,
        feats,
        tset.labels,
        cfg.lda_pca_dim,
        cfg.lda_reg,
        progress=lambda n: report("init", n, len(feats)),
    )
    model.to(device)
    return centroids


def _cpu_copy(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
