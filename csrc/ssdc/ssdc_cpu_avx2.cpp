// The sSDC CPU micro-kernels compiled for AVX2 + FMA (GCC on x86-64 only); ssdc_cpu.cpp calls
// them when the CPU supports these instructions.
#include "entry.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RDC_SSDC_NS ssdc_avx2
#define RDC_SSDC_VB 32
#define RDC_SSDC_COB 4
#define RDC_SSDC_TARGET_PRAGMA _Pragma("GCC target(\"avx2,fma\")")
#include "ssdc_cpu_impl.h"
#endif
