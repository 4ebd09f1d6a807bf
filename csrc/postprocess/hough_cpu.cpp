#include <algorithm>
#include <utility>

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

namespace rdc {

// Votes of `pixels` pixels of a larger image (any block of it: embeddings are absolute): bins
// inside the box of `box_shape` at pixel `origin` are counted into `votes` (the box's shape);
// bins elsewhere in the image are returned as (global flat bin, count) pairs, ascending and
// merged (votes == nullptr: the box's votes are dropped). Binning is vote_bin's: the same pixels
// vote, for the same global bins.
BlockVotes hough_votes_block_cpu(int ndim, const int64_t* image_shape, int64_t pixels, const int64_t* box_shape,
                                 const int64_t* origin, const double* spacing, const float* emb,
                                 const uint8_t* mask, int32_t* votes, int threads) {
  BlockVotes result;
  dispatch_ndim(ndim, "hough_votes_block", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    VoteGeometry<NDIM> g;
    g.shape = make_shape<NDIM>(image_shape);
    const Shape<NDIM> box = make_shape<NDIM>(box_shape);
    for (int a = 0; a < NDIM; ++a) {
      g.spacing[a] = spacing[a];
      g.inv_spacing[a] = 1.0 / spacing[a];
    }
    const int64_t n = pixels;
    const int64_t parts = parallel_chunks(n, threads, 1 << 16);
    std::vector<std::vector<int64_t>> outside(std::max<int64_t>(parts, 1));  // (bin, count) pairs
    parallel_for_chunks(n, threads, 1 << 16, [&](int64_t part, int64_t begin, int64_t end) {
      // As in hough_votes_cpu: a direct-mapped cache of (bin, count), flushed on eviction; the
      // slot also remembers where the bin goes (its index in the box, or -1: outside).
      constexpr int kSlots = 1024;
      int64_t bin[kSlots], local[kSlots];
      int64_t count[kSlots];
      for (int s = 0; s < kSlots; ++s) bin[s] = -1, count[s] = 0;
      std::vector<int64_t>& out = outside[part];
      auto flush = [&](int s) {
        if (bin[s] < 0) return;
        if (local[s] >= 0) {
          if (votes != nullptr) __atomic_fetch_add(votes + local[s], static_cast<int32_t>(count[s]), __ATOMIC_RELAXED);
        } else {
          out.push_back(bin[s]);
          out.push_back(count[s]);
        }
      };
      for (int64_t i = begin; i < end; ++i) {
        const int64_t flat = vote_bin(emb, mask, i, n, g);  // global bin
        if (flat < 0) continue;
        const int slot = static_cast<int>((static_cast<uint64_t>(flat) * 0x9E3779B97F4A7C15ull) >> 54);
        if (bin[slot] != flat) {
          flush(slot);
          bin[slot] = flat;
          count[slot] = 0;
          int64_t c[NDIM];  // the bin's place in the box, found once per cache miss
          g.shape.unravel(flat, c);
          bool in_box = true;
          for (int a = 0; a < NDIM; ++a) {
            c[a] -= origin[a];
            in_box = in_box && c[a] >= 0 && c[a] < box.size[a];
          }
          local[slot] = in_box ? box.ravel(c) : -1;
        }
        ++count[slot];
      }
      for (int s = 0; s < kSlots; ++s) flush(s);
    });
    // Merge the parts' pairs: sort by bin, sum the counts of equal bins.
    std::vector<std::pair<int64_t, int64_t>> pairs;
    size_t total = 0;
    for (const auto& v : outside) total += v.size() / 2;
    pairs.reserve(total);
    for (const auto& v : outside)
      for (size_t k = 0; k < v.size(); k += 2) pairs.emplace_back(v[k], v[k + 1]);
    std::sort(pairs.begin(), pairs.end());
    for (const auto& p : pairs) {
      if (!result.bins.empty() && result.bins.back() == p.first) {
        result.counts.back() += p.second;
      } else {
        result.bins.push_back(p.first);
        result.counts.push_back(p.second);
      }
    }
  });
  return result;
}

}  // namespace rdc
