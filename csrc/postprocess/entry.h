// Host entry points of the post-processing kernels, called by bindings.cpp. Arrays are
// contiguous and allocated by the caller (Python); `shape` has `ndim` entries (2 or 3).
// *_cuda functions launch on `stream` of `device` and do not synchronise.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "assign.h"
#include "hough.h"
#include "opening.h"
#include "peaks.h"

namespace rdc {

// Calls f(std::integral_constant<int, NDIM>) for ndim in {2, 3}.
template <typename F>
void dispatch_ndim(int ndim, const char* op, F&& f) {
  if (ndim == 2) return f(std::integral_constant<int, 2>{});
  if (ndim == 3) return f(std::integral_constant<int, 3>{});
  throw std::invalid_argument(std::string(op) + ": ndim must be 2 or 3, got " + std::to_string(ndim));
}

template <int NDIM>
Shape<NDIM> make_shape(const int64_t* shape) {
  Shape<NDIM> s;
  for (int a = 0; a < NDIM; ++a) s.size[a] = shape[a];
  return s;
}

// ---- CPU ---------------------------------------------------------------------------------------
void hough_votes_cpu(int ndim, const int64_t* shape, const double* spacing, const float* emb,
                     const uint8_t* mask, int32_t* votes, int threads);
// Result of hough_votes_block_cpu: the votes leaving the block, as ascending global flat bins
// with their counts.
struct BlockVotes {
  std::vector<int64_t> bins, counts;
};
BlockVotes hough_votes_block_cpu(int ndim, const int64_t* image_shape, int64_t pixels, const int64_t* box_shape,
                                 const int64_t* origin, const double* spacing, const float* emb,
                                 const uint8_t* mask, int32_t* votes, int threads);
// score_is_int64: `in` is int64, else int32. Writes the box sum (int64) to out; tmp is scratch.
void box_sum_cpu(int ndim, const int64_t* shape, int64_t radius, const void* in, bool in_is_int64,
                 int64_t* out, int64_t* tmp, int threads);
std::vector<int64_t> find_peaks_cpu(int ndim, const int64_t* shape, const int64_t* window,
                                    int64_t min_votes, const void* score, bool score_is_int64,
                                    int threads);
// out == nullptr: writes the number of candidates of each cell to counts.
void cell_candidates_cpu(const AssignArgs& g, int32_t* counts, const int32_t* starts,
                         int32_t* items, int threads);
void assign_cpu(const AssignArgs& g, const float* emb, const uint8_t* mask,
                const int32_t* cand_start, const int32_t* cand_items, double max_d2,
                int32_t* labels, int threads);
// offsets: (count, ndim) ball offsets, nearest first; image_deltas / padded_deltas: their flat
// offsets in the image and in the padded erosion buffer; halo: largest |offset| per axis.
void label_opening_cpu(int ndim, const int64_t* shape, const int32_t* offsets,
                       const int64_t* image_deltas, const int64_t* padded_deltas, int64_t count,
                       const int64_t* halo, const void* labels, bool is_int64, void* eroded, void* out, int threads);

// ---- CUDA --------------------------------------------------------------------------------------
void hough_votes_cuda(int ndim, const int64_t* shape, const double* spacing, const float* emb,
                      const uint8_t* mask, int32_t* votes, int device, void* stream);
void box_sum_cuda(int ndim, const int64_t* shape, int64_t radius, const void* in, bool in_is_int64,
                  int64_t* out, int64_t* tmp, int device, void* stream);
void find_peaks_cuda(int ndim, const int64_t* shape, const int64_t* window, int64_t min_votes,
                     const void* score, bool score_is_int64, uint8_t* flags, int device,
                     void* stream);
void cell_candidates_cuda(const AssignArgs& g, int32_t* counts, const int32_t* starts,
                          int32_t* items, int device, void* stream);
void assign_cuda(const AssignArgs& g, const float* emb, const uint8_t* mask,
                 const int32_t* cand_start, const int32_t* cand_items, double max_d2,
                 int32_t* labels, int device, void* stream);
void label_opening_cuda(int ndim, const int64_t* shape, const int32_t* offsets,
                        const int64_t* image_deltas, const int64_t* padded_deltas, int64_t count,
                        const int64_t* halo, const void* labels, bool is_int64, void* eroded, void* out, int device,
                        void* stream);

}  // namespace rdc
