// CUDA launch helpers: error checks that become C++ exceptions (and so Python RuntimeErrors
// naming the op), a grid-stride loop and a launch-size rule.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace rdc {

inline void cuda_check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state for the next call
    throw std::runtime_error(std::string(op) + ": CUDA error in " + what + ": " +
                             cudaGetErrorString(err));
  }
}

// Selects the caller's device for this thread; kernels then launch on the caller's stream.
inline void cuda_enter(int device, const char* op) { cuda_check(cudaSetDevice(device), op, "cudaSetDevice"); }

inline void cuda_check_launch(const char* op, const char* kernel) { cuda_check(cudaGetLastError(), op, kernel); }

inline unsigned int blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 65535 * 16 ? (b < 1 ? 1 : b) : 65535 * 16);
}

#define RDC_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

constexpr int kThreads = 256;

}  // namespace rdc
