#include "../common/parallel.h"
#include "entry.h"

namespace rdc {

void hough_votes_cpu(int ndim, const int64_t* shape, const double* spacing, const float* emb,
                     const uint8_t* mask, int32_t* votes, int threads) {
  dispatch_ndim(ndim, "hough_votes", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    VoteGeometry<NDIM> g;
    g.shape = make_shape<NDIM>(shape);
    for (int a = 0; a < NDIM; ++a) {
      g.spacing[a] = spacing[a];
      g.inv_spacing[a] = 1.0 / spacing[a];
    }
    const int64_t n = g.shape.numel();
    parallel_for(n, threads, 1 << 16, [&](int64_t begin, int64_t end) {
      // Pixels of one instance vote for a handful of bins around its centre: count them in a
      // small direct-mapped cache and flush each entry with one atomic add on eviction, instead
      // of one atomic per pixel.
      constexpr int kSlots = 1024;
      int64_t bin[kSlots];
      int32_t count[kSlots];
      for (int s = 0; s < kSlots; ++s) bin[s] = -1, count[s] = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = vote_bin(emb, mask, i, n, g);
        if (b < 0) continue;
        // Multiplicative hash: bins one row or plane apart (strides of powers of two) must not
        // share a slot.
        const int slot = static_cast<int>((static_cast<uint64_t>(b) * 0x9E3779B97F4A7C15ull) >> 54);
        if (bin[slot] != b) {
          if (bin[slot] >= 0) __atomic_fetch_add(votes + bin[slot], count[slot], __ATOMIC_RELAXED);
          bin[slot] = b;
          count[slot] = 0;
        }
        ++count[slot];
      }
      for (int s = 0; s < kSlots; ++s)
        if (bin[s] >= 0) __atomic_fetch_add(votes + bin[s], count[s], __ATOMIC_RELAXED);
    });
  });
}

}  // namespace rdc
