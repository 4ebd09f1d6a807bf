#include "../common/parallel.h"
#include "entry.h"

namespace rdc {

void box_sum_cpu(int ndim, const int64_t* shape, int64_t radius, const void* in, bool in_is_int64,
                 int64_t* out, int64_t* tmp, int threads) {
  dispatch_ndim(ndim, "find_peaks", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const Shape<NDIM> s = make_shape<NDIM>(shape);
    const int64_t n = s.numel();
    // Separable passes, ping-ponging so that the last one writes `out`.
    int64_t* dst = (NDIM % 2 == 0) ? tmp : out;
    int64_t stride = n;
    for (int axis = 0; axis < NDIM; ++axis) {
      stride /= s.size[axis];
      const int64_t st = stride;
      if (axis == 0) {
        parallel_for(n, threads, 1 << 14, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i)
            dst[i] = in_is_int64 ? box_sum_along<NDIM>(static_cast<const int64_t*>(in), i, axis, radius, s, st)
                                 : box_sum_along<NDIM>(static_cast<const int32_t*>(in), i, axis, radius, s, st);
        });
      } else {
        const int64_t* src = dst;
        int64_t* next = (src == out) ? tmp : out;
        parallel_for(n, threads, 1 << 14, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) next[i] = box_sum_along<NDIM>(src, i, axis, radius, s, st);
        });
        dst = next;
      }
    }
  });
}

template <int NDIM, typename S>
static std::vector<int64_t> peaks_typed(const PeakParams<NDIM>& p, const S* score, int threads) {
  const int64_t n = p.shape.numel();
  const int64_t grain = 1 << 16;
  std::vector<std::vector<int64_t>> found(parallel_chunks(n, threads, grain));
  parallel_for_chunks(n, threads, grain, [&](int64_t chunk, int64_t b, int64_t e) {
    auto& mine = found[chunk];
    // Most pixels have too few votes: skip blocks whose maximum is below min_votes with a
    // branch-free (vectorisable) scan.
    constexpr int64_t kBlock = 64;
    for (int64_t i0 = b; i0 < e; i0 += kBlock) {
      const int64_t i1 = std::min(e, i0 + kBlock);
      S block_max = score[i0];
      for (int64_t i = i0 + 1; i < i1; ++i) block_max = score[i] > block_max ? score[i] : block_max;
      if (static_cast<int64_t>(block_max) < p.min_votes) continue;
      for (int64_t i = i0; i < i1; ++i)
        if (static_cast<int64_t>(score[i]) >= p.min_votes && is_peak(score, i, p)) mine.push_back(i);
    }
  });
  std::vector<int64_t> all;
  for (auto& f : found) all.insert(all.end(), f.begin(), f.end());
  return all;
}

std::vector<int64_t> find_peaks_cpu(int ndim, const int64_t* shape, const int64_t* window,
                                    int64_t min_votes, const void* score, bool score_is_int64,
                                    int threads) {
  std::vector<int64_t> result;
  dispatch_ndim(ndim, "find_peaks", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    PeakParams<NDIM> p;
    p.shape = make_shape<NDIM>(shape);
    for (int a = 0; a < NDIM; ++a) p.window[a] = window[a];
    p.min_votes = min_votes;
    result = score_is_int64 ? peaks_typed(p, static_cast<const int64_t*>(score), threads)
                            : peaks_typed(p, static_cast<const int32_t*>(score), threads);
  });
  return result;
}

}  // namespace rdc
