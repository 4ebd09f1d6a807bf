#include "../common/cuda_utils.cuh"
#include "entry.h"

namespace rdc {

template <int NDIM, typename In>
__global__ void box_sum_kernel(const In* in, int64_t* out, int axis, int64_t radius,
                               Shape<NDIM> s, int64_t stride) {
  RDC_GRID_STRIDE(i, s.numel()) out[i] = box_sum_along<NDIM>(in, i, axis, radius, s, stride);
}

void box_sum_cuda(int ndim, const int64_t* shape, int64_t radius, const void* in, bool in_is_int64,
                  int64_t* out, int64_t* tmp, int device, void* stream) {
  cuda_enter(device, "find_peaks");
  dispatch_ndim(ndim, "find_peaks", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const Shape<NDIM> s = make_shape<NDIM>(shape);
    const int64_t n = s.numel();
    if (n == 0) return;
    auto st = static_cast<cudaStream_t>(stream);
    const unsigned int blocks = blocks_for(n, kThreads);
    int64_t* dst = (NDIM % 2 == 0) ? tmp : out;
    int64_t stride = n;
    for (int axis = 0; axis < NDIM; ++axis) {
      stride /= s.size[axis];
      if (axis == 0) {
        if (in_is_int64)
          box_sum_kernel<NDIM><<<blocks, kThreads, 0, st>>>(static_cast<const int64_t*>(in), dst, axis, radius, s, stride);
        else
          box_sum_kernel<NDIM><<<blocks, kThreads, 0, st>>>(static_cast<const int32_t*>(in), dst, axis, radius, s, stride);
      } else {
        int64_t* next = (dst == out) ? tmp : out;
        box_sum_kernel<NDIM><<<blocks, kThreads, 0, st>>>(static_cast<const int64_t*>(dst), next, axis, radius, s, stride);
        dst = next;
      }
      cuda_check_launch("find_peaks", "box_sum_kernel");
    }
  });
}

template <int NDIM, typename S>
__global__ void peaks_kernel(const S* score, uint8_t* flags, PeakParams<NDIM> p) {
  RDC_GRID_STRIDE(i, p.shape.numel()) flags[i] = is_peak(score, i, p) ? 1 : 0;
}

void find_peaks_cuda(int ndim, const int64_t* shape, const int64_t* window, int64_t min_votes,
                     const void* score, bool score_is_int64, uint8_t* flags, int device,
                     void* stream) {
  cuda_enter(device, "find_peaks");
  dispatch_ndim(ndim, "find_peaks", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    PeakParams<NDIM> p;
    p.shape = make_shape<NDIM>(shape);
    for (int a = 0; a < NDIM; ++a) p.window[a] = window[a];
    p.min_votes = min_votes;
    const int64_t n = p.shape.numel();
    if (n == 0) return;
    auto st = static_cast<cudaStream_t>(stream);
    if (score_is_int64)
      peaks_kernel<NDIM><<<blocks_for(n, kThreads), kThreads, 0, st>>>(static_cast<const int64_t*>(score), flags, p);
    else
      peaks_kernel<NDIM><<<blocks_for(n, kThreads), kThreads, 0, st>>>(static_cast<const int32_t*>(score), flags, p);
    cuda_check_launch("find_peaks", "peaks_kernel");
  });
}

}  // namespace rdc
