// Host-device building blocks shared by every kernel: the RDC_HD qualifier and image geometry.
// Everything here compiles both as plain C++ (CPU loops) and under nvcc (CUDA kernels), so the
// CPU tests exercise exactly the per-element arithmetic the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define RDC_HD __host__ __device__ __forceinline__
#else
#define RDC_HD inline
#endif

namespace rdc {

// A row-major image of NDIM (2 or 3) spatial axes; all arrays are contiguous.
template <int NDIM>
struct Shape {
  int64_t size[NDIM];

  RDC_HD int64_t numel() const {
    int64_t n = 1;
    for (int a = 0; a < NDIM; ++a) n *= size[a];
    return n;
  }
  RDC_HD void unravel(int64_t i, int64_t* c) const {
    for (int a = NDIM - 1; a >= 0; --a) {
      c[a] = i % size[a];
      i /= size[a];
    }
  }
  RDC_HD int64_t ravel(const int64_t* c) const {
    int64_t i = 0;
    for (int a = 0; a < NDIM; ++a) i = i * size[a] + c[a];
    return i;
  }
  RDC_HD bool contains(const int64_t* c) const {
    for (int a = 0; a < NDIM; ++a)
      if (c[a] < 0 || c[a] >= size[a]) return false;
    return true;
  }
};

template <typename T>
RDC_HD T min_of(T a, T b) { return a < b ? a : b; }
template <typename T>
RDC_HD T max_of(T a, T b) { return a < b ? b : a; }

// Finite test that does not depend on <cmath> being device-enabled: NaN fails x == x and
// +-inf fails |x| <= max.
RDC_HD bool is_finite(float x) { return x == x && x <= 3.402823466e38f && x >= -3.402823466e38f; }

// Round half to even without libm (rint is a library call on baseline x86-64): adding and
// subtracting 1.5 * 2^52 leaves the nearest integer, ties to even, in the default rounding mode.
// Valid for |x| < 2^51; callers reject larger values first. Needs no -ffast-math (never used).
RDC_HD double round_half_even(double x) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  return (x + magic) - magic;
}

}  // namespace rdc
