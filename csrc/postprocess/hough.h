// Hough voting: which histogram bin a pixel's embedding votes for (DESIGN.md, "hough_votes").
#pragma once

#include "../common/common.h"

namespace rdc {

template <int NDIM>
struct VoteGeometry {
  Shape<NDIM> shape;
  double spacing[NDIM];
  double inv_spacing[NDIM];  // 1 / spacing, for the fast path of the division
};

// e / s rounded half to even, exactly as in float64 division. Multiplying by 1/s is within a few
// ulps of e / s, which can change the rounding only when the quotient is within 1e-6 of a
// half-integer: then (rarely) divide for real. That bound (|x| * 2^-52 << 1e-6) holds for
// |x| < 2^31; larger quotients are off any image (axes are shorter, checked in Python) and, like
// x <= -1, return -1 (no bin).
RDC_HD double round_quotient(float e, double s, double inv_s) {
  const double x = static_cast<double>(e) * inv_s;
  if (!(x > -1.0 && x < 2147483648.0)) return -1.0;
  double b = round_half_even(x);
  const double off = x - b;  // in [-0.5, 0.5]
  if (off > 0.499999 || off < -0.499999) b = round_half_even(static_cast<double>(e) / s);
  return b;
}

// Flat index of the bin pixel i votes for, or -1 when it casts no vote (not in the mask,
// non-finite embedding, or bin outside the image). `emb` is planar: axis a of pixel i is at
// emb[a * n + i]. The bin is e / spacing in float64, rounded half to even.
template <int NDIM>
RDC_HD int64_t vote_bin(const float* emb, const uint8_t* mask, int64_t i, int64_t n,
                        const VoteGeometry<NDIM>& g) {
  if (!mask[i]) return -1;
  int64_t c[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    const float e = emb[a * n + i];
    if (!is_finite(e)) return -1;
    const double b = round_quotient(e, g.spacing[a], g.inv_spacing[a]);
    if (!(b >= 0.0 && b <= static_cast<double>(g.shape.size[a] - 1))) return -1;
    c[a] = static_cast<int64_t>(b);
  }
  return g.shape.ravel(c);
}

}  // namespace rdc
