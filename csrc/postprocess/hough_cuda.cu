#include "../common/cuda_utils.cuh"
#include "entry.h"

namespace rdc {

template <int NDIM>
__global__ void hough_kernel(const float* emb, const uint8_t* mask, int32_t* votes, int64_t n,
                             VoteGeometry<NDIM> g) {
  RDC_GRID_STRIDE(i, n) {
    const int64_t b = vote_bin(emb, mask, i, n, g);
    if (b >= 0) atomicAdd(votes + b, 1);
  }
}

void hough_votes_cuda(int ndim, const int64_t* shape, const double* spacing, const float* emb,
                      const uint8_t* mask, int32_t* votes, int device, void* stream) {
  cuda_enter(device, "hough_votes");
  dispatch_ndim(ndim, "hough_votes", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    VoteGeometry<NDIM> g;
    g.shape = make_shape<NDIM>(shape);
    for (int a = 0; a < NDIM; ++a) {
      g.spacing[a] = spacing[a];
      g.inv_spacing[a] = 1.0 / spacing[a];
    }
    const int64_t n = g.shape.numel();
    if (n == 0) return;
    hough_kernel<NDIM><<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(emb, mask, votes, n, g);
    cuda_check_launch("hough_votes", "hough_kernel");
  });
}

}  // namespace rdc
