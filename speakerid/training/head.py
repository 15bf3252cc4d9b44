"""Closed-form initialisation of the embedding layer ``seg_1`` (LDA on pooled statistics).

With little data or compute, gradient training of a whole ERes2NetV2 from scratch does not get
far (a 6-minute H100 run on 376 speakers came out worse than random weights, see the shared test
asset's card). What does work is to treat the trunk's pooled statistics as features and fit the
last linear layer in closed form: standardise, PCA-whiten to ``pca_dim`` dimensions, then LDA
to the embedding size, and fold the whole chain into ``seg_1.weight``/``seg_1.bias``. AAM-softmax
training then starts from a network that already separates speakers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError


@torch.inference_mode()
def pooled_statistics(
    model: torch.nn.Module,
    feats: Sequence[torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The input of ``seg_1`` (mean and std over time of the fused feature maps), per item."""
    captured: list[torch.Tensor] = []
    hook = model.seg_1.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        rows = []
        for f in feats:
            model(f.unsqueeze(0))
            rows.append(captured.pop().squeeze(0).double().numpy())
            if progress:
                progress(1)
    finally:
        hook.remove()
        model.train(was_training)
    return np.stack(rows)


def fit_lda(
    stats: np.ndarray,
    labels: np.ndarray,
    out_dim: int,
    pca_dim: int = 300,
    reg: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` such that ``stats @ W.T + b`` is the LDA projection to ``out_dim`` dims.

    Output dimensions are ordered by discriminability and scaled by
    ``sqrt(λ / (1 + λ))`` (λ = between/within variance ratio), so directions LDA cannot
    support with the available classes contribute little to the cosine instead of noise.
    """
    x = np.asarray(stats, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2 or x.shape[0] <= len(classes):
        raise InvalidInputError("LDA head needs at least 2 speakers with 2+ utterances each")
    # Near-constant statistics (dead channels) must not get huge weights: in float32 inference
    # ``W @ x + b`` would then cancel catastrophically.
    mu, sd = x.mean(0), x.std(0)
    sd = np.maximum(sd, 1e-3 * float(np.median(sd)) + 1e-12)
    z = (x - mu) / sd
    k = min(pca_dim, z.shape[1], z.shape[0] - 1)
    evals, evecs = _top_principal_axes(z, k)
    pca = evecs / np.sqrt(np.maximum(evals, 1e-10))
    y = z @ pca
    means = np.stack([y[labels == c].mean(0) for c in classes])
    within = sum(
        (y[labels == c] - means[i]).T @ (y[labels == c] - means[i]) for i, c in enumerate(classes)
    ) / len(y)
    within += reg * np.trace(within) / k * np.eye(k)
    between = np.cov(means, rowvar=False)
    chol = np.linalg.cholesky(within)
    inv = np.linalg.inv(chol)
    lam, vecs = np.linalg.eigh(inv @ between @ inv.T)
    order = np.argsort(lam)[::-1][:out_dim]
    lam, proj = np.maximum(lam[order], 0.0), inv.T @ vecs[:, order]
    proj = proj * np.sqrt(lam / (1.0 + lam))
    if proj.shape[1] < out_dim:  # fewer PCA dims than outputs: pad with silent rows
        proj = np.pad(proj, ((0, 0), (0, out_dim - proj.shape[1])))
    weight = (pca @ proj).T / sd
    bias = -weight @ mu
    return weight.astype(np.float32), bias.astype(np.float32)


def _top_principal_axes(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` covariance eigenpairs by randomized SVD (the statistics are 10k-dim wide)."""
    zc = z - z.mean(0)
    rng = np.random.default_rng(0)
    q = np.linalg.qr(zc @ rng.standard_normal((zc.shape[1], k + 50)))[0]
    for _ in range(3):  # power iterations sharpen the spectrum's tail
        q = np.linalg.qr(zc @ (zc.T @ q))[0]
    _, s, vt = np.linalg.svd(q.T @ zc, full_matrices=False)
    return (s[:k] ** 2) / (len(z) - 1), vt[:k].T


def init_head_lda(
    model: torch.nn.Module,
    feats: Sequence[torch.Tensor],
    labels: np.ndarray,
    pca_dim: int = 300,
    reg: float = 0.1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Replace ``model.seg_1`` by the LDA fitted on the model's own pooled statistics.

    Returns the normalised class centroids of the new embeddings (``[num_labels, emb]``, rows
    in label order), the natural initial weights of an AAM-softmax head: a random head would
    send large, meaningless gradients into the freshly fitted layer.
    """
    stats = pooled_statistics(model, feats, progress)
    weight, bias = fit_lda(stats, labels, model.seg_1.out_features, pca_dim, reg)
    with torch.no_grad():
        model.seg_1.weight.copy_(torch.from_numpy(weight))
        model.seg_1.bias.copy_(torch.from_numpy(bias))
    emb = stats @ weight.T.astype(np.float64) + bias
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    labels = np.asarray(labels)
    centroids = np.stack([emb[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    return centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12)
