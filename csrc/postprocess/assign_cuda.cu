#include "../common/cuda_utils.cuh"
#include "entry.h"

namespace rdc {

template <int NDIM>
__global__ void cell_candidates_kernel(CentreGrid<NDIM> g, int32_t* counts, const int32_t* starts,
                                       int32_t* items) {
  RDC_GRID_STRIDE(c, g.cells.numel()) {
    if (items == nullptr)
      counts[c] = cell_candidates(g, c, nullptr);
    else
      cell_candidates(g, c, items + starts[c]);
  }
}

void cell_candidates_cuda(const AssignArgs& args, int32_t* counts, const int32_t* starts,
                          int32_t* items, int device, void* stream) {
  cuda_enter(device, "assign_to_centres");
  dispatch_ndim(args.ndim, "assign_to_centres", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const CentreGrid<NDIM> g = make_grid<NDIM>(args);
    const int64_t cells = g.cells.numel();
    cell_candidates_kernel<NDIM><<<blocks_for(cells, 128), 128, 0, static_cast<cudaStream_t>(stream)>>>(g, counts, starts, items);
    cuda_check_launch("assign_to_centres", "cell_candidates_kernel");
  });
}

template <int NDIM>
__global__ void assign_kernel(CentreGrid<NDIM> g, const float* emb, const uint8_t* mask,
                              const int32_t* cand_start, const int32_t* cand_items, double max_d2,
                              int32_t* labels, int64_t n) {
  RDC_GRID_STRIDE(i, n) labels[i] = nearest_label(emb, mask, i, n, g, cand_start, cand_items, max_d2);
}

void assign_cuda(const AssignArgs& args, const float* emb, const uint8_t* mask,
                 const int32_t* cand_start, const int32_t* cand_items, double max_d2,
                 int32_t* labels, int device, void* stream) {
  cuda_enter(device, "assign_to_centres");
  dispatch_ndim(args.ndim, "assign_to_centres", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const CentreGrid<NDIM> g = make_grid<NDIM>(args);
    const int64_t n = make_shape<NDIM>(args.shape).numel();
    if (n == 0) return;
    assign_kernel<NDIM><<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        g, emb, mask, cand_start, cand_items, max_d2, labels, n);
    cuda_check_launch("assign_to_centres", "assign_kernel");
  });
}

}  // namespace rdc
