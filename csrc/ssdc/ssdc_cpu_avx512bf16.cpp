// The bfloat16 sSDC CPU micro-kernels with AVX512-BF16 (vdpbf16ps: 16 lanes, each adding the two
// products of a pair of bf16 to a float32 accumulator), GCC on x86-64 only; ssdc_cpu.cpp calls them
// for bfloat16 tensors when the CPU has avx512_bf16. Same code (ssdc_cpu_impl.h) and register
// blocks as the AVX-512 float32 variant: 8 output channels x 2 vectors of 16 positions, each step
// reducing over a pair of input channels.
#include "entry.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RDC_SSDC_NS ssdc_avx512bf16
#define RDC_SSDC_VB 64
#define RDC_SSDC_COB 8
#define RDC_SSDC_NATIVE_BF16 1
#define RDC_SSDC_BF16_ONLY 1
#define RDC_SSDC_TARGET_PRAGMA _Pragma("GCC target(\"avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma\")")
#include "ssdc_cpu_impl.h"
#endif
