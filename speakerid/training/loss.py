"""Additive angular margin softmax (ArcFace), the loss the official ERes2NetV2 was trained with."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AAMSoftmax(nn.Module):
    """``s * cos(θ_y + m)`` for the true class, ``s * cos(θ_j)`` for the others, then CE.

    Past ``θ = π - m`` the margin would make the logit *increase* again; like 3D-Speaker's
    ``ArcMarginLoss`` (``easy_margin=False``) we continue it linearly there. The margin is
    a buffer so training can ramp it (``set_margin``) and a resumed run restores it.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, margin: float = 0.2, scale: float = 32.0
    ):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("margin", torch.tensor(float(margin)))

    def set_margin(self, margin: float) -> None:
        self.margin.fill_(float(margin))

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, accuracy)``; accuracy is of the margin-free cosine (what inference uses)."""
        cos = self.cosine(embeddings).clamp(-1.0, 1.0)
        m = float(self.margin)
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
        phi = cos * math.cos(m) - sin * math.sin(m)
        phi = torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
        target = F.one_hot(labels, cos.shape[1]).bool()
        logits = self.scale * torch.where(target, phi, cos)
        loss = F.cross_entropy(logits, labels)
        accuracy = (cos.argmax(dim=1) == labels).float().mean()
        return loss, accuracy
