"""Losses: soft Jaccard over classes and the embedding soft Jaccard (ESJ)."""

import math

import numpy as np
import pytest
import torch

from rdcnet.losses import RDCNetLoss, embedding_soft_jaccard_loss, sigma_from_margin, soft_jaccard_loss
from rdcnet.model import RDCNetOutput


def blocks(shape=(2, 24, 24)):
    labels = torch.zeros(shape, dtype=torch.long)
    labels[:, 2:10, 2:10] = 1
    labels[:, 2:10, 10:20] = 2   # touches 1
    labels[:, 14:22, 4:20] = 3
    return labels


def coords(shape):
    return torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))


def perfect_embeddings(labels, spread=0.0):
    """Every pixel of instance k embedded at k's centroid (plus optional noise)."""
    B = labels.shape[0]
    emb = coords(labels.shape[1:]).repeat(B, 1, 1, 1).clone()
    for b in range(B):
        for k in labels[b].unique():
            if k <= 0:
                continue
            m = labels[b] == k
            c = emb[b][:, m].mean(1, keepdim=True)
            emb[b][:, m] = c + spread * torch.randn_like(emb[b][:, m])
    return emb


def one_hot_probs(labels):
    fg = (labels > 0).float()
    return torch.stack([1 - fg, fg], 1)


def test_sigma_from_margin():
    s = sigma_from_margin(5.0)
    assert math.isclose(math.exp(-25 / (2 * s * s)), 0.5)
    with pytest.raises(ValueError, match="margin"):
        sigma_from_margin(0)


def test_class_loss_zero_for_perfect_and_high_for_inverted():
    labels = blocks()
    p = one_hot_probs(labels)
    assert soft_jaccard_loss(p, labels) < 1e-6
    assert soft_jaccard_loss(p.flip(1), labels) > 0.99
    # An intermediate prediction is in between.
    mid = soft_jaccard_loss(torch.full_like(p, 0.5), labels)
    assert 0.2 < mid < 0.9


def test_class_loss_hand_computed():
    labels = torch.tensor([[[0, 1], [1, 1]]])
    p_fg = torch.tensor([[[0.2, 0.9], [0.6, 0.5]]])
    probs = torch.stack([1 - p_fg, p_fg], 1)
    inter_fg, union_fg = 0.9 + 0.6 + 0.5, (0.2 + 2.0 + 3) - 2.0
    inter_bg, union_bg = 0.8, (0.8 + 0.1 + 0.4 + 0.5 + 1) - 0.8
    expected = 1 - 0.5 * ((inter_fg + 1e-6) / (union_fg + 1e-6) + (inter_bg + 1e-6) / (union_bg + 1e-6))
    assert soft_jaccard_loss(probs, labels).item() == pytest.approx(expected, rel=1e-5)


def test_esj_near_zero_for_tight_clusters_and_high_for_wrong_embeddings():
    torch.manual_seed(0)
    labels = blocks()
    good = embedding_soft_jaccard_loss(perfect_embeddings(labels), labels, margin=1.5)
    assert good < 1e-5
    noisy = embedding_soft_jaccard_loss(perfect_embeddings(labels, spread=0.2), labels, margin=1.5)
    assert good < noisy < 0.05
    # Identity embeddings (no offsets): pixels spread over the whole object, clusters overlap.
    bad = embedding_soft_jaccard_loss(coords(labels.shape[1:]).repeat(2, 1, 1, 1), labels, margin=3.0)
    assert bad > 0.4
    # All pixels on one point: every instance claims every pixel.
    collapsed = embedding_soft_jaccard_loss(torch.zeros(2, 2, 24, 24), labels, margin=3.0)
    assert collapsed > 0.6


def test_undefined_pixels_are_ignored():
    labels = blocks()
    emb, probs = perfect_embeddings(labels), one_hot_probs(labels)
    undefined = torch.where(torch.arange(24)[None, :, None] >= 20, -1, labels)
    # Wrong outputs where the labels are undefined change nothing.
    emb2, probs2 = emb.clone(), probs.clone()
    emb2[:, :, 20:, :] = 1000.0
    probs2[:, :, 20:, :] = probs2[:, :, 20:, :].flip(1)
    for e, p in ((emb, probs), (emb2, probs2)):
        loss = RDCNetLoss(1.5)(RDCNetOutput(e, p, p.log()), undefined)[0]
        assert loss < 1e-4
    # ...whereas the same wrong outputs on labelled pixels are penalised.
    assert RDCNetLoss(1.5)(RDCNetOutput(emb2, probs2, probs2.log()), labels)[0] > 0.1


def test_images_without_instances_add_zero():
    labels = blocks()
    labels[1] = 0
    emb = perfect_embeddings(labels)
    one = embedding_soft_jaccard_loss(emb[:1], labels[:1], 3.0)
    emb_bad = emb.clone()
    emb_bad[1] = torch.randn_like(emb_bad[1]) * 50  # anything in an empty image
    both = embedding_soft_jaccard_loss(emb_bad, labels, 3.0)
    assert both.item() == pytest.approx(one.item() / 2, abs=1e-7)


def test_esj_3d_and_anisotropic_units():
    labels = torch.zeros(1, 4, 10, 10, dtype=torch.long)
    labels[0, :2, :, :5] = 1
    labels[0, 2:, :, 5:] = 2
    emb = torch.zeros(1, 3, 4, 10, 10)
    emb[0, :, labels[0] == 2] = torch.tensor([4.0, 2.6, 2.6])[:, None]
    assert embedding_soft_jaccard_loss(emb, labels, margin=1.0) < 1e-5
    emb[0, :, labels[0] == 2] = torch.tensor([0.2, 0.0, 0.0])[:, None]  # 0.2 µm apart: indistinguishable
    assert embedding_soft_jaccard_loss(emb, labels, margin=1.0) > 0.3


def test_loss_gradients_flow_to_embeddings_and_probabilities():
    labels = blocks()
    emb = coords(labels.shape[1:]).repeat(2, 1, 1, 1).requires_grad_()
    logits = torch.zeros(2, 2, 24, 24, requires_grad=True)
    loss, parts = RDCNetLoss(3.0)(RDCNetOutput(emb, logits.softmax(1), logits), labels)
    loss.backward()
    assert emb.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
    assert set(parts) == {"class", "embedding"}


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="labels"):
        soft_jaccard_loss(torch.rand(1, 2, 8, 8), torch.zeros(1, 8, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        embedding_soft_jaccard_loss(torch.rand(1, 2, 8, 8), torch.zeros(1, 8, 8), 1.0)


def esj_definition(embeddings, labels, margin):
    """The ESJ loss as DESIGN.md defines it, every (instance, pixel) difference spelled out: the
    reference for the factored computation in rdcnet.losses."""
    s = 1.0 / (2 * sigma_from_margin(margin) ** 2)
    B, ndim = embeddings.shape[:2]
    total = embeddings.new_zeros(())
    for b in range(B):
        lab = labels[b].reshape(-1)
        fg = lab > 0
        if not bool(fg.any()):
            continue
        ids = torch.unique(lab[fg])
        emb = embeddings[b].reshape(ndim, -1)[:, fg].t()
        losses = []
        for k in ids:
            mine = lab[fg] == k
            centroid = emb[mine].mean(0)
            p = torch.exp(-(emb - centroid).pow(2).sum(1) * s)
            inter = p[mine].sum()
            union = p.sum() + mine.sum() - inter
            losses.append(1 - (inter + 1e-6) / (union + 1e-6))
        total = total + torch.stack(losses).mean()
    return total / B


@pytest.mark.parametrize("shape,n_labels,chunk", [
    ((1, 9, 11), 3, None), ((3, 16, 16), 7, None), ((2, 5, 7, 6), 5, None), ((2, 24, 20), 12, 50),
    ((1, 1, 1), 1, None), ((2, 3, 8, 8), 9, 7), ((1, 12, 12), 40, 1)])
def test_esj_matches_its_definition_values_and_gradients(shape, n_labels, chunk, monkeypatch):
    import rdcnet.losses as losses_module

    if chunk is not None:  # several chunks of instances
        monkeypatch.setattr(losses_module, "ESJ_CHUNK", chunk * int(np.prod(shape[1:])))
    g = torch.Generator().manual_seed(sum(shape) + n_labels)
    labels = torch.randint(-1, n_labels + 1, shape, generator=g)
    labels[0].view(-1)[0] = 1  # at least one instance
    ndim = len(shape) - 1
    spacing = torch.tensor([2.0, 0.5, 0.5][-ndim:]).view(1, ndim, *([1] * ndim))
    base = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape[1:]], indexing="ij"))
    emb = (base[None] * spacing + 1.5 * torch.randn((shape[0], ndim, *shape[1:]), generator=g, dtype=torch.float64))
    for margin in (0.7, 3.0):
        e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        fast, slow = embedding_soft_jaccard_loss(e1, labels, margin), esj_definition(e2, labels, margin)
        assert fast.dtype == torch.float64
        assert fast.item() == pytest.approx(slow.item(), rel=1e-10, abs=1e-12)
        fast.backward()
        slow.backward()
        torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-8, atol=1e-12)


def test_esj_float32_far_from_the_origin_and_under_autocast():
    """Float32 embeddings of a 512 × 512 crop (coordinates up to 511): the expanded squared
    distance must not lose the loss or its gradient to cancellation, bfloat16 autocast included."""
    g = torch.Generator().manual_seed(3)
    labels = torch.zeros(1, 512, 512, dtype=torch.long)
    for k, (y, x) in enumerate([(5, 5), (5, 500), (500, 5), (500, 500), (250, 250), (252, 262)], start=1):
        labels[0, y:y + 9, x:x + 9] = k
    base = torch.stack(torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij"))[None]
    emb64 = base.double() + torch.randn((1, 2, 512, 512), generator=g, dtype=torch.float64)
    e64 = emb64.clone().requires_grad_()
    slow = esj_definition(e64, labels, 2.0)
    slow.backward()
    for autocast in (False, True):
        e32 = emb64.float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fast = embedding_soft_jaccard_loss(e32, labels, 2.0)
        assert fast.dtype == torch.float32
        fast.backward()
        assert fast.item() == pytest.approx(slow.item(), rel=1e-4)
        torch.testing.assert_close(e32.grad.double(), e64.grad, rtol=1e-3, atol=1e-3 * e64.grad.abs().max().item())
