// The sSDC CPU micro-kernels compiled for AVX-512 (GCC on x86-64 only); ssdc_cpu.cpp calls them
// when the CPU supports these instructions. 32 vector registers: register blocks of 8 output
// channels x 2 vectors of 16 positions.
#include "entry.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RDC_SSDC_NS ssdc_avx512
#define RDC_SSDC_VB 64
#define RDC_SSDC_COB 8
#define RDC_SSDC_TARGET_PRAGMA _Pragma("GCC target(\"avx512f,avx512vl,avx2,fma\")")
#include "ssdc_cpu_impl.h"
#endif
