// CUDA sSDC forward and backward (version 1: straightforward and correct, not tuned).
//
// One block per (TP consecutive flat positions, group, batch item). Per dilation the block
// recomputes z_d for all C channels of its positions into shared memory (float32 accumulation;
// float64 for float64 inputs), applies the LeakyReLU there and accumulates P_d * a_d into a
// shared output tile: the per-dilation activations never reach global memory. The backward
// kernel recomputes z_d the same way and accumulates grad x (a scatter through the taps) with
// atomics of the accumulation type, and the parameter gradients with float64 sums and float64
// atomics (one partial per block: with float32 atomics, thousands of partials of both signs
// added in arbitrary order left relative errors near 1e-4, see benchmarks/NOTES.md). Per-element
// arithmetic (tap geometry, LeakyReLU and its derivative) comes from ssdc.h, shared with the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../common/cuda_utils.cuh"
#include "entry.h"

namespace rdc {
namespace {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

template <typename A> __device__ __forceinline__ A to_acc(float v) { return static_cast<A>(v); }
template <typename A> __device__ __forceinline__ A to_acc(double v) { return static_cast<A>(v); }
template <typename A> __device__ __forceinline__ A to_acc(__half v) { return static_cast<A>(__half2float(v)); }
template <typename A> __device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return static_cast<A>(__bfloat162float(v)); }

template <typename T> __device__ __forceinline__ T from_acc(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

// z_d[co, p] = b[co] + sum_k sum_ci W[co, ci, k] x[ci, src_k(p)] for one group (pointers offset).
template <typename T, typename A>
__device__ A conv_at(const SsdcArgs& a, const T* xg, const T* wg, A bias, int64_t co, int64_t p, int64_t N,
                     int64_t d) {
  const int64_t C = a.channels;
  const int K = ssdc_taps(a.ndim);
  A z = bias;
  for (int k = 0; k < K; ++k) {
    const int64_t src = ssdc_source(a, p, k, d);
    if (src < 0) continue;
    const T* wk = wg + co * C * K + k;
    const T* xs = xg + src;
    for (int64_t ci = 0; ci < C; ++ci) z += to_acc<A>(wk[ci * K]) * to_acc<A>(xs[ci * N]);
  }
  return z;
}

template <typename T>
__global__ void ssdc_forward_kernel(SsdcArgs a, const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ b, const T* __restrict__ rw, const T* __restrict__ rb,
                                    T* __restrict__ y, int64_t N, int TP) {
  using A = typename AccOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  A* act = reinterpret_cast<A*>(smem_raw);  // [C][TP]
  const int64_t C = a.channels, G = a.groups, D = a.ndil, K = ssdc_taps(a.ndim);
  A* ys = act + C * TP;  // [C][TP]
  const int64_t g = blockIdx.y, bg = int64_t(blockIdx.z) * G + g, p0 = int64_t(blockIdx.x) * TP;
  const T* xg = x + bg * C * N;
  const T* wg = w + g * C * C * K;
  const A slope = A(a.slope);
  const int64_t CT = C * TP;
  for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) ys[e] = to_acc<A>(rb[g * C + e / TP]);
  for (int di = 0; di < D; ++di) {
    const int64_t d = a.dilation[di];
    for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) {
      const int64_t co = e / TP, p = p0 + e % TP;
      A z = A(0);
      if (p < N) z = conv_at<T, A>(a, xg, wg, to_acc<A>(b[g * C + co]), co, p, N, d);
      act[e] = ssdc_leaky(z, slope);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) {
      const int64_t o = e / TP, pi = e % TP;
      const T* pr = rw + (g * C + o) * D * C + di * C;
      A s = A(0);
      for (int64_t co = 0; co < C; ++co) s += to_acc<A>(pr[co]) * act[co * TP + pi];
      ys[e] += s;
    }
    __syncthreads();
  }
  for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) {
    const int64_t o = e / TP, p = p0 + e % TP;
    if (p < N) y[bg * C * N + o * N + p] = from_acc<T>(ys[e]);
  }
}

template <typename T>
__global__ void ssdc_backward_kernel(SsdcArgs a, const T* __restrict__ x, const T* __restrict__ w,
                                     const T* __restrict__ b, const T* __restrict__ rw, const T* __restrict__ gy,
                                     typename AccOf<T>::type* gx, double* gw, double* gb, double* grw,
                                     double* grb, int64_t N, int TP) {
  using A = typename AccOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  const int64_t C = a.channels, G = a.groups, D = a.ndil, K = ssdc_taps(a.ndim);
  A* gys = reinterpret_cast<A*>(smem_raw);  // [C][TP]
  A* act = gys + C * TP;                     // [C][TP]: z, then LeakyReLU(z)
  A* gzs = act + C * TP;                     // [C][TP]
  const int64_t g = blockIdx.y, bg = int64_t(blockIdx.z) * G + g, p0 = int64_t(blockIdx.x) * TP;
  const T* xg = x + bg * C * N;
  const T* wg = w + g * C * C * K;
  A* gxg = gx + bg * C * N;
  const A slope = A(a.slope);
  const int64_t CT = C * TP;
  for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) {
    const int64_t o = e / TP, p = p0 + e % TP;
    gys[e] = p < N ? to_acc<A>(gy[bg * C * N + o * N + p]) : A(0);
  }
  __syncthreads();
  for (int64_t o = threadIdx.x; o < C; o += blockDim.x) {
    double s = 0.0;
    for (int pi = 0; pi < TP; ++pi) s += double(gys[o * TP + pi]);
    atomicAdd(grb + g * C + o, s);
  }
  for (int di = 0; di < D; ++di) {
    const int64_t d = a.dilation[di];
    for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) {
      const int64_t co = e / TP, p = p0 + e % TP;
      act[e] = p < N ? conv_at<T, A>(a, xg, wg, to_acc<A>(b[g * C + co]), co, p, N, d) : A(0);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < CT; e += blockDim.x) {
      const int64_t co = e / TP, pi = e % TP, p = p0 + pi;
      A ga = A(0);
      for (int64_t o = 0; o < C; ++o) ga += to_acc<A>(rw[(g * C + o) * D * C + di * C + co]) * gys[o * TP + pi];
      const A z = act[e];
      gzs[e] = p < N ? ssdc_leaky_backward(z, ga, slope) : A(0);
      act[e] = ssdc_leaky(z, slope);
    }
    __syncthreads();
    for (int64_t co = threadIdx.x; co < C; co += blockDim.x) {
      double s = 0.0;
      for (int pi = 0; pi < TP; ++pi) s += double(gzs[co * TP + pi]);
      atomicAdd(gb + g * C + co, s);
    }
    for (int64_t e = threadIdx.x; e < C * C; e += blockDim.x) {
      const int64_t o = e / C, co = e % C;
      double s = 0.0;
      for (int pi = 0; pi < TP; ++pi) s += double(gys[o * TP + pi]) * double(act[co * TP + pi]);
      atomicAdd(grw + (g * C + o) * D * C + di * C + co, s);
    }
    for (int64_t e = threadIdx.x; e < C * C * K; e += blockDim.x) {
      const int64_t co = e / (C * K), ci = (e / K) % C;
      const int k = int(e % K);
      double s = 0.0;
      for (int pi = 0; pi < TP; ++pi) {
        const int64_t p = p0 + pi;
        if (p >= N) break;
        const int64_t src = ssdc_source(a, p, k, d);
        if (src >= 0) s += double(gzs[co * TP + pi]) * to_acc<double>(xg[ci * N + src]);
      }
      atomicAdd(gw + g * C * C * K + e, s);
    }
    for (int64_t e = threadIdx.x; e < C * K * TP; e += blockDim.x) {
      const int64_t ci = e / (K * TP), pi = e % TP, p = p0 + pi;
      const int k = int((e / TP) % K);
      if (p >= N) continue;
      const int64_t src = ssdc_source(a, p, k, d);
      if (src < 0) continue;
      A s = A(0);
      for (int64_t co = 0; co < C; ++co) s += to_acc<A>(wg[(co * C + ci) * K + k]) * gzs[co * TP + pi];
      atomicAdd(gxg + ci * N + src, s);
    }
    __syncthreads();
  }
}

constexpr int kSsdcSmem = 48 * 1024;

// Positions per block so that `arrays` [C][TP] tiles of the accumulation type fit the default
// dynamic shared memory.
int positions_per_block(int64_t C, int arrays, size_t acc_bytes) {
  const int64_t tp = std::min<int64_t>(64, kSsdcSmem / (int64_t(arrays) * C * int64_t(acc_bytes)));
  if (tp < 1) throw std::invalid_argument("ssdc: too many channels per group for the CUDA kernel (" + std::to_string(C) + ")");
  return int(tp);
}

template <typename F>
void dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kSsdcF32: return f(float{});
    case kSsdcF64: return f(double{});
    case kSsdcF16: return f(__half{});
    case kSsdcBF16: return f(__nv_bfloat16{});
    default: throw std::invalid_argument("ssdc: unsupported dtype code " + std::to_string(dtype));
  }
}

dim3 grid_for(const SsdcArgs& a, int64_t N, int TP) {
  if (a.groups > 65535 || a.batch > 65535) throw std::invalid_argument("ssdc: at most 65535 groups and batch items on CUDA");
  return dim3(static_cast<unsigned int>((N + TP - 1) / TP), static_cast<unsigned int>(a.groups),
              static_cast<unsigned int>(a.batch));
}

}  // namespace

void ssdc_forward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                       const void* rw, const void* rb, void* y, int device, void* stream) {
  cuda_enter(device, "ssdc");
  const int64_t N = ssdc_numel(a);
  if (N == 0 || a.batch == 0 || a.groups == 0 || a.channels == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename AccOf<T>::type;
    const int TP = positions_per_block(a.channels, 2, sizeof(A));
    const size_t smem = size_t(2) * a.channels * TP * sizeof(A);
    ssdc_forward_kernel<T><<<grid_for(a, N, TP), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
        a, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<const T*>(rw),
        static_cast<const T*>(rb), static_cast<T*>(y), N, TP);
    cuda_check_launch("ssdc", "ssdc_forward_kernel");
  });
}

void ssdc_backward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                        const void* rw, const void* gy, void* gx, double* gw, double* gb, double* grw,
                        double* grb, int device, void* stream) {
  cuda_enter(device, "ssdc");
  const int64_t N = ssdc_numel(a);
  if (N == 0 || a.batch == 0 || a.groups == 0 || a.channels == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename AccOf<T>::type;
    const int TP = positions_per_block(a.channels, 3, sizeof(A));
    const size_t smem = size_t(3) * a.channels * TP * sizeof(A);
    ssdc_backward_kernel<T><<<grid_for(a, N, TP), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
        a, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<const T*>(rw),
        static_cast<const T*>(gy), static_cast<A*>(gx), gw, gb, grw, grb, N, TP);
    cuda_check_launch("ssdc", "ssdc_backward_kernel");
  });
}

}  // namespace rdc
