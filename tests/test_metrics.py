"""rdcnet.metrics: hand-computed cases, conventions for empty images, undefined pixels, errors."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch

from rdcnet import metrics as M

TH = M.DEFAULT_THRESHOLDS


def line(*segments, width=None):
    """A (1, width) label image from (label, start, stop) segments."""
    width = width or max(s[2] for s in segments)
    img = np.zeros((1, width), np.int32)
    for lab, a, b in segments:
        img[0, a:b] = lab
    return img


def brute_iou(true, pred):
    """Per-object loops: the obvious (slow) definition, for cross-checking."""
    valid = true >= 0
    t, p = np.where(valid, true, 0), np.where(valid, pred, 0)
    tids = [i for i in np.unique(t) if i > 0]
    pids = [j for j in np.unique(p) if j > 0]
    out = np.zeros((len(tids), len(pids)))
    for a, i in enumerate(tids):
        for b, j in enumerate(pids):
            inter = np.sum((t == i) & (p == j))
            union = np.sum((t == i) | (p == j))
            out[a, b] = inter / union
    return out, np.array(tids), np.array(pids)


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------


def test_hand_iou_dice_2d():
    true = np.zeros((4, 5), np.int32)
    true[0:2, 0:2] = 1  # 4 px
    true[3, 0:4] = 2  # 4 px
    pred = np.zeros((4, 5), np.uint8)
    pred[0:2, 0:3] = 5  # 6 px, contains true 1
    pred[3, 0:2] = 9  # 2 px inside true 2
    ious, tids, pids = M.iou_matrix(true, pred)
    assert tids.tolist() == [1, 2] and pids.tolist() == [5, 9]
    # IoU(1,5) = 4/6, IoU(2,9) = 2/4, no other overlap.
    np.testing.assert_allclose(ious, [[4 / 6, 0.0], [0.0, 0.5]])
    assert ious.dtype == np.float64
    # Dice(1,5) = 2*4/(4+6) = 0.8, Dice(2,9) = 2*2/(4+2) = 2/3; each object's best partner
    # is the other of its pair: BD both ways = (0.8 + 2/3)/2.
    assert M.sbd(true, pred) == pytest.approx((0.8 + 2 / 3) / 2)
    # AJI: C = 4 + 2, U = 6 + 4.
    assert M.aji(true, pred) == pytest.approx(6 / 10)
    assert M.match(true, pred, 0.5) == (2, 0, 0)  # IoUs 0.667 and exactly 0.5
    assert M.match(true, pred, 0.6) == (1, 1, 1)
    assert M.match(true, pred, 0.7) == (0, 2, 2)


def test_sbd_is_the_smaller_direction():
    true = np.zeros((3, 6), np.int32)
    true[0:2, 0:2] = 1  # 4 px
    pred = np.zeros((3, 6), np.int32)
    pred[0, 0:2] = 1  # 2 px inside the true object: Dice = 2*2/(4+2) = 2/3
    pred[2, 4:6] = 2  # 2 px, overlaps nothing: best Dice 0
    # BD(true, pred) = 2/3; BD(pred, true) = (2/3 + 0)/2 = 1/3; SBD = min = 1/3.
    assert M.sbd(true, pred) == pytest.approx(1 / 3)
    assert M.sbd(pred, true) == pytest.approx(1 / 3)


def test_aji_with_unused_prediction_and_missed_truth():
    true = np.zeros((5, 6), np.int32)
    true[0:2, 0:2] = 1  # G1: 4 px
    true[3, 0:4] = 2  # G2: 4 px
    true[4, 5] = 3  # G3: 1 px, overlaps no prediction
    pred = np.zeros((5, 6), np.int32)
    pred[0:2, 0:3] = 1  # S1: 6 px, IoU(G1) = 4/6
    pred[3, 0:2] = 2  # S2: 2 px, IoU(G2) = 2/4
    pred[0:2, 5] = 3  # S3: 2 px, never chosen
    # C = |G1∩S1| + |G2∩S2| = 4 + 2 = 6
    # U = |G1∪S1| + |G2∪S2| + |G3| + |S3| = 6 + 4 + 1 + 2 = 13
    assert M.aji(true, pred) == pytest.approx(6 / 13)


def test_aji_prediction_reused():
    true = line((1, 0, 4), (2, 4, 8))
    pred = line((7, 0, 8))
    # Both true objects choose the merged prediction (IoU 4/8 each): C = 4 + 4, U = 8 + 8.
    assert M.aji(true, pred) == pytest.approx(0.5)


def test_aji_ties_go_to_smallest_pred_id():
    true = line((1, 0, 12), width=16)
    pred = line((5, 0, 3), (3, 8, 16), width=16)
    # IoU(1,5) = 3/12 = 0.25, IoU(1,3) = 4/16 = 0.25: a tie; id 3 is chosen:
    # C = 4, U = |G ∪ S3| + |S5| = 16 + 3. (Choosing id 5 would give 3 / (12 + 8).)
    assert M.aji(true, pred) == pytest.approx(4 / 19)


def test_merge_error_at_half():
    true = line((1, 0, 24), (2, 24, 32))
    pred = line((1, 0, 32))  # merges both: IoU(1) = 24/32, IoU(2) = 8/32
    assert M.match(true, pred, 0.5) == (1, 0, 1)
    s = M.precision_recall_f1(true, pred, [0.5])
    assert s.precision[0] == 1.0 and s.recall[0] == 0.5
    assert s.f1[0] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


def test_split_error_at_half():
    true = line((1, 0, 32))
    pred = line((4, 0, 24), (6, 24, 32))
    assert M.match(true, pred, 0.5) == (1, 1, 0)
    s = M.precision_recall_f1(true, pred, [0.5])
    assert s.precision[0] == 0.5 and s.recall[0] == 1.0


def test_exact_half_split_is_still_one_to_one():
    # An object split into two exact halves has two partners at IoU exactly 0.5.
    true = line((1, 0, 8))
    pred = line((1, 0, 4), (2, 4, 8))
    assert M.match(true, pred, 0.5) == (1, 1, 0)


def test_low_threshold_uses_optimal_not_greedy_matching():
    true = line((1, 0, 10), (2, 10, 20))  # a, c
    pred = line((2, 0, 4), (1, 4, 14), width=20)  # b2, b1
    ious, _, _ = M.iou_matrix(true, pred)
    # IoU(a,b1) = 6/14, IoU(a,b2) = 4/10, IoU(c,b1) = 4/16, IoU(c,b2) = 0
    np.testing.assert_allclose(ious, [[6 / 14, 4 / 10], [4 / 16, 0.0]])
    # Greedy (highest IoU first) takes a-b1 and leaves c unmatched (tp = 1);
    # the optimal one-to-one matching is a-b2, c-b1.
    assert M.match(true, pred, 0.25) == (2, 0, 0)
    assert M.match(true, pred, 0.3) == (1, 1, 1)  # c-b1 no longer a candidate
    assert M.match(true, pred, 0.5) == (0, 2, 2)


def test_low_threshold_maximises_number_of_matches_over_iou_sum():
    true = line((1, 0, 20), (2, 20, 40))  # a, c
    pred = line((1, 5, 25), (2, 0, 5), width=40)  # b1, b2
    # IoU(a,b1) = 15/25 = 0.6, IoU(c,b1) = 5/35, IoU(a,b2) = 5/20.
    # Max IoU sum would take {a-b1} (0.6 > 0.25 + 0.143); we maximise the number of matches.
    assert M.match(true, pred, 0.1) == (2, 0, 0)
    assert M.match(true, pred, 0.2) == (1, 1, 1)


def test_3d_hand_case():
    true = np.zeros((2, 3, 3), np.int16)
    true[:, 0:2, 0:2] = 1  # 8 voxels
    true[1, 2, 2] = 2  # 1 voxel
    pred = np.zeros((2, 3, 3), np.int64)
    pred[0, 0:2, 0:2] = 3  # 4 voxels inside true 1: IoU 4/8
    pred[1, 0:2, 0:2] = 4  # 4 voxels inside true 1: IoU 4/8
    pred[1, 2, 2] = 5  # exact
    ious, tids, pids = M.iou_matrix(true, pred)
    np.testing.assert_allclose(ious, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert M.match(true, pred, 0.5) == (2, 1, 0)
    assert M.match(true, pred, 0.75) == (1, 2, 1)
    # Dice(1,3) = Dice(1,4) = 8/12; BD(true,pred) = (2/3 + 1)/2, BD(pred,true) = (2/3+2/3+1)/3
    assert M.sbd(true, pred) == pytest.approx(min((2 / 3 + 1) / 2, (4 / 3 + 1) / 3))
    # AJI: true 1 takes pred 3 (tie, smaller id): C = 4 + 1, U = 8 + 1 + |S4| = 13
    assert M.aji(true, pred) == pytest.approx(5 / 13)


def test_non_consecutive_and_huge_ids():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, (20, 17)).astype(np.int32)
    pred = rng.integers(0, 5, (20, 17)).astype(np.int32)
    tmap = np.array([0, 3, 100, 7, 42, 9])
    pmap = np.array([0, 2_000_000_000, 2, 9, 123_456_789_012], np.int64)
    ious_a, t_a, p_a = M.iou_matrix(true, pred)
    ious_b, t_b, p_b = M.iou_matrix(tmap[true], pmap[pred])
    assert t_b.tolist() == sorted(tmap[1:].tolist())
    assert p_b.tolist() == sorted(pmap[1:].tolist())
    # Rows/columns follow sorted ids: reorder the compact result accordingly.
    np.testing.assert_allclose(ious_b, ious_a[np.argsort(tmap[1:])][:, np.argsort(pmap[1:])])
    e_a = M.evaluate_image(true, pred)
    e_b = M.evaluate_image(tmap[true], pmap[pred].astype(np.uint64))
    for k in ("f1", "precision", "recall"):
        np.testing.assert_array_equal(e_a[k], e_b[k])
    assert e_a["sbd"] == pytest.approx(e_b["sbd"]) and e_a["aji"] == pytest.approx(e_b["aji"])


@pytest.mark.parametrize("seed", range(5))
def test_iou_matrix_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 15) if seed % 2 else (4, 6, 7)
    true = rng.integers(-1, 7, shape)
    pred = rng.integers(0, 9, shape).astype(np.uint16)
    ious, tids, pids = M.iou_matrix(true, pred)
    ref, rt, rp = brute_iou(true, pred)
    assert tids.tolist() == rt.tolist() and pids.tolist() == rp.tolist()
    np.testing.assert_allclose(ious, ref)


@pytest.mark.parametrize("seed", range(4))
def test_matching_is_maximum_one_to_one(seed):
    # Cross-check tp against an exhaustive search over matchings of a small IoU matrix.
    rng = np.random.default_rng(100 + seed)
    true = rng.integers(0, 5, (6, 7))
    pred = rng.integers(0, 5, (6, 7))
    ious, _, _ = M.iou_matrix(true, pred)
    for t in (0.1, 0.2, 0.3, 0.5, 0.7):
        cand = ious >= t
        n_t, n_p = cand.shape
        best = 0
        for perm in itertools.permutations(range(max(n_t, n_p)), n_t):
            best = max(best, sum(1 for i, j in enumerate(perm) if j < n_p and cand[i, j]))
        tp, fp, fn = M.match(true, pred, t)
        assert tp == best and fp == n_p - tp and fn == n_t - tp


# --------------------------------------------------------------------------------------------
# Perfect, empty and undefined
# --------------------------------------------------------------------------------------------


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 10, (16, 16)).astype(np.int32)
    perm = np.r_[0, rng.permutation(np.arange(50, 59))]
    pred = perm[true]  # same partition, other ids
    r = M.evaluate_image(true, pred)
    for k in ("precision", "recall", "f1"):
        np.testing.assert_array_equal(r[k], np.ones(len(TH)))
    assert r["sbd"] == 1.0 and r["aji"] == 1.0
    assert r["f1@0.5"] == 1.0 and r["f1@0.95"] == 1.0 and r["f1@0.1"] == 1.0
    assert r["n_true"] == r["n_pred"] == 9


def test_both_empty():
    z = np.zeros((5, 5), np.int32)
    s = M.precision_recall_f1(z, z)
    for arr in (s.precision, s.recall, s.f1):
        np.testing.assert_array_equal(arr, 1.0)
    assert (s.tp == 0).all() and (s.fp == 0).all() and (s.fn == 0).all()
    assert M.sbd(z, z) == 1.0 and M.aji(z, z) == 1.0
    assert M.match(z, z, 0.5) == (0, 0, 0)
    assert M.iou_matrix(z, z)[0].shape == (0, 0)


def test_no_predictions():
    true = line((1, 0, 3), (2, 4, 6))
    pred = np.zeros_like(true)
    s = M.precision_recall_f1(true, pred, [0.5])
    assert (s.tp[0], s.fp[0], s.fn[0]) == (0, 0, 2)
    assert s.precision[0] == 0.0 and s.recall[0] == 0.0 and s.f1[0] == 0.0
    assert M.sbd(true, pred) == 0.0 and M.aji(true, pred) == 0.0
    assert M.iou_matrix(true, pred)[0].shape == (2, 0)


def test_no_true_objects():
    true = np.zeros((1, 6), np.int32)
    pred = line((3, 1, 4), width=6)
    s = M.precision_recall_f1(true, pred, [0.5])
    assert (s.tp[0], s.fp[0], s.fn[0]) == (0, 1, 0)
    assert s.precision[0] == 0.0 and s.recall[0] == 0.0 and s.f1[0] == 0.0
    assert M.sbd(true, pred) == 0.0 and M.aji(true, pred) == 0.0


def test_undefined_truth_pixels_are_ignored():
    true = np.zeros((4, 8), np.int32)
    true[0:2, 0:2] = 1
    true[:, 4:] = -1  # undefined region
    pred = np.zeros((4, 8), np.int32)
    pred[0:2, 0:2] = 7
    pred[0:2, 4:6] = 7  # same object spills into the undefined region: not counted
    pred[3, 5:8] = 8  # object wholly inside the undefined region: does not exist
    r = M.evaluate_image(true, pred)
    assert r["n_true"] == 1 and r["n_pred"] == 1
    np.testing.assert_array_equal(r["f1"], 1.0)
    assert r["sbd"] == 1.0 and r["aji"] == 1.0
    ious, _, pids = M.iou_matrix(true, pred)
    assert pids.tolist() == [7] and ious[0, 0] == 1.0
    # The same prediction against a truth without the undefined region is penalised.
    r0 = M.evaluate_image(np.where(true < 0, 0, true), pred)
    assert r0["n_pred"] == 2 and r0["f1@0.5"] < 1.0 and r0["aji"] < 1.0


def test_all_undefined_is_both_empty():
    true = -np.ones((3, 3), np.int64)
    pred = np.arange(9).reshape(3, 3)
    r = M.evaluate_image(true, pred)
    assert r["n_true"] == r["n_pred"] == 0 and r["f1@0.5"] == 1.0 and r["aji"] == 1.0


# --------------------------------------------------------------------------------------------
# Data sets, tables, plot
# --------------------------------------------------------------------------------------------


def _dataset():
    t1 = line((1, 0, 24), (2, 24, 32))
    p1 = line((1, 0, 32))  # merge: tp 1, fp 0, fn 1 at 0.5
    t2 = line((1, 0, 8))
    p2 = line((5, 0, 8))  # perfect
    return [t1, t2], [p1, p2]


def test_evaluate_means_per_image_values():
    trues, preds = _dataset()
    s = M.evaluate(trues, preds, names=["merge", "perfect"])
    s2 = M.evaluate(list(zip(trues, preds)))
    assert s.names == ["merge", "perfect"] and s2.names == ["0", "1"]
    assert s.per_image[0]["image"] == "merge"
    # per image F1@0.5: 2/3 and 1 -> mean 5/6; pooled: tp 2, fp 0, fn 1 -> 4/5
    assert s.per_image[0]["f1@0.5"] == pytest.approx(2 / 3)
    assert s.mean["f1@0.5"] == pytest.approx(5 / 6)
    i = int(np.flatnonzero(np.isclose(s.thresholds, 0.5))[0])
    assert s.mean["f1"][i] == pytest.approx(5 / 6) and s2.mean["f1"][i] == pytest.approx(5 / 6)
    assert s.pooled["f1"][i] == pytest.approx(4 / 5)
    assert s.mean["aji"] == pytest.approx((s.per_image[0]["aji"] + 1.0) / 2)
    assert s.mean["n_true"] == 1.5


def test_summary_markdown_and_csv(tmp_path):
    s = M.evaluate(*_dataset(), names=["merge", "perfect"])
    md = M.summary_table_markdown(s)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| image |") and "F1@0.5" in lines[0] and "AJI" in lines[0]
    assert len(lines) == 2 + 2 + 1
    assert lines[-1].startswith("| mean |") and "0.833" in lines[-1]
    with pytest.raises(ValueError, match="0.42"):
        M.summary_table_markdown(s, threshold=0.42)
    path = tmp_path / "m.csv"
    M.to_csv(s, path)
    rows = list(csv.DictReader(open(path)))
    assert [r["image"] for r in rows] == ["merge", "perfect", "mean"]
    assert float(rows[-1]["f1@0.5"]) == pytest.approx(5 / 6)


def test_plot_writes_png(tmp_path):
    s = M.evaluate(*_dataset())
    path = tmp_path / "f1.png"
    M.plot_f1_vs_iou({"model": (s.thresholds, s.mean["f1"]), "ideal": (TH, np.ones(len(TH)))}, path)
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_thresholds():
    assert len(TH) == 18 and TH[0] == 0.1 and TH[-1] == 0.95
    assert "f1@0.15" in M.evaluate_image(line((1, 0, 2)), line((1, 0, 2)))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def test_torch_tensors_accepted():
    true = torch.tensor(line((1, 0, 4), (2, 4, 8)))
    pred = torch.tensor(line((3, 0, 4), (4, 4, 6), width=8), dtype=torch.int64)
    assert M.match(true, pred, 0.5) == (2, 0, 0)
    assert M.aji(true, pred) == pytest.approx((4 + 2) / (4 + 4))


def test_shape_mismatch_names_both():
    with pytest.raises(ValueError, match=r"true \(4, 5\).*pred \(4, 6\)"):
        M.evaluate_image(np.zeros((4, 5), int), np.zeros((4, 6), int))


@pytest.mark.parametrize(
    "true, pred, name",
    [
        (np.zeros((3, 3), np.float32), np.zeros((3, 3), int), "true"),
        (np.zeros((3, 3), int), np.zeros((3, 3), np.float64), "pred"),
        (np.zeros((3, 3), int), np.zeros((3, 3), bool), "pred"),
        (torch.zeros(3, 3), np.zeros((3, 3), int), "true"),
    ],
)
def test_non_integer_raises_type_error(true, pred, name):
    with pytest.raises(TypeError, match=name):
        M.match(true, pred, 0.5)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="true"):
        M.sbd(np.zeros(5, int), np.zeros(5, int))  # 1D
    with pytest.raises(ValueError, match="pred"):
        M.aji(np.zeros((2, 2), int), -np.ones((2, 2), int))  # negative predicted labels
    with pytest.raises(ValueError, match="thresholds"):
        M.precision_recall_f1(np.zeros((2, 2), int), np.zeros((2, 2), int), [0.0, 0.5])
    with pytest.raises(ValueError, match="thresholds"):
        M.match(np.zeros((2, 2), int), np.zeros((2, 2), int), 1.5)
    with pytest.raises(ValueError):
        M.evaluate([], [])
    with pytest.raises(ValueError, match="length"):
        M.evaluate([np.zeros((2, 2), int)], [])
