"""Instance segmentation metrics for 2D and 3D label images.

Label images are integer arrays of the same shape, 2D ``(Y, X)`` or 3D ``(Z, Y, X)``.
Label 0 is background; every other value is one object (ids need not be consecutive, and
the two images' ids are unrelated). In the ground truth (``true``), values < 0 mark
*undefined* pixels: they are removed from **both** images before anything is computed, so a
prediction there is neither rewarded nor penalised, and a predicted object lying wholly in
undefined pixels does not exist for the metrics. Predicted labels may be of any integer
dtype but must be >= 0. NumPy arrays, anything ``np.asarray`` accepts, and torch tensors
(moved to the CPU) are accepted.

Definitions (|X| is the number of (valid) pixels of X):

* ``IoU(a, b) = |a ∩ b| / |a ∪ b|`` and ``Dice(a, b) = 2 |a ∩ b| / (|a| + |b|)``.
* **Matching** at an IoU threshold ``t`` (:func:`match`): a one-to-one matching between true
  and predicted objects in which only pairs with ``IoU >= t`` may be matched. For ``t > 0.5``
  every object has at most one such partner, so the matching is unique. For ``t <= 0.5``
  (including exactly 0.5, where an object split into two exact halves has two partners at
  IoU 0.5) the matching is chosen optimally with
  :func:`scipy.optimize.linear_sum_assignment`: it maximises the number of matched pairs and,
  among matchings of that size, the sum of their IoUs. ``tp`` = matched pairs,
  ``fp = n_pred - tp``, ``fn = n_true - tp``.
* **precision** ``= tp / (tp + fp)``, **recall** ``= tp / (tp + fn)``,
  **F1** ``= 2 tp / (2 tp + fp + fn)``. A 0/0 is 1 when both images have no objects
  (nothing to find, nothing wrongly found) and 0 otherwise, i.e. no predictions but some
  true objects gives precision 0, recall 0, F1 0; predictions but no true objects gives
  precision 0, recall 0, F1 0.
* **SBD** (symmetric best Dice, CVPPP leaf segmentation challenge):
  ``BD(A, B) = mean over a in A of max over b in B of Dice(a, b)`` (0 for an ``a`` that
  overlaps nothing), ``SBD = min(BD(true, pred), BD(pred, true))``; background excluded.
  Both images empty: 1; exactly one empty: 0.
* **AJI** (aggregated Jaccard index, Kumar et al. 2017, IEEE TMI, MoNuSeg): for every true
  object ``G_i`` pick the predicted object ``S_j*`` of highest IoU with it (a prediction may be
  picked by several true objects; ties go to the smallest predicted id).
  ``C = Σ_i |G_i ∩ S_j*|``, ``U = Σ_i |G_i ∪ S_j*| + Σ_k |S_k|`` over predicted objects never
  picked; a true object that overlaps no prediction adds ``|G_i|`` to ``U`` only.
  ``AJI = C / U``; both images empty: 1 (one empty: 0).

Over a data set (:func:`evaluate`), every metric is computed **per image and then averaged
over images** (arithmetic mean of the per-image values, each image weighing the same).
For reference, the summary also carries ``pooled`` precision/recall/F1 computed from the
tp/fp/fn summed over all images.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchingScores",
    "Summary",
    "iou_matrix",
    "match",
    "precision_recall_f1",
    "sbd",
    "aji",
    "evaluate_image",
    "evaluate",
    "summary_table_markdown",
    "to_csv",
    "plot_f1_vs_iou",
]

#: IoU thresholds 0.1, 0.15, ..., 0.95 (18 values).
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(0.1, 0.951, 0.05), 2)


# ----------------------------------------------------------------------------------------------
# Input handling and the sparse overlap table
# ----------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer label image, got dtype {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label image, got shape {a.shape}")
    return a


def _check_pair(true: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _to_numpy(true, "true")
    p = _to_numpy(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(
            f"true and pred must have the same shape, got true {t.shape} and pred {p.shape}"
        )
    if p.dtype.kind == "i" and p.size and p.min() < 0:
        raise ValueError("pred must contain labels >= 0 (0 = background)")
    return t, p


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values (sorted), their counts, and each value's index into them."""
    if values.size == 0:
        return values[:0].copy(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    vmax = int(values.max())
    if vmax <= max(1 << 22, 4 * values.size):  # dense lookup table: O(n), no sort
        v = values.astype(np.intp, copy=False)
        counts = np.bincount(v)
        ids = np.flatnonzero(counts)
        lut = np.zeros(vmax + 1, np.int64)
        lut[ids] = np.arange(ids.size)
        return ids.astype(values.dtype), counts[ids].astype(np.int64), lut[v]
    ids, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return ids, counts.astype(np.int64), inverse.reshape(-1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class _Overlaps:
    """Sparse contingency table: object ids/areas and the nonzero intersections."""

    true_ids: np.ndarray
    true_areas: np.ndarray  # int64 (n_true,)
    pred_ids: np.ndarray
    pred_areas: np.ndarray  # int64 (n_pred,)
    rows: np.ndarray  # int64 (n_pairs,) index into true_ids
    cols: np.ndarray  # int64 (n_pairs,) index into pred_ids
    inter: np.ndarray  # int64 (n_pairs,) |G ∩ S| > 0

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        return self.true_areas[self.rows] + self.pred_areas[self.cols] - self.inter

    @property
    def iou(self) -> np.ndarray:
        return self.inter / self.union

    @property
    def dice(self) -> np.ndarray:
        return 2.0 * self.inter / (self.true_areas[self.rows] + self.pred_areas[self.cols])


def _overlaps(true: Any, pred: Any) -> _Overlaps:
    t, p = _check_pair(true, pred)
    t = t.reshape(-1)
    p = p.reshape(-1)
    if t.dtype.kind == "i":
        valid = t >= 0
        if not valid.all():  # undefined truth pixels leave both images
            t = t[valid]
            p = p[valid]
    ft = t > 0
    fp = p > 0
    true_ids, true_areas, ti = _compact(t[ft])
    pred_ids, pred_areas, pi = _compact(p[fp])
    # Index of each foreground pixel's object, -1 on background, then the overlapping pixels.
    t_idx = np.full(t.size, -1, np.int64)
    t_idx[ft] = ti
    p_idx = np.full(p.size, -1, np.int64)
    p_idx[fp] = pi
    both = ft & fp
    n_t, n_p = true_ids.size, pred_ids.size
    keys = t_idx[both] * n_p + p_idx[both]
    if keys.size == 0:
        keys_u = np.zeros(0, np.int64)
        inter = np.zeros(0, np.int64)
    elif n_t * n_p <= max(1 << 22, 4 * keys.size):
        counts = np.bincount(keys, minlength=n_t * n_p)
        keys_u = np.flatnonzero(counts)
        inter = counts[keys_u].astype(np.int64)
    else:
        keys_u, inter = np.unique(keys, return_counts=True)
        inter = inter.astype(np.int64)
    rows, cols = np.divmod(keys_u.astype(np.int64), max(n_p, 1))
    return _Overlaps(true_ids, true_areas, pred_ids, pred_areas, rows, cols, inter)


def _check_thresholds(thresholds: Any) -> np.ndarray:
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if th.ndim != 1 or th.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1D sequence, got shape {th.shape}")
    if not np.all((th > 0) & (th <= 1)):
        raise ValueError(f"thresholds must lie in (0, 1], got {th.tolist()}")
    return th


def _threshold_key(t: float) -> str:
    return f"{float(t):g}"


# ----------------------------------------------------------------------------------------------
# Metrics on one image
# ----------------------------------------------------------------------------------------------


def iou_matrix(true: Any, pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense IoU matrix between the true and the predicted objects of one image.

    Built from a sparse contingency table of the pixels (one pass over the image, no per-object
    loops). Undefined truth pixels (< 0) are removed from both images first.

    Returns ``(ious, true_ids, pred_ids)``: ``ious`` float64 of shape ``(n_true, n_pred)`` with
    ``ious[i, j] = IoU(true == true_ids[i], pred == pred_ids[j])``; ``true_ids`` and ``pred_ids``
    are the object ids present (background and undefined excluded), sorted ascending, in the
    input's dtype.
    """
    ov = _overlaps(true, pred)
    ious = np.zeros((ov.n_true, ov.n_pred), np.float64)
    ious[ov.rows, ov.cols] = ov.iou
    return ious, ov.true_ids, ov.pred_ids


def _tp_at(ov: _Overlaps, iou: np.ndarray, threshold: float) -> int:
    """Size of the one-to-one matching described in :func:`match`."""
    keep = iou >= threshold
    r, c, w = ov.rows[keep], ov.cols[keep], iou[keep]
    if r.size == 0:
        return 0
    deg_r = np.bincount(r, minlength=ov.n_true)
    deg_c = np.bincount(c, minlength=ov.n_pred)
    simple = (deg_r[r] == 1) & (deg_c[c] == 1)
    tp = int(simple.sum())
    if simple.all():  # always the case for threshold > 0.5
        return tp
    r, c, w = r[~simple], c[~simple], w[~simple]
    # Connected components of the bipartite candidate graph; one assignment per component.
    n = ov.n_true + ov.n_pred
    graph = coo_matrix((np.ones(r.size), (r, ov.n_true + c)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[r]
    order = np.argsort(edge_comp, kind="stable")
    r, c, w, edge_comp = r[order], c[order], w[order], edge_comp[order]
    starts = np.flatnonzero(np.r_[True, edge_comp[1:] != edge_comp[:-1]])
    ends = np.r_[starts[1:], edge_comp.size]
    for s, e in zip(starts, ends):
        rr, ri = np.unique(r[s:e], return_inverse=True)
        cc, ci = np.unique(c[s:e], return_inverse=True)
        # Lexicographic objective: one more match outweighs any IoU sum (which is < big).
        big = float(min(rr.size, cc.size) + 1)
        weights = np.zeros((rr.size, cc.size), np.float64)
        weights[ri, ci] = big + w[s:e]
        a, b = linear_sum_assignment(weights, maximize=True)
        tp += int(np.count_nonzero(weights[a, b] > 0))
    return tp


def match(true: Any, pred: Any, threshold: float) -> tuple[int, int, int]:
    """One-to-one matching of objects at an IoU threshold; returns ``(tp, fp, fn)``.

    Only pairs with ``IoU >= threshold`` can be matched and each object is matched at most
    once. For ``threshold > 0.5`` such pairs never share an object, so the matching is unique.
    For ``threshold <= 0.5`` it is computed with :func:`scipy.optimize.linear_sum_assignment`
    on the IoU matrix (restricted to pairs with ``IoU >= threshold``), maximising first the
    number of matched pairs and then the sum of their IoUs; a greedy highest-IoU-first
    matching can find fewer pairs. ``tp`` = matched pairs, ``fp = n_pred - tp``,
    ``fn = n_true - tp``. ``threshold`` must lie in (0, 1].
    """
    th = _check_thresholds(threshold)
    if th.size != 1:
        raise ValueError("threshold must be a single number")
    ov = _overlaps(true, pred)
    tp = _tp_at(ov, ov.iou, float(th[0]))
    return tp, ov.n_pred - tp, ov.n_true - tp


@dataclasses.dataclass(frozen=True)
class MatchingScores:
    """Matching counts and scores of one image, one entry per IoU threshold.

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
    ``f1 = 2 tp / (2 tp + fp + fn)``; a 0/0 is 1 if the image has no true and no predicted
    objects, and 0 otherwise.
    """

    thresholds: np.ndarray  # float64 (T,)
    precision: np.ndarray  # float64 (T,)
    recall: np.ndarray  # float64 (T,)
    f1: np.ndarray  # float64 (T,)
    tp: np.ndarray  # int64 (T,)
    fp: np.ndarray  # int64 (T,)
    fn: np.ndarray  # int64 (T,)
    n_true: int
    n_pred: int


def _ratio(num: np.ndarray, den: np.ndarray, both_empty: bool) -> np.ndarray:
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(num.shape, 1.0 if both_empty else 0.0)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _scores(ov: _Overlaps, thresholds: np.ndarray) -> MatchingScores:
    iou = ov.iou
    tp = np.array([_tp_at(ov, iou, float(t)) for t in thresholds], np.int64)
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    empty = ov.n_true == 0 and ov.n_pred == 0
    return MatchingScores(
        thresholds=thresholds.copy(),
        precision=_ratio(tp, tp + fp, empty),
        recall=_ratio(tp, tp + fn, empty),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, empty),
        tp=tp,
        fp=fp,
        fn=fn,
        n_true=ov.n_true,
        n_pred=ov.n_pred,
    )


def precision_recall_f1(
    true: Any, pred: Any, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
) -> MatchingScores:
    """Precision, recall and F1 of the one-to-one matching (see :func:`match`) per threshold.

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``, ``f1 = 2 tp / (2 tp + fp + fn)``.
    Conventions for 0/0: both images without objects → precision = recall = F1 = 1; otherwise
    a 0/0 is 0 (no predictions → precision 0 and recall 0; no true objects → precision 0 and
    recall 0; F1 is then 0 as well). Returns a :class:`MatchingScores` whose arrays have one
    entry per threshold.
    """
    th = _check_thresholds(thresholds)
    return _scores(_overlaps(true, pred), th)


def _bd(n_a: int, a_idx: np.ndarray, dice: np.ndarray) -> float:
    best = np.zeros(n_a, np.float64)
    np.maximum.at(best, a_idx, dice)
    return float(best.mean())


def _sbd(ov: _Overlaps) -> float:
    if ov.n_true == 0 and ov.n_pred == 0:
        return 1.0
    if ov.n_true == 0 or ov.n_pred == 0:
        return 0.0
    dice = ov.dice
    return min(_bd(ov.n_true, ov.rows, dice), _bd(ov.n_pred, ov.cols, dice))


def sbd(true: Any, pred: Any) -> float:
    """Symmetric best Dice (CVPPP): ``min(BD(true, pred), BD(pred, true))``.

    ``BD(A, B)`` is the mean over the objects ``a`` of ``A`` of ``max_b Dice(a, b)`` over the
    objects of ``B`` (0 if ``a`` overlaps none), with ``Dice(a, b) = 2|a ∩ b| / (|a| + |b|)``.
    Background is excluded, undefined truth pixels are removed from both images. Both images
    empty → 1; exactly one empty → 0.
    """
    return _sbd(_overlaps(true, pred))


def _aji(ov: _Overlaps) -> float:
    if ov.n_true == 0 and ov.n_pred == 0:
        return 1.0
    iou = ov.iou
    union_pairs = ov.union
    # Best prediction per true object: highest IoU, ties to the smallest predicted id.
    # Pairs are sorted by (row, col); a stable sort on -iou within rows keeps that tie rule.
    order = np.lexsort((ov.cols, -iou, ov.rows))
    rows_sorted = ov.rows[order]
    first = order[np.r_[True, rows_sorted[1:] != rows_sorted[:-1]]] if order.size else order
    covered = np.zeros(ov.n_true, bool)
    covered[ov.rows[first]] = True
    c = int(ov.inter[first].sum())
    u = int(union_pairs[first].sum()) + int(ov.true_areas[~covered].sum())
    used = np.zeros(ov.n_pred, bool)
    used[ov.cols[first]] = True
    u += int(ov.pred_areas[~used].sum())
    return c / u if u > 0 else 0.0


def aji(true: Any, pred: Any) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017).

    For each true object ``G_i`` the predicted object ``S_j*`` of highest IoU is taken (reuse
    allowed; ties to the smallest predicted id); ``C = Σ_i |G_i ∩ S_j*|``,
    ``U = Σ_i |G_i ∪ S_j*| + Σ_k |S_k|`` over the predictions never taken; a true object
    overlapping no prediction adds ``|G_i|`` to ``U`` only. ``AJI = C / U``. Both images empty
    → 1; exactly one empty → 0. Undefined truth pixels are removed from both images.
    """
    return _aji(_overlaps(true, pred))


def evaluate_image(
    true: Any, pred: Any, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """All metrics of one image from a single overlap table.

    Keys: ``thresholds``, ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` (arrays over
    thresholds, see :func:`precision_recall_f1`); for every threshold ``t`` the scalars
    ``"precision@t"``, ``"recall@t"``, ``"f1@t"`` (``t`` formatted with ``:g``, e.g.
    ``"f1@0.5"``); ``sbd`` (:func:`sbd`), ``aji`` (:func:`aji`), ``n_true``, ``n_pred`` (object
    counts after removing undefined pixels).
    """
    th = _check_thresholds(thresholds)
    ov = _overlaps(true, pred)
    s = _scores(ov, th)
    out: dict[str, Any] = {
        "thresholds": s.thresholds,
        "precision": s.precision,
        "recall": s.recall,
        "f1": s.f1,
        "tp": s.tp,
        "fp": s.fp,
        "fn": s.fn,
    }
    for i, t in enumerate(th):
        k = _threshold_key(t)
        out[f"precision@{k}"] = float(s.precision[i])
        out[f"recall@{k}"] = float(s.recall[i])
        out[f"f1@{k}"] = float(s.f1[i])
    out["sbd"] = _sbd(ov)
    out["aji"] = _aji(ov)
    out["n_true"] = ov.n_true
    out["n_pred"] = ov.n_pred
    return out


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    """Result of :func:`evaluate`.

    ``per_image``: one :func:`evaluate_image` dict per image, in order, with an added
    ``"image"`` name. ``mean``: the same keys (except ``tp``/``fp``/``fn``) holding the
    arithmetic mean over images of the per-image values (arrays averaged element-wise);
    ``mean["n_true"]``/``mean["n_pred"]`` are mean object counts. ``pooled``: precision, recall
    and F1 arrays from tp/fp/fn summed over all images (0/0 → 1 only if the whole data set has
    no objects), with the summed ``tp``, ``fp``, ``fn``.
    """

    thresholds: np.ndarray
    names: list[str]
    per_image: list[dict[str, Any]]
    mean: dict[str, Any]
    pooled: dict[str, Any]


def evaluate(
    true_images: Iterable[Any],
    pred_images: Iterable[Any] | None = None,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    names: Sequence[str] | None = None,
) -> Summary:
    """Evaluate a data set: metrics per image, then the mean over images.

    Call as ``evaluate(true_list, pred_list)`` or ``evaluate(pairs)`` with an iterable of
    ``(true, pred)`` pairs. ``names`` (optional) label the images in tables (default
    ``"0"``, ``"1"``, ...). Every metric is computed per image (:func:`evaluate_image`) and
    the summary's ``mean`` is the unweighted arithmetic mean over images of those values; see
    :class:`Summary` for the pooled alternative also returned.
    """
    th = _check_thresholds(thresholds)
    if pred_images is None:
        pairs = [tuple(p) for p in true_images]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("evaluate(pairs) expects an iterable of (true, pred) pairs")
    else:
        trues, preds = list(true_images), list(pred_images)
        if len(trues) != len(preds):
            raise ValueError(
                f"true_images and pred_images differ in length: {len(trues)} vs {len(preds)}"
            )
        pairs = list(zip(trues, preds))
    if not pairs:
        raise ValueError("evaluate needs at least one (true, pred) image pair")
    if names is None:
        names = [str(i) for i in range(len(pairs))]
    names = [str(n) for n in names]
    if len(names) != len(pairs):
        raise ValueError(f"names has {len(names)} entries for {len(pairs)} images")

    per_image = []
    for name, (t, p) in zip(names, pairs):
        row = evaluate_image(t, p, th)
        per_image.append({"image": name, **row})

    mean: dict[str, Any] = {"image": "mean", "thresholds": th.copy()}
    for key in per_image[0]:
        if key in ("image", "thresholds", "tp", "fp", "fn"):
            continue
        vals = [r[key] for r in per_image]
        if isinstance(vals[0], np.ndarray):
            mean[key] = np.mean(np.stack(vals), axis=0)
        else:
            mean[key] = float(np.mean(vals))

    tp = np.sum([r["tp"] for r in per_image], axis=0)
    fp = np.sum([r["fp"] for r in per_image], axis=0)
    fn = np.sum([r["fn"] for r in per_image], axis=0)
    empty = sum(r["n_true"] + r["n_pred"] for r in per_image) == 0
    pooled = {
        "thresholds": th.copy(),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }
    return Summary(thresholds=th.copy(), names=names, per_image=per_image, mean=mean, pooled=pooled)


def _at(row: Mapping[str, Any], metric: str, threshold: float) -> float:
    key = f"{metric}@{_threshold_key(threshold)}"
    if key not in row:
        raise ValueError(f"threshold {threshold:g} was not evaluated (no key {key!r})")
    return float(row[key])


def summary_table_markdown(summary: Summary, threshold: float = 0.5, digits: int = 3) -> str:
    """A Markdown table: one row per image and a final ``mean`` row (mean over images).

    Columns: image, n_true, n_pred, precision, recall and F1 at IoU ``threshold`` (which must be
    one of the evaluated thresholds), SBD, AJI.
    """
    tk = _threshold_key(threshold)
    header = (
        f"| image | n_true | n_pred | precision@{tk} | recall@{tk} | F1@{tk} | SBD | AJI |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )

    def fmt(x: float) -> str:
        return f"{x:.{digits}f}"

    def line(row: Mapping[str, Any], counts: tuple[str, str]) -> str:
        return (
            f"| {row['image']} | {counts[0]} | {counts[1]} | "
            f"{fmt(_at(row, 'precision', threshold))} | "
            f"{fmt(_at(row, 'recall', threshold))} | {fmt(_at(row, 'f1', threshold))} | "
            f"{fmt(row['sbd'])} | {fmt(row['aji'])} |\n"
        )

    body = "".join(line(r, (str(r["n_true"]), str(r["n_pred"]))) for r in summary.per_image)
    m = summary.mean
    body += line(m, (f"{m['n_true']:.1f}", f"{m['n_pred']:.1f}"))
    return header + body


def to_csv(summary: Summary, path: str | os.PathLike) -> None:
    """Write the per-image table and a final ``mean`` row to a CSV file.

    Columns: image, n_true, n_pred, sbd, aji, then ``precision@t``, ``recall@t``, ``f1@t`` for
    every evaluated threshold ``t``. The mean row holds means over images.
    """
    keys = ["n_true", "n_pred", "sbd", "aji"]
    for t in summary.thresholds:
        k = _threshold_key(t)
        keys += [f"precision@{k}", f"recall@{k}", f"f1@{k}"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", *keys])
        for row in [*summary.per_image, summary.mean]:
            w.writerow([row["image"], *(row[k] for k in keys)])


def plot_f1_vs_iou(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Plot F1 against the IoU threshold, one line per entry of ``curves``, and save a PNG.

    ``curves`` maps a legend label to ``(thresholds, f1)``. Uses matplotlib's object API with
    the Agg canvas, so no display is needed and the global backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (th, f1) in curves.items():
        ax.plot(np.asarray(th, float), np.asarray(f1, float), marker="o", ms=3, label=str(label))
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("F1")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
