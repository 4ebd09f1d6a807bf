#include "../common/parallel.h"
#include "entry.h"

namespace rdc {

void hough_votes_cpu(int ndim, const int64_t* shape, const double* spacing, const float* emb,
                     const uint8_t* mask, int32_t* votes, int threads) {
  dispatch_ndim(ndim, "hough_votes", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    VoteGeometry<NDIM> g;
    g.shape = make_shape<NDIM>(shape);
    for (int a = 0; a < NDIM; ++a) g.spacing[a] = spacing[a];
    const int64_t n = g.shape.numel();
    parallel_for(n, threads, 1 << 16, [&](int64_t begin, int64_t end) {
      // Neighbouring pixels mostly vote for the same bin (one instance, one centre): count runs
      // and flush each with one atomic add instead of one per pixel.
      int64_t run_bin = -1;
      int32_t run = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = vote_bin(emb, mask, i, n, g);
        if (b == run_bin) {
          ++run;
          continue;
        }
        if (run_bin >= 0) __atomic_fetch_add(votes + run_bin, run, __ATOMIC_RELAXED);
        run_bin = b;
        run = 1;
      }
      if (run_bin >= 0) __atomic_fetch_add(votes + run_bin, run, __ATOMIC_RELAXED);
    });
  });
}

}  // namespace rdc
