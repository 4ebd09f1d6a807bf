#include "../common/cuda_utils.cuh"
#include "entry.h"

namespace rdc {

template <int NDIM, typename L>
__global__ void erode_kernel(const L* labels, L* eroded, Shape<NDIM> s, Shape<NDIM> padded, Ball<NDIM> ball) {
  RDC_GRID_STRIDE(j, padded.numel()) {
    int64_t pc[NDIM];
    padded.unravel(j, pc);
    eroded[j] = eroded_at(labels, s, pc, ball);
  }
}

template <int NDIM, typename L>
__global__ void open_kernel(const L* labels, const L* eroded, L* out, Shape<NDIM> s, Shape<NDIM> padded,
                            Ball<NDIM> ball) {
  RDC_GRID_STRIDE(i, s.numel()) {
    int64_t c[NDIM];
    s.unravel(i, c);
    out[i] = opened_label(labels[i], eroded + padded_index(padded, c, ball), ball);
  }
}

template <int NDIM, typename L>
static void opening_typed(const Shape<NDIM>& s, const Ball<NDIM>& ball, const L* labels, L* eroded,
                          L* out, cudaStream_t st) {
  const Shape<NDIM> padded = padded_shape(s, ball);
  if (s.numel() == 0) return;
  erode_kernel<NDIM, L><<<blocks_for(padded.numel(), kThreads), kThreads, 0, st>>>(labels, eroded, s, padded, ball);
  cuda_check_launch("label_opening", "erode_kernel");
  open_kernel<NDIM, L><<<blocks_for(s.numel(), kThreads), kThreads, 0, st>>>(labels, eroded, out, s, padded, ball);
  cuda_check_launch("label_opening", "open_kernel");
}

void label_opening_cuda(int ndim, const int64_t* shape, const int32_t* offsets,
                        const int64_t* image_deltas, const int64_t* padded_deltas, int64_t count,
                        const int64_t* halo, const void* labels, bool is_int64, void* eroded,
                        void* out, int device, void* stream) {
  cuda_enter(device, "label_opening");
  dispatch_ndim(ndim, "label_opening", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const Shape<NDIM> s = make_shape<NDIM>(shape);
    const Ball<NDIM> ball = make_ball<NDIM>(offsets, image_deltas, padded_deltas, count, halo);
    auto st = static_cast<cudaStream_t>(stream);
    if (is_int64)
      opening_typed(s, ball, static_cast<const int64_t*>(labels), static_cast<int64_t*>(eroded),
                    static_cast<int64_t*>(out), st);
    else
      opening_typed(s, ball, static_cast<const int32_t*>(labels), static_cast<int32_t*>(eroded),
                    static_cast<int32_t*>(out), st);
  });
}

}  // namespace rdc
