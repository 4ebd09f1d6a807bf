#include "../common/parallel.h"
#include "entry.h"

namespace rdc {

// Calls f(c, flat) for every pixel of `shape`, row by row over rows [row_begin, row_end): the
// coordinates are unravelled once per row and incremented along it.
template <int NDIM, typename F>
static void for_rows(const Shape<NDIM>& shape, int64_t row_begin, int64_t row_end, F&& f) {
  const int64_t nx = shape.size[NDIM - 1];
  for (int64_t r = row_begin; r < row_end; ++r) {
    int64_t c[NDIM];
    int64_t rest = r;
    for (int a = NDIM - 2; a >= 0; --a) {
      c[a] = rest % shape.size[a];
      rest /= shape.size[a];
    }
    for (c[NDIM - 1] = 0; c[NDIM - 1] < nx; ++c[NDIM - 1]) f(c, r * nx + c[NDIM - 1]);
  }
}

template <int NDIM, typename L>
static void opening_typed(const Shape<NDIM>& s, const Ball<NDIM>& ball, const L* labels, L* eroded,
                          L* out, int threads) {
  const Shape<NDIM> padded = padded_shape(s, ball);
  const int64_t padded_rows = padded.size[NDIM - 1] ? padded.numel() / padded.size[NDIM - 1] : 0;
  parallel_for(padded_rows, threads, 16, [&](int64_t b, int64_t e) {
    for_rows(padded, b, e, [&](const int64_t* pc, int64_t j) { eroded[j] = eroded_at(labels, s, pc, ball); });
  });
  const int64_t rows = s.size[NDIM - 1] ? s.numel() / s.size[NDIM - 1] : 0;
  parallel_for(rows, threads, 16, [&](int64_t b, int64_t e) {
    for_rows(s, b, e, [&](const int64_t* c, int64_t i) {
      out[i] = opened_label(labels[i], eroded + padded_index(padded, c, ball), ball);
    });
  });
}

void label_opening_cpu(int ndim, const int64_t* shape, const int32_t* offsets,
                       const int64_t* image_deltas, const int64_t* padded_deltas, int64_t count,
                       const int64_t* halo, const void* labels, bool is_int64, void* eroded,
                       void* out, int threads) {
  dispatch_ndim(ndim, "label_opening", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const Shape<NDIM> s = make_shape<NDIM>(shape);
    const Ball<NDIM> ball = make_ball<NDIM>(offsets, image_deltas, padded_deltas, count, halo);
    if (is_int64)
      opening_typed(s, ball, static_cast<const int64_t*>(labels), static_cast<int64_t*>(eroded),
                    static_cast<int64_t*>(out), threads);
    else
      opening_typed(s, ball, static_cast<const int32_t*>(labels), static_cast<int32_t*>(eroded),
                    static_cast<int32_t*>(out), threads);
  });
}

}  // namespace rdc
