// CPU sSDC entry points: pick the widest vector variant this machine runs (AVX-512, AVX2, or the
// baseline build) once, then call it. The variants are the same code (ssdc_cpu_impl.h) compiled
// with different instruction sets (GCC target pragmas, x86-64 only) in ssdc_cpu_avx2.cpp and
// ssdc_cpu_avx512.cpp; the baseline one is here.
//
// bfloat16 (bf16 operands, float32 accumulation) has its own slot: the AVX512-BF16 build
// (ssdc_cpu_avx512bf16.cpp, vdpbf16ps) where the CPU has avx512_bf16, else the bfloat16 build of
// the float32 variant chosen above, whose micro-kernels widen each bf16 pair to float32 (exact)
// and use two FMAs: same algorithm and roundings, float32 speed.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "entry.h"

#define RDC_SSDC_NS ssdc_generic
#define RDC_SSDC_VB 16
#define RDC_SSDC_COB 4
#include "ssdc_cpu_impl.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RDC_SSDC_AVX2 1
#define RDC_SSDC_AVX512 1
#define RDC_SSDC_AVX512BF16 1
#endif

namespace rdc {

#define RDC_SSDC_DECLARE(NS)                                                                            \
  namespace NS {                                                                                        \
  void forward(const SsdcArgs&, int, const void*, const void*, const void*, const void*, const void*,  \
               void*, int);                                                                             \
  void backward(const SsdcArgs&, int, const void*, const void*, const void*, const void*, const void*, \
                void*, void*, void*, void*, void*, int);                                                \
  }
#ifdef RDC_SSDC_AVX2
RDC_SSDC_DECLARE(ssdc_avx2)
#endif
#ifdef RDC_SSDC_AVX512
RDC_SSDC_DECLARE(ssdc_avx512)
#endif
#ifdef RDC_SSDC_AVX512BF16
RDC_SSDC_DECLARE(ssdc_avx512bf16)
#endif

namespace {

// Vector variants of the kernels. The float32/float64 kernels use the widest of generic, avx2,
// avx512; bfloat16 uses avx512_bf16 where available, else the same variant as float32.
//
// amx_bf16 is the reserved slot for AMX tiles (Sapphire Rapids and later: `amx_bf16` + `amx_tile`,
// TDPBF16PS on 16x32 bf16 tiles with float32 accumulation, after an arch_prctl permission request).
// The bfloat16 operands are already stored the way AMX reads them: the reduction (input channels
// of the convolutions, positions of the gradient outer products) in interleaved pairs, i.e. the
// VNNI layout of a B tile. An AMX build would replace Kern<SsdcBf16>::conv_tile and ::outer by
// tile loops (A = 16 output channels x 32 bf16 of weights, B = 16 pairs x 16 positions, C tiles of
// 16 x 16 float32) and be dispatched here. Not written: no AMX CPU was available to test it, so
// detect() never returns it.
enum class Isa { generic, avx2, avx512, avx512_bf16, amx_bf16 };

struct Choice {
  Isa f32;   // float32 and float64
  Isa bf16;  // bfloat16
};

Choice detect() {
  // RDCNET_EXT_SSDC_ISA=generic|avx2|avx512 caps the variant (to test the narrower ones, and the
  // bfloat16 build without AVX512-BF16, on a wide CPU); avx512_bf16 or unset: the widest.
  const char* cap = std::getenv("RDCNET_EXT_SSDC_ISA");
  const bool is = cap != nullptr;
  const bool no_bf16 = is && (std::strcmp(cap, "avx512") == 0 || std::strcmp(cap, "avx2") == 0 ||
                              std::strcmp(cap, "generic") == 0);
  const bool no512 = is && (std::strcmp(cap, "avx2") == 0 || std::strcmp(cap, "generic") == 0);
  const bool no256 = is && std::strcmp(cap, "generic") == 0;
  Choice c{Isa::generic, Isa::generic};
#if defined(RDC_SSDC_AVX2) || defined(RDC_SSDC_AVX512)
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("fma");
#ifdef RDC_SSDC_AVX512
  if (!no512 && has512) c.f32 = Isa::avx512;
#endif
#ifdef RDC_SSDC_AVX2
  if (c.f32 == Isa::generic && !no256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    c.f32 = Isa::avx2;
#endif
  c.bf16 = c.f32;
#ifdef RDC_SSDC_AVX512BF16
  if (!no_bf16 && has512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16"))
    c.bf16 = Isa::avx512_bf16;
#endif
  // (Isa::amx_bf16 would be chosen here, before avx512_bf16, once it has a kernel; see above.)
#endif
  (void)no_bf16, (void)no512, (void)no256;
  return c;
}

Isa isa(int dtype) {
  static const Choice chosen = detect();
  return dtype == kSsdcBF16 ? chosen.bf16 : chosen.f32;
}

void check(const SsdcArgs& a, int dtype) {
  if (a.ndim != 2 && a.ndim != 3) throw std::invalid_argument("ssdc: ndim must be 2 or 3");
  if (a.ndil < 1 || a.ndil > kSsdcMaxDilations) throw std::invalid_argument("ssdc: 1 to 16 dilations");
  if (dtype != kSsdcF32 && dtype != kSsdcF64 && dtype != kSsdcBF16)
    throw std::invalid_argument("ssdc: the CPU kernels take float32, float64 or bfloat16, got dtype code " +
                                std::to_string(dtype));
}

}  // namespace

const char* ssdc_cpu_isa(int dtype) {
  switch (isa(dtype)) {
    case Isa::amx_bf16: return "amx_bf16";
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

void ssdc_forward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                      const void* rw, const void* rb, void* y, int threads) {
  check(a, dtype);
  switch (isa(dtype)) {
#ifdef RDC_SSDC_AVX512BF16
    case Isa::avx512_bf16: return ssdc_avx512bf16::forward(a, dtype, x, w, b, rw, rb, y, threads);
#endif
#ifdef RDC_SSDC_AVX512
    case Isa::avx512: return ssdc_avx512::forward(a, dtype, x, w, b, rw, rb, y, threads);
#endif
#ifdef RDC_SSDC_AVX2
    case Isa::avx2: return ssdc_avx2::forward(a, dtype, x, w, b, rw, rb, y, threads);
#endif
    default: return ssdc_generic::forward(a, dtype, x, w, b, rw, rb, y, threads);
  }
}

void ssdc_backward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                       const void* rw, const void* gy, void* gx, void* gw, void* gb, void* grw,
                       void* grb, int threads) {
  check(a, dtype);
  switch (isa(dtype)) {
#ifdef RDC_SSDC_AVX512BF16
    case Isa::avx512_bf16:
      return ssdc_avx512bf16::backward(a, dtype, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
#endif
#ifdef RDC_SSDC_AVX512
    case Isa::avx512: return ssdc_avx512::backward(a, dtype, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
#endif
#ifdef RDC_SSDC_AVX2
    case Isa::avx2: return ssdc_avx2::backward(a, dtype, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
#endif
    default: return ssdc_generic::backward(a, dtype, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
  }
}

}  // namespace rdc
