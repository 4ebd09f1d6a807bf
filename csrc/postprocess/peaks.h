// Peak detection on the vote histogram (DESIGN.md, "find_peaks"): optional integer box smoothing,
// then a windowed test with a strict row-major tie-break.
#pragma once

#include "../common/common.h"

namespace rdc {

// Sum of `in` over [c - radius, c + radius] along one axis (clipped), at pixel i. `stride` is the
// axis' row-major stride. Exact integer arithmetic in int64.
template <int NDIM, typename In>
RDC_HD int64_t box_sum_along(const In* in, int64_t i, int axis, int64_t radius,
                             const Shape<NDIM>& shape, int64_t stride) {
  const int64_t c = (i / stride) % shape.size[axis];
  const int64_t lo = max_of<int64_t>(0, c - radius), hi = min_of<int64_t>(shape.size[axis] - 1, c + radius);
  int64_t sum = 0;
  for (int64_t k = lo; k <= hi; ++k) sum += static_cast<int64_t>(in[i + (k - c) * stride]);
  return sum;
}

template <int NDIM>
struct PeakParams {
  Shape<NDIM> shape;
  int64_t window[NDIM];  // half-size per axis
  int64_t min_votes;
};

// True iff pixel i is a peak: score >= min_votes and every other pixel q of the window (clipped)
// has a lower score, or an equal score and comes later in row-major order.
template <int NDIM, typename S>
RDC_HD bool is_peak(const S* score, int64_t i, const PeakParams<NDIM>& p) {
  const S s = score[i];
  if (static_cast<int64_t>(s) < p.min_votes) return false;
  int64_t c[NDIM], lo[NDIM], hi[NDIM];
  p.shape.unravel(i, c);
  for (int a = 0; a < NDIM; ++a) {
    lo[a] = max_of<int64_t>(0, c[a] - p.window[a]);
    hi[a] = min_of<int64_t>(p.shape.size[a] - 1, c[a] + p.window[a]);
  }
  if constexpr (NDIM == 2) {
    const int64_t nx = p.shape.size[1];
    for (int64_t y = lo[0]; y <= hi[0]; ++y)
      for (int64_t x = lo[1]; x <= hi[1]; ++x) {
        const int64_t j = y * nx + x;
        const S t = score[j];
        if (t > s || (t == s && j < i)) return false;
      }
  } else {
    const int64_t ny = p.shape.size[1], nx = p.shape.size[2];
    for (int64_t z = lo[0]; z <= hi[0]; ++z)
      for (int64_t y = lo[1]; y <= hi[1]; ++y)
        for (int64_t x = lo[2]; x <= hi[2]; ++x) {
          const int64_t j = (z * ny + y) * nx + x;
          const S t = score[j];
          if (t > s || (t == s && j < i)) return false;
        }
  }
  return true;
}

}  // namespace rdc
