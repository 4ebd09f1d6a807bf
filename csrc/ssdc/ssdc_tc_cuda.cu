// Tensor-core sSDC (opt-in: RDCNET_EXT_SSDC_CUDA_KERNEL=tensorcore, see rdcnet_ext/_launch.py).
//
// Implicit GEMM by taps with nvcuda::wmma (sm_80+): float16/bfloat16 operands, or float32 rounded
// to TF32, always with float32 accumulation. C (channels per group) must be a multiple of 16.
//
// Forward: a CTA of 4 warps owns one (tile of TP flat positions, group g, batch item). Per
// dilation d it computes Z (C x TP) = sum over the 3^ndim taps k of W_k (C x C) . X_k (C x TP),
// X_k being the input at the tap's shifted positions (zero outside the image), gathered into
// shared memory tap by tap together with W_k. Z goes through shared memory once (float32) for the
// bias and the LeakyReLU, is rounded to the operand type as A_d, and Y += P_d . A_d (P_d: the
// dilation's C x C slice of the 1x1 reduction) is accumulated in registers across dilations.
// Z and A_d never leave the SM. Each warp holds up to kTcFrags 16x16 accumulator fragments of Z
// and of Y; TP is chosen so that (C/16) * (TP/16) <= kTcWarps * kTcFrags.
//
// Backward: CTAs are persistent per (slice, group) and walk the tiles of their group. Per tile,
// with gY staged in shared memory, per dilation: recompute Z_d as in forward; dA = P_d^T gY
// (tensor cores); dZ = LeakyReLU'(Z) * dA and A = LeakyReLU(Z) (elementwise); then, on tensor
// cores, dP_d += gY . A^T and, per tap, dW_k += dZ . X_k^T and T_k = W_k^T . dZ, the last one
// scattered into grad x at the tap's source positions with float32 atomics (a handful per
// element; the only non-deterministic sum here). The parameter-gradient sums go into the CTA's own
// float32 slot of a workspace (no atomics), and a second kernel adds the slots in a fixed order
// in float64: deterministic, and free of the cancellation error of long float32 atomic chains.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../common/cuda_utils.cuh"
#include "entry.h"

// wmma with bfloat16 and TF32 needs sm_80: below it (other RDCNET_EXT_CUDA_ARCHS) the kernels are
// stubs, and the host never launches them there (compute capability is checked first).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RDC_TC_MMA 1
#endif

namespace rdc {
namespace {

constexpr int kTcWarps = 4;
constexpr int kTcThreads = kTcWarps * 32;
constexpr int kTcFrags = 4;             // 16x16 float32 accumulator fragments per warp per C x TP tile
constexpr int64_t kTcMaxChannels = 256; // (C/16) fragments of rows must fit kTcWarps * kTcFrags

// Positions per tile: as many 16-wide columns of fragments as the warps' accumulators hold.
RDC_HD int64_t tc_positions(int64_t C) {
  const int64_t rows = C / 16, cols = (kTcWarps * kTcFrags) / (rows > 0 ? rows : 1);
  return 16 * (cols > 1 ? cols : 1);
}

// Byte offsets of the shared-memory arrays (128-byte aligned, as wmma needs 32).
struct TcLayout {
  int64_t xs, ws, ps, as, gys, dzs, zs, ts, srcs, total;
};

RDC_HD int64_t tc_align(int64_t n) { return (n + 127) / 128 * 128; }

RDC_HD TcLayout tc_layout(int64_t C, int64_t TP, int64_t sbytes, bool backward) {
  TcLayout L{};
  int64_t o = 0;
  L.xs = o, o += tc_align(C * TP * sbytes);   // X_k   [ci][p]  operand type
  L.ws = o, o += tc_align(C * C * sbytes);    // W_k   [co][ci]
  L.ps = o, o += tc_align(C * C * sbytes);    // P_d   [o][co]
  L.as = o, o += tc_align(C * TP * sbytes);   // A_d   [co][p]
  L.zs = o, o += tc_align(C * TP * 4);        // Z (float32), then Y at the end of forward
  L.srcs = o, o += tc_align(TP * 8);          // source positions of the staged tap
  if (backward) {
    L.gys = o, o += tc_align(C * TP * sbytes); // gY    [o][p]
    L.dzs = o, o += tc_align(C * TP * sbytes); // dZ    [co][p]
    L.ts = o, o += tc_align(C * TP * 4);       // float32 scratch: gY, dA, dZ, T_k
  }
  L.total = o;
  return L;
}

int64_t tc_smem_bytes(int64_t C, int dtype, bool backward) {
  const int64_t sbytes = dtype == kSsdcF32 ? 4 : 2;
  return tc_layout(C, tc_positions(C), sbytes, backward).total;
}

using namespace nvcuda;

#ifdef RDC_TC_MMA
// Operand type S, wmma element type E and k-step per storage type T.
template <typename T> struct Tc;
template <> struct Tc<__half> {
  using S = __half;
  using E = __half;
  static constexpr int KS = 16;
  static __device__ __forceinline__ float f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ S cvt(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ S from(__half v) { return v; }
  static __device__ __forceinline__ __half out(float v) { return __float2half_rn(v); }
};
template <> struct Tc<__nv_bfloat16> {
  using S = __nv_bfloat16;
  using E = __nv_bfloat16;
  static constexpr int KS = 16;
  static __device__ __forceinline__ float f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ S cvt(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ S from(__nv_bfloat16 v) { return v; }
  static __device__ __forceinline__ __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};
template <> struct Tc<float> {
  using S = float;  // holds TF32-rounded values, so fragment loads need no further conversion
  using E = wmma::precision::tf32;
  static constexpr int KS = 8;
  static __device__ __forceinline__ float f(float v) { return v; }
  static __device__ __forceinline__ S cvt(float v) { return wmma::__float_to_tf32(v); }
  static __device__ __forceinline__ S from(float v) { return wmma::__float_to_tf32(v); }
  static __device__ __forceinline__ float out(float v) { return v; }
};

template <typename T> using FragC = wmma::fragment<wmma::accumulator, 16, 16, Tc<T>::KS, float>;
template <typename T, typename L> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tc<T>::KS, typename Tc<T>::E, L>;
template <typename T, typename L> using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tc<T>::KS, typename Tc<T>::E, L>;

// Everything a tile needs: geometry and the shared-memory arrays.
template <typename T>
struct Tile {
  using S = typename Tc<T>::S;
  const SsdcArgs& a;
  int64_t C, N, TP, K;
  int NT, nf, warp;
  S *xs, *ws, *ps, *as, *gys, *dzs;
  float *zs, *ts;
  int64_t* srcs;

  __device__ Tile(const SsdcArgs& args, unsigned char* smem, int64_t n, int64_t tp, bool backward)
      : a(args), C(args.channels), N(n), TP(tp), K(ssdc_taps(args.ndim)) {
    NT = int(TP / 16);
    nf = int(C / 16) * NT;
    warp = int(threadIdx.x / 32);
    const TcLayout L = tc_layout(C, TP, sizeof(S), backward);
    xs = reinterpret_cast<S*>(smem + L.xs);
    ws = reinterpret_cast<S*>(smem + L.ws);
    ps = reinterpret_cast<S*>(smem + L.ps);
    as = reinterpret_cast<S*>(smem + L.as);
    zs = reinterpret_cast<float*>(smem + L.zs);
    srcs = reinterpret_cast<int64_t*>(smem + L.srcs);
    gys = backward ? reinterpret_cast<S*>(smem + L.gys) : nullptr;
    dzs = backward ? reinterpret_cast<S*>(smem + L.dzs) : nullptr;
    ts = backward ? reinterpret_cast<float*>(smem + L.ts) : nullptr;
  }

  // Stages tap k at dilation d: srcs[j] (source of position p0 + j, -1 outside), xs = X_k, ws = W_k.
  // Starts with a barrier: the previous users of these arrays are done.
  __device__ void stage_tap(const T* xg, const T* wg, int64_t p0, int k, int64_t d) {
    __syncthreads();
    for (int64_t j = threadIdx.x; j < TP; j += blockDim.x) {
      const int64_t p = p0 + j;
      srcs[j] = p < N ? ssdc_source(a, p, k, d) : -1;
    }
    for (int64_t e = threadIdx.x; e < C * C; e += blockDim.x) ws[e] = Tc<T>::from(wg[e * K + k]);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < C * TP; e += blockDim.x) {
      const int64_t s = srcs[e % TP];
      xs[e] = s >= 0 ? Tc<T>::from(xg[(e / TP) * N + s]) : Tc<T>::cvt(0.0f);
    }
    __syncthreads();
  }

  // z = conv_d(x) without bias for the tile (the warp's fragments f = warp + i * kTcWarps).
  __device__ void conv(FragC<T> (&z)[kTcFrags], const T* xg, const T* wg, int64_t p0, int64_t d) {
#pragma unroll
    for (int i = 0; i < kTcFrags; ++i) wmma::fill_fragment(z[i], 0.0f);
    for (int k = 0; k < K; ++k) {
      stage_tap(xg, wg, p0, k, d);
#pragma unroll
      for (int i = 0; i < kTcFrags; ++i) {
        const int f = warp + i * kTcWarps;
        if (f < nf) {
          const int64_t m = f / NT, n = f % NT;
          for (int64_t kk = 0; kk < C; kk += Tc<T>::KS) {
            FragA<T, wmma::row_major> fa;
            FragB<T, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, ws + m * 16 * C + kk, unsigned(C));
            wmma::load_matrix_sync(fb, xs + kk * TP + n * 16, unsigned(TP));
            wmma::mma_sync(z[i], fa, fb, z[i]);
          }
        }
      }
    }
  }

  // Stores C x TP fragments into a float32 [C][TP] array.
  __device__ void store(float* dst, FragC<T> (&z)[kTcFrags]) {
#pragma unroll
    for (int i = 0; i < kTcFrags; ++i) {
      const int f = warp + i * kTcWarps;
      if (f < nf)
        wmma::store_matrix_sync(dst + (f / NT) * 16 * TP + (f % NT) * 16, z[i], unsigned(TP), wmma::mem_row_major);
    }
  }

  // ps = P_d (rows o, columns co), rounded to the operand type.
  __device__ void stage_reduce(const T* rw, int64_t g, int64_t D, int di) {
    for (int64_t e = threadIdx.x; e < C * C; e += blockDim.x)
      ps[e] = Tc<T>::from(rw[(g * C + e / C) * D * C + di * C + e % C]);
  }

  // acc[C x C fragments in global float32, ld C] += A (row-major [C][TP]) . B^T (B row-major
  // [C][TP], read as a column-major TP x C operand): the per-tile parameter-gradient products.
  __device__ void add_outer(float* acc, const S* A, const S* B) {
    const int64_t cb = C / 16;
    for (int64_t f = warp; f < cb * cb; f += kTcWarps) {
      const int64_t m = f / cb, n = f % cb;
      FragC<T> c;
      float* at = acc + m * 16 * C + n * 16;
      wmma::load_matrix_sync(c, at, unsigned(C), wmma::mem_row_major);
      for (int64_t kk = 0; kk < TP; kk += Tc<T>::KS) {
        FragA<T, wmma::row_major> fa;
        FragB<T, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, A + m * 16 * TP + kk, unsigned(TP));
        wmma::load_matrix_sync(fb, B + n * 16 * TP + kk, unsigned(TP));
        wmma::mma_sync(c, fa, fb, c);
      }
      wmma::store_matrix_sync(at, c, unsigned(C), wmma::mem_row_major);
      __syncwarp();  // the same warp re-reads this fragment for the next tile
    }
  }

  // out (C x TP, float32 [C][TP]) = M^T . B with M row-major [C][C] in shared memory (read as a
  // column-major operand) and B row-major [C][TP].
  __device__ void transposed_product(float* out, const S* M, const S* B) {
    for (int f = warp; f < nf; f += kTcWarps) {
      const int64_t m = f / NT, n = f % NT;
      FragC<T> c;
      wmma::fill_fragment(c, 0.0f);
      for (int64_t kk = 0; kk < C; kk += Tc<T>::KS) {
        FragA<T, wmma::col_major> fa;
        FragB<T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, M + kk * C + m * 16, unsigned(C));
        wmma::load_matrix_sync(fb, B + kk * TP + n * 16, unsigned(TP));
        wmma::mma_sync(c, fa, fb, c);
      }
      wmma::store_matrix_sync(out + m * 16 * TP + n * 16, c, unsigned(TP), wmma::mem_row_major);
    }
  }
};
#endif  // RDC_TC_MMA

template <typename T>
__global__ void __launch_bounds__(kTcThreads)
    ssdc_tc_forward_kernel(SsdcArgs a, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                           const T* __restrict__ rw, const T* __restrict__ rb, T* __restrict__ y, int64_t N,
                           int64_t TP) {
#ifdef RDC_TC_MMA
  extern __shared__ __align__(128) unsigned char tc_smem[];
  Tile<T> t(a, tc_smem, N, TP, false);
  const int64_t C = t.C, G = a.groups, D = a.ndil;
  const int64_t g = blockIdx.y, bg = int64_t(blockIdx.z) * G + g, p0 = int64_t(blockIdx.x) * TP;
  const T* xg = x + bg * C * N;
  const T* wg = w + g * C * C * t.K;
  const float slope = float(a.slope);
  FragC<T> yacc[kTcFrags], z[kTcFrags];
#pragma unroll
  for (int i = 0; i < kTcFrags; ++i) wmma::fill_fragment(yacc[i], 0.0f);
  for (int di = 0; di < D; ++di) {
    t.conv(z, xg, wg, p0, a.dilation[di]);
    t.store(t.zs, z);
    t.stage_reduce(rw, g, D, di);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < C * TP; e += blockDim.x)
      t.as[e] = Tc<T>::cvt(ssdc_leaky(t.zs[e] + Tc<T>::f(b[g * C + e / TP]), slope));
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTcFrags; ++i) {
      const int f = t.warp + i * kTcWarps;
      if (f < t.nf) {
        const int64_t m = f / t.NT, n = f % t.NT;
        for (int64_t kk = 0; kk < C; kk += Tc<T>::KS) {
          FragA<T, wmma::row_major> fa;
          FragB<T, wmma::row_major> fb;
          wmma::load_matrix_sync(fa, t.ps + m * 16 * C + kk, unsigned(C));
          wmma::load_matrix_sync(fb, t.as + kk * TP + n * 16, unsigned(TP));
          wmma::mma_sync(yacc[i], fa, fb, yacc[i]);
        }
      }
    }
    // The next dilation's first stage_tap starts with a barrier before ps/as/zs are rewritten.
  }
  __syncthreads();
  t.store(t.zs, yacc);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < C * TP; e += blockDim.x) {
    const int64_t o = e / TP, p = p0 + e % TP;
    if (p < N) y[bg * C * N + o * N + p] = Tc<T>::out(t.zs[e] + Tc<T>::f(rb[g * C + o]));
  }
#else
  __trap();  // never launched: the host requires compute capability 8.0
#endif
}

// Workspace slot of one CTA (float32): dW [K][C][C], dP [D][C][C], db [C], d reduce_bias [C].
RDC_HD int64_t tc_slot_floats(const SsdcArgs& a) {
  const int64_t C = a.channels;
  return (ssdc_taps(a.ndim) + a.ndil) * C * C + 2 * C;
}

template <typename T>
__global__ void __launch_bounds__(kTcThreads)
    ssdc_tc_backward_kernel(SsdcArgs a, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                            const T* __restrict__ rw, const T* __restrict__ gy, float* __restrict__ gx,
                            float* __restrict__ work, int64_t N, int64_t TP, int64_t ntiles) {
#ifdef RDC_TC_MMA
  extern __shared__ __align__(128) unsigned char tc_smem[];
  Tile<T> t(a, tc_smem, N, TP, true);
  const int64_t C = t.C, G = a.groups, D = a.ndil, K = t.K, CC = C * C;
  const int64_t g = blockIdx.y, slices = gridDim.x, slot = tc_slot_floats(a);
  float* pw = work + (g * slices + blockIdx.x) * slot;
  float* pp = pw + K * CC;
  float* pb = pp + D * CC;
  float* prb = pb + C;
  for (int64_t e = threadIdx.x; e < slot; e += blockDim.x) pw[e] = 0.0f;
  const T* wg = w + g * CC * K;
  const float slope = float(a.slope);
  FragC<T> z[kTcFrags];
  for (int64_t item = blockIdx.x; item < a.batch * ntiles; item += slices) {
    const int64_t bg = (item / ntiles) * G + g, p0 = (item % ntiles) * TP;
    const T* xg = x + bg * C * N;
    float* gxg = gx + bg * C * N;
    __syncthreads();  // the previous tile is done with shared memory; the slot's zeros are visible
    for (int64_t e = threadIdx.x; e < C * TP; e += blockDim.x) {
      const int64_t p = p0 + e % TP;
      const float v = p < N ? Tc<T>::f(gy[bg * C * N + (e / TP) * N + p]) : 0.0f;
      t.gys[e] = Tc<T>::cvt(v);
      t.ts[e] = v;
    }
    __syncthreads();
    for (int64_t o = threadIdx.x; o < C; o += blockDim.x) {  // one owner per entry: fixed order
      float s = 0.0f;
      for (int64_t j = 0; j < TP; ++j) s += t.ts[o * TP + j];
      prb[o] += s;
    }
    for (int di = 0; di < D; ++di) {
      const int64_t d = a.dilation[di];
      t.conv(z, xg, wg, p0, d);  // its first barrier also ends the reads of ts above
      t.store(t.zs, z);
      t.stage_reduce(rw, g, D, di);
      __syncthreads();
      t.transposed_product(t.ts, t.ps, t.gys);  // dA = P_d^T gY
      __syncthreads();
      for (int64_t e = threadIdx.x; e < C * TP; e += blockDim.x) {
        const bool valid = p0 + e % TP < N;
        const float zv = t.zs[e] + Tc<T>::f(b[g * C + e / TP]);
        const float dz = valid ? ssdc_leaky_backward(zv, t.ts[e], slope) : 0.0f;
        t.dzs[e] = Tc<T>::cvt(dz);
        t.as[e] = Tc<T>::cvt(valid ? ssdc_leaky(zv, slope) : 0.0f);
        t.ts[e] = dz;
      }
      __syncthreads();
      for (int64_t co = threadIdx.x; co < C; co += blockDim.x) {
        float s = 0.0f;
        for (int64_t j = 0; j < TP; ++j) s += t.ts[co * TP + j];
        pb[co] += s;
      }
      t.add_outer(pp + di * CC, t.gys, t.as);  // dP_d += gY A^T
      for (int k = 0; k < K; ++k) {
        t.stage_tap(xg, wg, p0, k, d);               // barrier first: ts reads are done
        t.add_outer(pw + k * CC, t.dzs, t.xs);      // dW_k += dZ X_k^T
        t.transposed_product(t.ts, t.ws, t.dzs);    // T_k = W_k^T dZ
        __syncthreads();
        for (int64_t e = threadIdx.x; e < C * TP; e += blockDim.x) {
          const int64_t s = t.srcs[e % TP];
          if (s >= 0) atomicAdd(gxg + (e / TP) * N + s, t.ts[e]);
        }
      }
    }
  }
#else
  __trap();  // never launched: the host requires compute capability 8.0
#endif
}

// Sums the CTAs' slots of each group in slot order, in float64, into the gradient buffers
// (float64, torch layouts: weight (G*C, C, K), reduce_weight (G*C, D*C), biases (G*C)).
__global__ void ssdc_tc_reduce_kernel(SsdcArgs a, const float* __restrict__ work, int64_t slices,
                                      double* __restrict__ gw, double* __restrict__ gb, double* __restrict__ grw,
                                      double* __restrict__ grb) {
  const int64_t C = a.channels, K = ssdc_taps(a.ndim), D = a.ndil, CC = C * C, slot = tc_slot_floats(a);
  RDC_GRID_STRIDE(i, a.groups * slot) {
    const int64_t g = i / slot, e = i % slot;
    double s = 0.0;
    for (int64_t sl = 0; sl < slices; ++sl) s += double(work[(g * slices + sl) * slot + e]);
    if (e < K * CC) {
      const int64_t k = e / CC, co = (e / C) % C, ci = e % C;
      gw[((g * C + co) * C + ci) * K + k] = s;
    } else if (e < (K + D) * CC) {
      const int64_t r = e - K * CC, di = r / CC, o = (r / C) % C, co = r % C;
      grw[(g * C + o) * D * C + di * C + co] = s;
    } else if (e < (K + D) * CC + C) {
      gb[g * C + (e - (K + D) * CC)] = s;
    } else {
      grb[g * C + (e - (K + D) * CC - C)] = s;
    }
  }
}

template <typename F>
void tc_dispatch(int dtype, F&& f) {
  switch (dtype) {
    case kSsdcF32: return f(float{});
    case kSsdcF16: return f(__half{});
    case kSsdcBF16: return f(__nv_bfloat16{});
    default: throw std::invalid_argument("ssdc: the tensor-core kernel takes float32 (TF32), float16 or bfloat16, got dtype code " + std::to_string(dtype));
  }
}

int device_attr(cudaDeviceAttr attr, int device) {
  int v = 0;
  cuda_check(cudaDeviceGetAttribute(&v, attr, device), "ssdc", "cudaDeviceGetAttribute");
  return v;
}

// Why the tensor-core kernel cannot run this case on `device`, or "" when it can.
std::string tc_unsupported(int64_t C, int dtype, int device) {
  if (dtype != kSsdcF32 && dtype != kSsdcF16 && dtype != kSsdcBF16) return "dtype is not float32, float16 or bfloat16";
  if (C <= 0 || C % 16 != 0 || C > kTcMaxChannels)
    return "channels per group must be a positive multiple of 16, at most " + std::to_string(kTcMaxChannels) + " (got " + std::to_string(C) + ")";
  if (device_attr(cudaDevAttrComputeCapabilityMajor, device) < 8) return "needs compute capability 8.0 or newer";
  const int64_t need = tc_smem_bytes(C, dtype, true);
  const int64_t have = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (need > have)
    return "needs " + std::to_string(need) + " bytes of shared memory per block, the device has " + std::to_string(have);
  return "";
}

void tc_require(const SsdcArgs& a, int dtype, int device) {
  const std::string why = tc_unsupported(a.channels, dtype, device);
  if (!why.empty()) throw std::invalid_argument("ssdc: tensor-core kernel: " + why);
  if (a.groups > 65535 || a.batch > 65535) throw std::invalid_argument("ssdc: at most 65535 groups and batch items on CUDA");
}

template <typename K>
void tc_smem_attr(K kernel, int64_t bytes) {
  cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "ssdc",
             "cudaFuncSetAttribute(tensor-core kernel shared memory)");
}

// Persistent backward CTAs per group: about two per SM in all, at most one per tile.
int64_t tc_slices(const SsdcArgs& a, int device) {
  const int64_t tiles = a.batch * ((ssdc_numel(a) + tc_positions(a.channels) - 1) / tc_positions(a.channels));
  const int64_t sms = device_attr(cudaDevAttrMultiProcessorCount, device);
  const int64_t want = (2 * sms + a.groups - 1) / std::max<int64_t>(a.groups, 1);
  return std::max<int64_t>(1, std::min(tiles, std::min<int64_t>(want, 65535)));
}

}  // namespace

bool ssdc_tc_supported(int64_t channels, int dtype, int device) {
  cuda_enter(device, "ssdc");
  return tc_unsupported(channels, dtype, device).empty();
}

void ssdc_tc_forward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                          const void* rw, const void* rb, void* y, int device, void* stream) {
  cuda_enter(device, "ssdc");
  tc_require(a, dtype, device);
  const int64_t N = ssdc_numel(a);
  if (N == 0 || a.batch == 0 || a.groups == 0) return;
  const int64_t TP = tc_positions(a.channels), smem = tc_smem_bytes(a.channels, dtype, false);
  const dim3 grid(static_cast<unsigned int>((N + TP - 1) / TP), static_cast<unsigned int>(a.groups),
                  static_cast<unsigned int>(a.batch));
  if ((N + TP - 1) / TP > 0x7fffffff) throw std::invalid_argument("ssdc: image too large for the tensor-core kernel");
  tc_dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    tc_smem_attr(ssdc_tc_forward_kernel<T>, smem);
    ssdc_tc_forward_kernel<T><<<grid, kTcThreads, smem, static_cast<cudaStream_t>(stream)>>>(
        a, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<const T*>(rw),
        static_cast<const T*>(rb), static_cast<T*>(y), N, TP);
    cuda_check_launch("ssdc", "ssdc_tc_forward_kernel");
  });
}

int64_t ssdc_tc_workspace_floats(const SsdcArgs& a, int device) {
  cuda_enter(device, "ssdc");
  return a.groups * tc_slices(a, device) * tc_slot_floats(a);
}

void ssdc_tc_backward_cuda(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b,
                           const void* rw, const void* gy, float* gx, double* gw, double* gb, double* grw,
                           double* grb, float* workspace, int64_t workspace_floats, int device, void* stream) {
  cuda_enter(device, "ssdc");
  tc_require(a, dtype, device);
  const int64_t N = ssdc_numel(a);
  if (N == 0 || a.batch == 0 || a.groups == 0) return;
  const int64_t slices = tc_slices(a, device);
  if (workspace_floats < a.groups * slices * tc_slot_floats(a))
    throw std::invalid_argument("ssdc: tensor-core backward workspace too small (" + std::to_string(workspace_floats) + " floats)");
  const int64_t TP = tc_positions(a.channels), smem = tc_smem_bytes(a.channels, dtype, true);
  const int64_t ntiles = (N + TP - 1) / TP;
  const dim3 grid(static_cast<unsigned int>(slices), static_cast<unsigned int>(a.groups));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  tc_dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    tc_smem_attr(ssdc_tc_backward_kernel<T>, smem);
    ssdc_tc_backward_kernel<T><<<grid, kTcThreads, smem, s>>>(
        a, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<const T*>(rw),
        static_cast<const T*>(gy), gx, workspace, N, TP, ntiles);
    cuda_check_launch("ssdc", "ssdc_tc_backward_kernel");
  });
  ssdc_tc_reduce_kernel<<<blocks_for(a.groups * tc_slot_floats(a), kThreads), kThreads, 0, s>>>(a, workspace, slices, gw, gb,
                                                                                                 grw, grb);
  cuda_check_launch("ssdc", "ssdc_tc_reduce_kernel");
}

}  // namespace rdc
