"""Training losses (DESIGN.md, "Loss"): soft Jaccard over classes plus the embedding soft
Jaccard (ESJ), summed 1:1. Labels: 0 background, k > 0 instance k, < 0 undefined (ignored)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ._checks import check_number

__all__ = ["soft_jaccard_loss", "embedding_soft_jaccard_loss", "RDCNetLoss", "sigma_from_margin"]

EPS = 1e-6


def sigma_from_margin(margin: float) -> float:
    """Bandwidth σ of P(u=k) = exp(-d²/2σ²) such that P = 0.5 at distance ``margin``."""
    margin = check_number(margin, "margin", positive=True)
    return margin / math.sqrt(2 * math.log(2))


def _check(labels: torch.Tensor, pred: torch.Tensor, name: str):
    if labels.dim() != pred.dim() - 1 or labels.shape[0] != pred.shape[0] or labels.shape[1:] != pred.shape[2:]:
        raise ValueError(f"labels: expected shape (B, *S) = {(pred.shape[0], *pred.shape[2:])} to match "
                         f"{name} {tuple(pred.shape)}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor, got {labels.dtype}")


def soft_jaccard_loss(probabilities: torch.Tensor, labels: torch.Tensor,
                      class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over images and classes (background included) of 1 - (Σ p·y + ε) / (Σ (p + y - p·y) + ε).

    Args:
        probabilities: (B, n_classes, *S) softmax output.
        labels: (B, *S) instance labels; pixels with label < 0 are ignored.
        class_labels: optional (B, *S) semantic classes; default: 1 where labels > 0, else 0.
    """
    _check(labels, probabilities, "probabilities")
    n_classes = probabilities.shape[1]
    valid = (labels >= 0).unsqueeze(1).to(probabilities.dtype)
    classes = (labels > 0).long() if class_labels is None else class_labels.clamp(min=0)
    onehot = torch.nn.functional.one_hot(classes, n_classes).movedim(-1, 1).to(probabilities.dtype)
    p, y = probabilities * valid, onehot * valid
    dims = tuple(range(2, probabilities.dim()))
    inter = (p * y).sum(dims)
    union = (p + y - p * y).sum(dims)
    return (1 - (inter + EPS) / (union + EPS)).mean()


def embedding_soft_jaccard_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Embedding soft Jaccard (ESJ): for each true instance k with centroid ŷ_k (mean predicted
    embedding over its pixels), P(u=k) = exp(-|y_u - ŷ_k|² / 2σ²) over the labelled foreground
    pixels u of the image, compared with 1{u = k} by the soft Jaccard loss. Mean over the
    instances of an image, then mean over the batch; an image without instances adds 0.

    Args:
        embeddings: (B, ndim, *S) in physical units.
        labels: (B, *S) instance labels (< 0 undefined, 0 background).
        margin: distance from a centroid at which P = 0.5, in the embeddings' units.
    """
    _check(labels, embeddings, "embeddings")
    inv_two_sigma2 = 1.0 / (2 * sigma_from_margin(margin) ** 2)
    B, ndim = embeddings.shape[:2]
    total = embeddings.new_zeros(())
    for b in range(B):
        lab = labels[b].reshape(-1)
        fg = lab > 0
        if not bool(fg.any()):
            continue
        ids, index = torch.unique(lab[fg], return_inverse=True)
        K = ids.numel()
        emb = embeddings[b].reshape(ndim, -1)[:, fg].t()  # (N, ndim)
        counts = torch.bincount(index, minlength=K).to(emb.dtype)
        centroids = emb.new_zeros((K, ndim)).index_add_(0, index, emb) / counts[:, None]
        # (K, N) squared distances, in chunks of instances to bound memory.
        loss_b = emb.new_zeros(())
        chunk = max(1, (1 << 24) // max(emb.shape[0], 1))
        for k0 in range(0, K, chunk):
            c = centroids[k0:k0 + chunk]
            d2 = (emb[None, :, :] - c[:, None, :]).pow(2).sum(-1)
            p = torch.exp(-d2 * inv_two_sigma2)
            y = (index[None, :] == torch.arange(k0, k0 + c.shape[0], device=emb.device)[:, None]).to(p.dtype)
            inter = (p * y).sum(1)
            union = p.sum(1) + counts[k0:k0 + chunk] - inter
            loss_b = loss_b + (1 - (inter + EPS) / (union + EPS)).sum()
        total = total + loss_b / K
    return total / B


class RDCNetLoss(torch.nn.Module):
    """Soft Jaccard over classes + ESJ over instances, weighted 1:1."""

    def __init__(self, margin: float):
        super().__init__()
        sigma_from_margin(margin)  # checks it
        self.margin = float(margin)

    def forward(self, output, labels: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """``output``: an :class:`rdcnet.model.RDCNetOutput`. Returns (loss, parts)."""
        cls = soft_jaccard_loss(output.probabilities, labels)
        esj = embedding_soft_jaccard_loss(output.embeddings, labels, self.margin)
        return cls + esj, {"class": float(cls.detach()), "embedding": float(esj.detach())}
