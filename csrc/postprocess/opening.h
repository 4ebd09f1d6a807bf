// Label-wise morphological opening (DESIGN.md, "label_opening"). Pixels outside the image count
// as every label, so the erosion is evaluated on the image grown by the ball's halo.
#pragma once

#include "../common/common.h"

namespace rdc {

template <int NDIM>
struct Ball {
  const int32_t* offsets;  // (count, NDIM), includes the origin
  int64_t count;
  int64_t halo[NDIM];      // largest |offset| per axis
};

template <int NDIM>
inline Ball<NDIM> make_ball(const int32_t* offsets, int64_t count, const int64_t* halo) {
  Ball<NDIM> b;
  b.offsets = offsets;
  b.count = count;
  for (int a = 0; a < NDIM; ++a) b.halo[a] = halo[a];
  return b;
}

// E(q): the common label of the in-image pixels of the ball around q (q in image coordinates,
// possibly outside the image), or 0 if they differ, one is background, or none is inside.
template <int NDIM, typename L>
RDC_HD L eroded_label(const L* labels, const Shape<NDIM>& shape, const int64_t* q,
                      const Ball<NDIM>& ball) {
  bool seen = false;
  L common = 0;
  for (int64_t m = 0; m < ball.count; ++m) {
    int64_t c[NDIM];
    for (int a = 0; a < NDIM; ++a) c[a] = q[a] + ball.offsets[m * NDIM + a];
    if (!shape.contains(c)) continue;
    const L v = labels[shape.ravel(c)];
    if (v == 0) return 0;
    if (!seen) {
      common = v;
      seen = true;
    } else if (v != common) {
      return 0;
    }
  }
  return seen ? common : L(0);
}

// Shape of the erosion buffer: the image grown by the halo on each side.
template <int NDIM>
RDC_HD Shape<NDIM> padded_shape(const Shape<NDIM>& shape, const Ball<NDIM>& ball) {
  Shape<NDIM> p;
  for (int a = 0; a < NDIM; ++a) p.size[a] = shape.size[a] + 2 * ball.halo[a];
  return p;
}

// E at flat index j of the padded buffer.
template <int NDIM, typename L>
RDC_HD L eroded_at_padded(const L* labels, const Shape<NDIM>& shape, const Shape<NDIM>& padded,
                          int64_t j, const Ball<NDIM>& ball) {
  int64_t q[NDIM];
  padded.unravel(j, q);
  for (int a = 0; a < NDIM; ++a) q[a] -= ball.halo[a];
  return eroded_label(labels, shape, q, ball);
}

// Opened label of image pixel i: keeps labels[i] iff E(i + o) == labels[i] for some offset o.
template <int NDIM, typename L>
RDC_HD L opened_label(const L* labels, const L* eroded, const Shape<NDIM>& shape,
                      const Shape<NDIM>& padded, int64_t i, const Ball<NDIM>& ball) {
  const L l = labels[i];
  if (l == 0) return 0;
  int64_t c[NDIM];
  shape.unravel(i, c);
  for (int a = 0; a < NDIM; ++a) c[a] += ball.halo[a];
  for (int64_t m = 0; m < ball.count; ++m) {
    int64_t q[NDIM];
    for (int a = 0; a < NDIM; ++a) q[a] = c[a] + ball.offsets[m * NDIM + a];
    if (eroded[padded.ravel(q)] == l) return l;
  }
  return 0;
}

}  // namespace rdc
