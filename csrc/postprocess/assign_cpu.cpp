#include "../common/parallel.h"
#include "entry.h"

namespace rdc {

void cell_candidates_cpu(const AssignArgs& args, int32_t* counts, const int32_t* starts,
                         int32_t* items, int threads) {
  dispatch_ndim(args.ndim, "assign_to_centres", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const CentreGrid<NDIM> g = make_grid<NDIM>(args);
    parallel_for(g.cells.numel(), threads, 64, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        if (items == nullptr)
          counts[c] = cell_candidates(g, c, nullptr);
        else
          cell_candidates(g, c, items + starts[c]);
      }
    });
  });
}

void assign_cpu(const AssignArgs& args, const float* emb, const uint8_t* mask,
                const int32_t* cand_start, const int32_t* cand_items, double max_d2,
                int32_t* labels, int threads) {
  dispatch_ndim(args.ndim, "assign_to_centres", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const CentreGrid<NDIM> g = make_grid<NDIM>(args);
    const int64_t n = make_shape<NDIM>(args.shape).numel();
    parallel_for(n, threads, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        labels[i] = nearest_label(emb, mask, i, n, g, cand_start, cand_items, max_d2);
    });
  });
}

}  // namespace rdc
