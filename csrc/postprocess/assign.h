// Nearest-centre assignment (DESIGN.md, "assign_to_centres"), exact in float64 with ties to the
// lowest centre index, accelerated by a uniform grid over a physical box holding every centre (the
// image's box, or for a block of a larger image the box of the block and the centres):
//  * centres are bucketed by grid cell (CSR built by the caller),
//  * each cell gets the list of centres that can be nearest to some point of it
//    (cell_candidates), so most pixels test one or two centres,
//  * points outside the grid fall back to an exact ring search over the buckets.
// All bounds carry a small slack `tol` so that rounding can only add candidates, never drop one;
// the final choice is always the exact float64 argmin over the candidates tested.
#pragma once

#include <cmath>

#include "../common/common.h"

namespace rdc {

template <int NDIM>
struct CentreGrid {
  const int64_t* centres;     // (K, NDIM) pixel indices of the centres
  const int32_t* cell_start;  // (cells + 1) CSR offsets of the centres bucketed by cell
  const int32_t* cell_items;  // centre indices, bucket by bucket
  Shape<NDIM> cells;          // grid size in cells per axis
  double spacing[NDIM];
  double lo[NDIM];            // physical position of the grid's first corner
  double cell[NDIM];          // physical cell size; the grid box is [lo, lo + cells * cell] per axis
  double inv_cell[NDIM];      // 1 / cell: locating a point only needs to be right up to tol
  double tol;                 // physical slack on every box bound
};

// The untyped form the bindings pass around; make_grid gives the typed view.
struct AssignArgs {
  int ndim;
  const int64_t* shape;       // image shape
  const double* spacing;
  const int64_t* centres;     // (K, ndim)
  const int32_t* cell_start;  // (cells + 1)
  const int32_t* cell_items;  // (K)
  const int64_t* cells;       // grid size per axis
  const double* cell;         // physical cell size per axis
  const double* lo;           // physical grid corner per axis (0 for a whole image)
  double tol;
};

template <int NDIM>
inline CentreGrid<NDIM> make_grid(const AssignArgs& a) {
  CentreGrid<NDIM> g;
  g.centres = a.centres;
  g.cell_start = a.cell_start;
  g.cell_items = a.cell_items;
  for (int d = 0; d < NDIM; ++d) {
    g.cells.size[d] = a.cells[d];
    g.spacing[d] = a.spacing[d];
    g.cell[d] = a.cell[d];
    g.lo[d] = a.lo[d];
    g.inv_cell[d] = 1.0 / a.cell[d];
  }
  g.tol = a.tol;
  return g;
}

template <int NDIM>
RDC_HD double centre_position(const CentreGrid<NDIM>& g, int64_t k, int a) {
  return static_cast<double>(g.centres[k * NDIM + a]) * g.spacing[a];
}

// Squared distance in the order of the reference: sum over axes, first axis first.
template <int NDIM>
RDC_HD double centre_d2(const CentreGrid<NDIM>& g, const double* e, int64_t k) {
  double d2 = 0.0;
  for (int a = 0; a < NDIM; ++a) {
    const double diff = e[a] - centre_position(g, k, a);
    d2 = (a == 0) ? diff * diff : d2 + diff * diff;
  }
  return d2;
}

struct Nearest {
  double d2;
  int64_t k;
  RDC_HD void offer(double d, int64_t kk) {
    if (k < 0 || d < d2 || (d == d2 && kk < k)) {
      d2 = d;
      k = kk;
    }
  }
};

// Calls f(k) for every centre in the cells of ring r around cell c (cells at Chebyshev index
// distance exactly r), clipped to the grid. Rows off the shell visit only their two end cells.
template <int NDIM, typename F>
RDC_HD void for_ring(const CentreGrid<NDIM>& g, const int64_t* c, int64_t r, F&& f) {
  constexpr int X = NDIM - 1;
  int64_t lo[NDIM], hi[NDIM], j[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    lo[a] = max_of<int64_t>(0, c[a] - r);
    hi[a] = min_of<int64_t>(g.cells.size[a] - 1, c[a] + r);
    j[a] = lo[a];
  }
  auto visit = [&](int64_t x) {
    j[X] = x;
    const int64_t cell = g.cells.ravel(j);
    for (int32_t t = g.cell_start[cell]; t < g.cell_start[cell + 1]; ++t) f(g.cell_items[t]);
  };
  while (true) {
    bool lead_on_shell = false;
    for (int a = 0; a < X; ++a) lead_on_shell |= (j[a] == c[a] - r || j[a] == c[a] + r);
    if (lead_on_shell || r == 0) {
      for (int64_t x = lo[X]; x <= hi[X]; ++x) visit(x);
    } else {
      if (c[X] - r >= 0) visit(c[X] - r);
      if (c[X] + r < g.cells.size[X]) visit(c[X] + r);
    }
    int a = X - 1;
    while (a >= 0 && j[a] == hi[a]) {
      j[a] = lo[a];
      --a;
    }
    if (a < 0) break;
    ++j[a];
  }
}

// Lower bound (squared) on the distance from the box [blo, bhi] to any cell outside ring r
// around cell c, or -1 when every cell of the grid lies within ring r. `outside` is the squared
// distance of the box to the grid box along each axis (0 when it overlaps).
template <int NDIM>
RDC_HD double beyond_ring_d2(const CentreGrid<NDIM>& g, const int64_t* c, int64_t r,
                             const double* blo, const double* bhi, const double* outside) {
  double best = -1.0;
  double out_total = 0.0;
  for (int a = 0; a < NDIM; ++a) out_total += outside[a];
  for (int a = 0; a < NDIM; ++a) {
    for (int side = 0; side < 2; ++side) {
      double gap;
      if (side == 0) {
        if (c[a] - r <= 0) continue;
        gap = blo[a] - (g.lo[a] + static_cast<double>(c[a] - r) * g.cell[a]);
      } else {
        if (c[a] + r >= g.cells.size[a] - 1) continue;
        gap = (g.lo[a] + static_cast<double>(c[a] + r + 1) * g.cell[a]) - bhi[a];
      }
      gap = max_of(gap - g.tol, 0.0);
      const double d2 = gap * gap + (out_total - outside[a]);
      if (best < 0.0 || d2 < best) best = d2;
    }
  }
  return best;
}

// Cell of a point, clamped to the grid; returns whether the point lies inside the grid box.
template <int NDIM>
RDC_HD bool locate(const CentreGrid<NDIM>& g, const double* e, int64_t* c) {
  bool inside = true;
  for (int a = 0; a < NDIM; ++a) {
    // Truncation is floor for f >= 0; the multiplication may be off by an ulp near a cell
    // face, which the tol slack of every candidate list covers.
    const double f = (e[a] - g.lo[a]) * g.inv_cell[a];
    if (!(f >= 0.0 && f < static_cast<double>(g.cells.size[a]))) inside = false;
    c[a] = !(f >= 0.0) ? 0 : (f >= static_cast<double>(g.cells.size[a]) ? g.cells.size[a] - 1 : static_cast<int64_t>(f));
  }
  return inside;
}

// Exact nearest centre by rings of cells around the (clamped) cell of e. Used for points outside
// the grid box; K >= 1.
template <int NDIM>
RDC_HD Nearest nearest_by_rings(const CentreGrid<NDIM>& g, const double* e) {
  int64_t c[NDIM];
  locate(g, e, c);
  double outside[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    const double top = g.lo[a] + static_cast<double>(g.cells.size[a]) * g.cell[a];
    const double d = max_of(max_of(g.lo[a] - e[a], e[a] - top) - g.tol, 0.0);
    outside[a] = d * d;
  }
  Nearest best{0.0, -1};
  for (int64_t r = 0;; ++r) {
    for_ring(g, c, r, [&](int64_t k) { best.offer(centre_d2(g, e, k), k); });
    const double lb = beyond_ring_d2(g, c, r, e, e, outside);
    if (lb < 0.0) break;
    if (best.k >= 0 && lb > best.d2 * (1.0 + 1e-12)) break;
  }
  return best;
}

// True iff the centre at `win` is strictly nearer than centre k at every point of the box
// [blo, bhi]: min over the box of |x - k|^2 - |x - win|^2 > 0. The function is linear in x, so the
// minimum is a sum of per-axis endpoint minima; a relative slack keeps rounding conservative.
template <int NDIM>
RDC_HD bool dominated(const CentreGrid<NDIM>& g, const double* blo, const double* bhi,
                      const double* win, int64_t k) {
  double gain = 0.0, scale = 1.0;
  for (int a = 0; a < NDIM; ++a) {
    const double p = centre_position(g, k, a);
    const double f_lo = (blo[a] - p) * (blo[a] - p) - (blo[a] - win[a]) * (blo[a] - win[a]);
    const double f_hi = (bhi[a] - p) * (bhi[a] - p) - (bhi[a] - win[a]) * (bhi[a] - win[a]);
    gain += min_of(f_lo, f_hi);
    const double span = (bhi[a] - blo[a]) + (p > win[a] ? p - win[a] : win[a] - p);
    scale += span * span + blo[a] * blo[a] + bhi[a] * bhi[a];
  }
  return gain > 1e-9 * scale;
}

// Candidates of grid cell `cell`: the centres that may be nearest to some point of the cell's
// box. Writes them to out (if not null) and returns their number. Two exact filters:
//  * distance: k's distance to the box is at most U = min over centres of their largest distance
//    to the box (every point of the box has a centre within U);
//  * bisector: with b any centre (the one nearest the box centre), k can beat b somewhere in the
//    box only if min over the box of |x - k|^2 - |x - b|^2 <= 0. That function is linear in x,
//    so its minimum over the box is a sum of per-axis endpoint minima.
// Both only ever keep too many centres (slack tol on the box, relative slack on the tests).
template <int NDIM>
RDC_HD int32_t cell_candidates(const CentreGrid<NDIM>& g, int64_t cell, int32_t* out) {
  int64_t c[NDIM];
  g.cells.unravel(cell, c);
  double blo[NDIM], bhi[NDIM], mid[NDIM], outside[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    blo[a] = (g.lo[a] + static_cast<double>(c[a]) * g.cell[a]) - g.tol;
    bhi[a] = (g.lo[a] + static_cast<double>(c[a] + 1) * g.cell[a]) + g.tol;
    mid[a] = 0.5 * (blo[a] + bhi[a]);
    outside[a] = 0.0;
  }
  auto box_d2 = [&](int64_t k, bool farthest) {
    double d2 = 0.0;
    for (int a = 0; a < NDIM; ++a) {
      const double p = centre_position(g, k, a);
      const double d = farthest ? max_of(p - blo[a], bhi[a] - p) : max_of(max_of(blo[a] - p, p - bhi[a]), 0.0);
      d2 += d * d;
    }
    return d2;
  };
  // 1. The bound U (squared) and the reference centre b, by rings of cells.
  double upper = -1.0;
  Nearest ref{0.0, -1};
  int64_t rings = 0;
  for (;; ++rings) {
    for_ring(g, c, rings, [&](int64_t k) {
      const double d2 = box_d2(k, true);
      if (upper < 0.0 || d2 < upper) upper = d2;
      ref.offer(centre_d2(g, mid, k), k);
    });
    const double lb = beyond_ring_d2(g, c, rings, blo, bhi, outside);
    if (lb < 0.0) break;
    if (upper >= 0.0 && lb > upper * (1.0 + 1e-9)) break;
  }
  // 2. Centres passing both filters; centres beyond `rings` are farther than U.
  double bpos[NDIM];
  for (int a = 0; a < NDIM; ++a) bpos[a] = centre_position(g, ref.k, a);
  int32_t count = 0;
  for (int64_t r = 0; r <= rings; ++r) {
    for_ring(g, c, r, [&](int64_t k) {
      if (!(box_d2(k, false) <= upper * (1.0 + 1e-9))) return;
      if (k != ref.k && dominated(g, blo, bhi, bpos, k)) return;
      if (out) out[count] = static_cast<int32_t>(k);
      ++count;
    });
  }
  if (out == nullptr || count < 2) return count;
  // 3. Only when writing: drop candidates dominated by another candidate over the whole box.
  //    The count pass cannot know the result, so the rest of the list is padded with -1 entries
  //    (skipped by nearest_label); the list keeps the length the count pass reported.
  int32_t kept = 0;
  for (int32_t t = 0; t < count; ++t) {
    const int64_t k = out[t];
    bool beaten = false;
    for (int32_t u = 0; u < count && !beaten; ++u) {
      if (u == t) continue;
      double jpos[NDIM];
      for (int a = 0; a < NDIM; ++a) jpos[a] = centre_position(g, out[u], a);
      beaten = dominated(g, blo, bhi, jpos, k);
    }
    if (!beaten) out[kept++] = static_cast<int32_t>(k);
  }
  // Ascending centre index, so that pixels can break distance ties with a strict "<".
  for (int32_t t = 1; t < kept; ++t) {
    const int32_t k = out[t];
    int32_t u = t;
    for (; u > 0 && out[u - 1] > k; --u) out[u] = out[u - 1];
    out[u] = k;
  }
  for (int32_t t = kept; t < count; ++t) out[t] = -1;
  return count;
}

// Label of pixel i: k + 1 of its nearest centre, or 0 (not in mask, non-finite embedding, or
// farther than max_d2). cand_start/cand_items: the CSR of cell_candidates over all cells.
template <int NDIM>
RDC_HD int32_t nearest_label(const float* emb, const uint8_t* mask, int64_t i, int64_t n,
                             const CentreGrid<NDIM>& g, const int32_t* cand_start,
                             const int32_t* cand_items, double max_d2) {
  if (!mask[i]) return 0;
  double e[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    const float v = emb[a * n + i];
    if (!is_finite(v)) return 0;
    e[a] = static_cast<double>(v);
  }
  int64_t c[NDIM];
  Nearest best{0.0, -1};
  if (locate(g, e, c)) {
    const int64_t cell = g.cells.ravel(c);
    const int32_t first = cand_start[cell], last = cand_start[cell + 1];
    // Most cells lie inside one centre's Voronoi region: one candidate, no distance needed.
    if ((last - first == 1 || cand_items[first + 1] < 0) && max_d2 == HUGE_VAL) return cand_items[first] + 1;
    // Candidates are sorted by index: a strict "<" keeps the lowest index on ties, and the
    // selection compiles to conditional moves (neighbouring pixels pick different winners, which
    // a branch would mispredict).
    best.k = cand_items[first];
    best.d2 = centre_d2(g, e, best.k);
    for (int32_t t = first + 1; t < last; ++t) {
      const int64_t k = cand_items[t];
      if (k < 0) break;  // padding after pruning
      const double d2 = centre_d2(g, e, k);
      const bool nearer = d2 < best.d2;
      best.d2 = nearer ? d2 : best.d2;
      best.k = nearer ? k : best.k;
    }
  } else {
    best = nearest_by_rings(g, e);
  }
  if (best.k < 0 || best.d2 > max_d2) return 0;
  return static_cast<int32_t>(best.k + 1);
}

}  // namespace rdc
