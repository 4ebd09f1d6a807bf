// Host entry points of the sSDC kernels, called by bindings.cpp. Arrays are contiguous and
// allocated by the caller (Python). dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#pragma once

#include <cstdint>

#include "ssdc.h"

namespace rdc {

enum SsdcDtype : int { kSsdcF32 = 0, kSsdcF64 = 1, kSsdcF16 = 2, kSsdcBF16 = 3 };

// ---- CPU (float32, float64; bfloat16 with AVX512-BF16) -------------------------------------------
// y = ssdc(x). All arrays of the dtype.
void ssdc_forward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                      const void* rw, const void* rb, void* y, int threads);
// Gradients of every input given gy; every output is overwritten (no accumulation), same dtype.
void ssdc_backward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                       const void* rw, const void* gy, void* gx, void* gw, void* gb, void* grw,
                       void* grb, int threads);
// Which vector code path the CPU kernels use on this machine ("avx512", "avx2" or "generic").
const char* ssdc_cpu_isa();
// The bfloat16 CPU kernel of this machine: "avx512_bf16", or "" where there is none (the CPU
// lacks AVX512-BF16, or RDCNET_EXT_SSDC_ISA caps the variants); dtype 3 is refused then.
const char* ssdc_cpu_bf16_kind();

// ---- CUDA, CUDA-core kernels (float32, float64, float16, bfloat16; ssdc_cuda.cu) ---------------
// Launch on `stream` of `device`, no synchronisation. Forward writes y (the dtype). Backward
// accumulates into zero-initialised buffers: gx (x's shape) of the accumulation type (float64 for
// float64 inputs, float32 otherwise) and the parameter gradients gw, gb, grw, grb in float64; the
// caller casts them to the dtype.
void ssdc_forward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                       const void* rw, const void* rb, void* y, int device, void* stream);
void ssdc_backward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                        const void* rw, const void* gy, void* gx, double* gw, double* gb, double* grw,
                        double* grb, int device, void* stream);

// ---- CUDA, tensor-core kernels (float16, bfloat16, float32 as TF32; ssdc_tc_cuda.cu) -----------
// Whether they run `channels` per group of `dtype` on `device` (C a multiple of 16 up to 256,
// compute capability >= 8.0, enough shared memory); the entry points throw otherwise.
bool ssdc_tc_supported(int64_t channels, int dtype, int device);
void ssdc_tc_forward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                          const void* rw, const void* rb, void* y, int device, void* stream);
// Backward: gx (float32, zero-initialised, accumulated), gw, gb, grw, grb (float64, overwritten),
// and a float32 scratch workspace of at least ssdc_tc_workspace_floats(a, device) entries.
int64_t ssdc_tc_workspace_floats(const SsdcArgs& a, int device);
void ssdc_tc_backward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                           const void* rw, const void* gy, float* gx, double* gw, double* gb, double* grw,
                           double* grb, float* workspace, int64_t workspace_floats, int device, void* stream);

}  // namespace rdc
