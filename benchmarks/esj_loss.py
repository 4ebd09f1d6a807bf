"""ESJ loss, side by side in one process: version 1 (the (K, N, ndim) differences) against
``rdcnet.losses.embedding_soft_jaccard_loss`` (one matrix product), on 3D crops of 24 px nuclei
and 2D crops of 12 px nuclei with random embeddings around the true coordinates. NOTES.md,
"ESJ loss".

    python benchmarks/esj_loss.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import self_config  # noqa: E402  (the synthetic data sets)
from rdcnet.losses import EPS, _check, embedding_soft_jaccard_loss, sigma_from_margin  # noqa: E402
from rdcnet.plan import crop_sampler  # noqa: E402


def esj_version1(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Version 1 of rdcnet.losses.embedding_soft_jaccard_loss (before 549e2d3): every (instance,
    pixel) difference materialised."""
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


def main():
    cases = [("3D d=24, batch 2 of 36x144x144", list(self_config.datasets([], [24], 8, 1, 1))[0], [36, 144, 144], 2, 3.7),
             ("2D d=12, batch 8 of 72x72", list(self_config.datasets([12], [], 8, 1, 1))[0], [72, 72], 8, 3.7)]
    for title, (_, spacing, make), crop, batch, margin in cases:
        _, y = crop_sampler(make(8, 11), 0)(batch, crop, None)
        grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) * s for n, s in zip(crop, spacing)], indexing="ij")
        emb0 = (torch.stack(grid)[None] + 2 * torch.randn(batch, len(crop), *crop, generator=torch.Generator().manual_seed(0)))
        print(f"{title}: {int((y > 0).sum())} foreground pixels, instances per crop "
              f"{[len(torch.unique(y[b])) - 1 for b in range(batch)]}")
        grads = {}
        for name, fn in (("version 1", esj_version1), ("current", embedding_soft_jaccard_loss)) * 2:
            times = []
            for _ in range(3):
                e = emb0.clone().requires_grad_(True)
                t0 = time.perf_counter()
                loss = fn(e, y, margin)
                t1 = time.perf_counter()
                loss.backward()
                times.append((t1 - t0, time.perf_counter() - t1))
            grads[name] = (loss.item(), e.grad)
            fwd, bwd = sorted(times)[1]
            print(f"  {name:9s}: forward {fwd * 1e3:8.1f} ms  backward {bwd * 1e3:8.1f} ms  loss {loss.item():.6f}")
        (l1, g1), (l2, g2) = grads["version 1"], grads["current"]
        print(f"  gradient max relative difference {((g1 - g2).abs().max() / g1.abs().max()).item():.1e}")


if __name__ == "__main__":
    main()
