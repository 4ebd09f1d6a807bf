// Fused shared stacked dilated convolution (sSDC, DESIGN.md "ssdc"): the per-element logic shared
// by the CPU loops (ssdc_cpu_impl.h) and the CUDA kernels (ssdc_cuda.cu).
//
// For one group g of C channels and dilations d_0..d_{D-1}:
//   z_d[co, p] = b[co] + sum_{ci, k} W[co, ci, k] * x[ci, p + d * off_k]   (zero outside the image)
//   y[o, p]    = rb[o] + sum_d sum_co P[o, d * C + co] * LeakyReLU(z_d[co, p])
// where k runs over the 3^ndim taps of the 3x3(x3) kernel and off_k = (k_a - 1) per axis. The
// backward pass recomputes z_d per tile; nothing of size D x activations is ever stored.
#pragma once

#include <cstdint>

#include "../common/common.h"

namespace rdc {

// Geometry of one ssdc call. Arrays are contiguous in the torch layouts of DESIGN.md:
// x, y (B, G*C, *S); weight (G*C, C, 3^ndim); bias (G*C); reduce_weight (G*C, D*C); reduce_bias (G*C).
struct SsdcArgs {
  int ndim;             // 2 or 3 spatial axes
  int64_t batch;        // B
  int64_t groups;       // G
  int64_t channels;     // C, channels per group
  int64_t size[3];      // spatial sizes (first ndim used)
  int ndil;             // D
  int64_t dilation[16]; // the D dilations (D <= kMaxDilations)
  double slope;         // LeakyReLU negative slope
};

constexpr int kSsdcMaxDilations = 16;

RDC_HD int ssdc_taps(int ndim) { return ndim == 2 ? 9 : 27; }

RDC_HD int64_t ssdc_numel(const SsdcArgs& a) {
  int64_t n = 1;
  for (int i = 0; i < a.ndim; ++i) n *= a.size[i];
  return n;
}

// LeakyReLU and its backward. The derivative at 0 is taken as 1 (torch's convention: z > 0 is
// the "positive" side only for z > 0; torch uses `z > 0 ? g : g * slope`).
template <typename T>
RDC_HD T ssdc_leaky(T z, T slope) { return z > T(0) ? z : z * slope; }

template <typename T>
RDC_HD T ssdc_leaky_backward(T z, T grad, T slope) { return z > T(0) ? grad : grad * slope; }

// Offset of tap k along axis a (-1, 0 or +1): taps are row-major over the 3^ndim kernel.
RDC_HD int ssdc_tap_offset(int k, int a, int ndim) {
  for (int b = ndim - 1; b > a; --b) k /= 3;
  return k % 3 - 1;
}

// Flat source index of output position p (flat, row-major) for tap k at dilation d, or -1 when
// the source lies outside the image (zero padding).
RDC_HD int64_t ssdc_source(const SsdcArgs& a, int64_t p, int k, int64_t d) {
  int64_t c[3];
  int64_t q = p;
  for (int i = a.ndim - 1; i >= 0; --i) {
    c[i] = q % a.size[i];
    q /= a.size[i];
  }
  int64_t src = 0;
  for (int i = 0; i < a.ndim; ++i) {
    const int64_t s = c[i] + d * ssdc_tap_offset(k, i, a.ndim);
    if (s < 0 || s >= a.size[i]) return -1;
    src = src * a.size[i] + s;
  }
  return src;
}

// CPU tiling works on rows (all axes but the last). Outer tap r (0..3^(ndim-1)-1) of a row:
// the source row index for dilation d, or -1 when it lies outside the image.
RDC_HD int64_t ssdc_source_row(const SsdcArgs& a, int64_t row, int r, int64_t d) {
  const int nd = a.ndim - 1;  // outer axes
  int64_t c[2];
  int64_t q = row;
  for (int i = nd - 1; i >= 0; --i) {
    c[i] = q % a.size[i];
    q /= a.size[i];
  }
  int64_t src = 0;
  for (int i = 0; i < nd; ++i) {
    const int64_t s = c[i] + d * ssdc_tap_offset(r, i, nd);
    if (s < 0 || s >= a.size[i]) return -1;
    src = src * a.size[i] + s;
  }
  return src;
}

// Padding of a row tile for dilation d along the last axis (length w): the two side taps read
// d columns left and right; when d >= w they never touch the image and are skipped (pad 0, only
// the middle tap is used).
RDC_HD int64_t ssdc_row_pad(int64_t d, int64_t w) { return d < w ? d : 0; }

}  // namespace rdc
