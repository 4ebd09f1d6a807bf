// CPU sSDC entry points: pick the widest vector variant this machine runs (AVX-512, AVX2, or the
// baseline build) once, then call it. The variants are the same code (ssdc_cpu_impl.h) compiled
// with different instruction sets (GCC target pragmas, x86-64 only) in ssdc_cpu_avx2.cpp and
// ssdc_cpu_avx512.cpp; the baseline one is here.
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
// bfloat16 (ssdc_cpu_bf16.cpp): vdpbf16ps micro-kernels.
namespace ssdc_bf16 {
void forward(const SsdcArgs&, const void*, const void*, const void*, const void*, const void*, void*, int);
void backward(const SsdcArgs&, const void*, const void*, const void*, const void*, const void*, void*, void*, void*,
              void*, void*, int);
}
#endif

namespace {

enum class Isa { generic, avx2, avx512 };

Isa detect() {
  // RDCNET_EXT_SSDC_ISA=generic|avx2 caps the variant (to test the narrower ones on a wide CPU).
  const char* cap = std::getenv("RDCNET_EXT_SSDC_ISA");
  const bool no512 = cap && (std::strcmp(cap, "avx2") == 0 || std::strcmp(cap, "generic") == 0);
  const bool no256 = cap && std::strcmp(cap, "generic") == 0;
#if defined(RDC_SSDC_AVX2) || defined(RDC_SSDC_AVX512)
  __builtin_cpu_init();
#ifdef RDC_SSDC_AVX512
  if (!no512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
    return Isa::avx512;
#endif
#ifdef RDC_SSDC_AVX2
  if (!no256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
#endif
  (void)no512, (void)no256;
  return Isa::generic;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

// The bfloat16 kernels: AVX512-BF16 where the CPU has it and RDCNET_EXT_SSDC_ISA does not cap the
// variants below AVX-512 with bf16 (any value caps it: "avx512" keeps float32 on AVX-512 and lets
// Python compute bfloat16 in float32). An AMX micro-kernel would be another kind here.
enum class Bf16Kind { none, avx512_bf16 };

Bf16Kind detect_bf16() {
#ifdef RDC_SSDC_AVX512
  if (std::getenv("RDCNET_EXT_SSDC_ISA")) return Bf16Kind::none;
  __builtin_cpu_init();
  if (isa() == Isa::avx512 && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"))
    return Bf16Kind::avx512_bf16;
#endif
  return Bf16Kind::none;
}

Bf16Kind bf16_kind() {
  static const Bf16Kind chosen = detect_bf16();
  return chosen;
}

void check(const SsdcArgs& a, int dtype) {
  if (a.ndim != 2 && a.ndim != 3) throw std::invalid_argument("ssdc: ndim must be 2 or 3");
  if (a.ndil < 1 || a.ndil > kSsdcMaxDilations) throw std::invalid_argument("ssdc: 1 to 16 dilations");
  if (dtype == kSsdcBF16 && bf16_kind() == Bf16Kind::none)
    throw std::invalid_argument("ssdc: no bfloat16 CPU kernel on this machine (it needs AVX512-BF16)");
  if (dtype != kSsdcF32 && dtype != kSsdcF64 && dtype != kSsdcBF16)
    throw std::invalid_argument("ssdc: the CPU kernels take float32, float64 or bfloat16, got dtype code " +
                                std::to_string(dtype));
}

}  // namespace

const char* ssdc_cpu_isa() {
  switch (isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

const char* ssdc_cpu_bf16_kind() { return bf16_kind() == Bf16Kind::avx512_bf16 ? "avx512_bf16" : ""; }

void ssdc_forward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                      const void* rw, const void* rb, void* y, int threads) {
  check(a, dtype);
#ifdef RDC_SSDC_AVX512
  if (dtype == kSsdcBF16) return ssdc_bf16::forward(a, x, w, b, rw, rb, y, threads);
#endif
  switch (isa()) {
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
#ifdef RDC_SSDC_AVX512
  if (dtype == kSsdcBF16) return ssdc_bf16::backward(a, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
#endif
  switch (isa()) {
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
