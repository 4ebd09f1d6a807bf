// Label-wise morphological opening (DESIGN.md, "label_opening"). Pixels outside the image count
// as every label, so the erosion E is evaluated on the image grown by the ball's halo:
//   E(q) = the common label of the in-image pixels of the ball around q (0 if they differ, one
//          is background, or none is inside),
//   out(p) = labels[p] if E(p + o) == labels[p] for some offset o of the ball, else 0.
// Offsets come sorted nearest-first, with flat deltas precomputed for the image and the padded
// buffer, so interior pixels (the vast majority) need no coordinate arithmetic per offset.
#pragma once

#include "../common/common.h"

namespace rdc {

template <int NDIM>
struct Ball {
  const int32_t* offsets;        // (count, NDIM), nearest first, origin first
  const int64_t* image_deltas;   // flat offsets in the image
  const int64_t* padded_deltas;  // flat offsets in the padded buffer
  int64_t count;
  int64_t halo[NDIM];            // largest |offset| per axis
};

// Shape of the erosion buffer: the image grown by the halo on each side.
template <int NDIM>
RDC_HD Shape<NDIM> padded_shape(const Shape<NDIM>& shape, const Ball<NDIM>& ball) {
  Shape<NDIM> p;
  for (int a = 0; a < NDIM; ++a) p.size[a] = shape.size[a] + 2 * ball.halo[a];
  return p;
}

// E(q) for q (image coordinates) anywhere, with bounds checks.
template <int NDIM, typename L>
RDC_HD L eroded_label(const L* labels, const Shape<NDIM>& shape, const int64_t* q,
                      const Ball<NDIM>& ball) {
  bool seen = false;
  L common = 0;
  for (int64_t m = ball.count - 1; m >= 0; --m) {
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

// E at padded coordinates pc: the fast path when the whole ball lies inside the image (the
// farthest offsets are tested first: a differing label shows up there first).
template <int NDIM, typename L>
RDC_HD L eroded_at(const L* labels, const Shape<NDIM>& shape, const int64_t* pc,
                   const Ball<NDIM>& ball) {
  int64_t q[NDIM];
  bool interior = true;
  for (int a = 0; a < NDIM; ++a) {
    q[a] = pc[a] - ball.halo[a];
    interior &= (q[a] >= ball.halo[a]) & (q[a] < shape.size[a] - ball.halo[a]);
  }
  if (!interior) return eroded_label(labels, shape, q, ball);
  const L* at = labels + shape.ravel(q);
  const L v0 = at[0];
  if (v0 == 0) return 0;
  for (int64_t m = ball.count - 1; m > 0; --m)
    if (at[ball.image_deltas[m]] != v0) return 0;
  return v0;
}

// Opened label of a pixel with label l whose padded-buffer position is `eroded_here`; the
// nearest offsets (the origin first) are the likeliest hits.
template <int NDIM, typename L>
RDC_HD L opened_label(L l, const L* eroded_here, const Ball<NDIM>& ball) {
  if (l == 0) return 0;
  for (int64_t m = 0; m < ball.count; ++m)
    if (eroded_here[ball.padded_deltas[m]] == l) return l;
  return 0;
}

// Padded-buffer flat index of image pixel c.
template <int NDIM>
RDC_HD int64_t padded_index(const Shape<NDIM>& padded, const int64_t* c, const Ball<NDIM>& ball) {
  int64_t j = 0;
  for (int a = 0; a < NDIM; ++a) j = j * padded.size[a] + c[a] + ball.halo[a];
  return j;
}

template <int NDIM>
inline Ball<NDIM> make_ball(const int32_t* offsets, const int64_t* image_deltas,
                            const int64_t* padded_deltas, int64_t count, const int64_t* halo) {
  Ball<NDIM> b;
  b.offsets = offsets;
  b.image_deltas = image_deltas;
  b.padded_deltas = padded_deltas;
  b.count = count;
  for (int a = 0; a < NDIM; ++a) b.halo[a] = halo[a];
  return b;
}

}  // namespace rdc
