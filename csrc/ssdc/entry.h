// Host entry points of the sSDC kernels, called by bindings.cpp. Arrays are contiguous and
// allocated by the caller (Python). dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#pragma once

#include <cstdint>

#include "ssdc.h"

namespace rdc {

enum SsdcDtype : int { kSsdcF32 = 0, kSsdcF64 = 1, kSsdcF16 = 2, kSsdcBF16 = 3 };

// ---- CPU (float32, float64) -------------------------------------------------------------------
// y = ssdc(x). All arrays of the dtype.
void ssdc_forward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                      const void* rw, const void* rb, void* y, int threads);
// Gradients of every input given gy; every output is overwritten (no accumulation), same dtype.
void ssdc_backward_cpu(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                       const void* rw, const void* gy, void* gx, void* gw, void* gb, void* grw,
                       void* grb, int threads);
// Which vector code path the CPU kernels use on this machine ("avx512", "avx2" or "generic").
const char* ssdc_cpu_isa();

// ---- CUDA (float32, float64, float16, bfloat16) ------------------------------------------------
// Launch on `stream` of `device`, no synchronisation. Forward writes y (the dtype). Backward
// accumulates into zero-initialised buffers of the accumulation type (float64 for float64 inputs,
// float32 otherwise): gx (x's shape), gw, gb, grw, grb; the caller casts them to the dtype.
void ssdc_forward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                       const void* rw, const void* rb, void* y, int device, void* stream);
void ssdc_backward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                        const void* rw, const void* gy, void* gx, void* gw, void* gb, void* grw,
                        void* grb, int device, void* stream);

}  // namespace rdc
