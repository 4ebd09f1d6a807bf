// Element types of the CPU sSDC kernels (ssdc_cpu_impl.h): what a buffer stores (S), what the
// micro-kernels accumulate in (Acc), and how many consecutive elements of a reduction one vector
// lane multiplies at once (KG, the "k-group"):
//   float    -> Acc float,  KG 1 (one FMA per lane)
//   double   -> Acc double, KG 1
//   SsdcBf16 -> Acc float,  KG 2 (a lane holds a pair of bfloat16; vdpbf16ps adds both products)
// Buffers that feed a reduction keep the KG elements of one k-group adjacent ("pair-interleaved":
// [k / KG][position][k % KG]), which for KG = 2 is also the VNNI layout AMX's TDPBF16PS reads.
// Compiled at the baseline instruction set: nothing here may carry AVX instructions.
#pragma once

#include <cstdint>
#include <cstring>

namespace rdc {

// bfloat16 storage: the upper 16 bits of an IEEE float32.
struct SsdcBf16 {
  uint16_t bits;
};

inline float ssdc_bf16_to_float(SsdcBf16 h) {
  const uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest, ties to even (as torch and vcvtneps2bf16); NaN stays a (quiet) NaN.
inline SsdcBf16 ssdc_float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}

template <typename S>
struct SsdcElem;

template <>
struct SsdcElem<float> {
  using Acc = float;
  using Unit = float;  // what one vector lane of a reduction operand holds
  static constexpr int KG = 1;
  static float widen(float v) { return v; }
  static float narrow(float v) { return v; }
  static float from_double(double v) { return float(v); }
};

template <>
struct SsdcElem<double> {
  using Acc = double;
  using Unit = double;
  static constexpr int KG = 1;
  static double widen(double v) { return v; }
  static double narrow(double v) { return v; }
  static double from_double(double v) { return v; }
};

template <>
struct SsdcElem<SsdcBf16> {
  using Acc = float;
  using Unit = uint32_t;  // a pair of bfloat16, the lower one first
  static constexpr int KG = 2;
  static float widen(SsdcBf16 v) { return ssdc_bf16_to_float(v); }
  static SsdcBf16 narrow(float v) { return ssdc_float_to_bf16(v); }
  // Via float32: a double rounding, off by one bf16 ulp only when the float32 lands on a tie.
  static SsdcBf16 from_double(double v) { return ssdc_float_to_bf16(float(v)); }
};

}  // namespace rdc
