// Hough voting: which histogram bin a pixel's embedding votes for (DESIGN.md, "hough_votes").
#pragma once

#include "../common/common.h"

namespace rdc {

template <int NDIM>
struct VoteGeometry {
  Shape<NDIM> shape;
  double spacing[NDIM];
};

// Flat index of the bin pixel i votes for, or -1 when it casts no vote (not in the mask,
// non-finite embedding, or bin outside the image). `emb` is planar: axis a of pixel i is at
// emb[a * n + i]. The bin is rint(e / spacing) in float64, i.e. round half to even.
template <int NDIM>
RDC_HD int64_t vote_bin(const float* emb, const uint8_t* mask, int64_t i, int64_t n,
                        const VoteGeometry<NDIM>& g) {
  if (!mask[i]) return -1;
  int64_t c[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    const float e = emb[a * n + i];
    if (!is_finite(e)) return -1;
    // Division by a spacing of exactly 1 is the identity: skip it (same result, faster).
    const double x = g.spacing[a] == 1.0 ? static_cast<double>(e) : static_cast<double>(e) / g.spacing[a];
    if (!(x > -1.0 && x < 2251799813685248.0)) return -1;  // off the image (or >= 2^51)
    const double b = round_half_even(x);
    if (!(b >= 0.0 && b <= static_cast<double>(g.shape.size[a] - 1))) return -1;
    c[a] = static_cast<int64_t>(b);
  }
  return g.shape.ravel(c);
}

}  // namespace rdc
