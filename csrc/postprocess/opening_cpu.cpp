#include "../common/parallel.h"
#include "entry.h"

namespace rdc {

template <int NDIM, typename L>
static void opening_typed(const Shape<NDIM>& s, const Ball<NDIM>& ball, const L* labels, L* eroded,
                          L* out, int threads) {
  const Shape<NDIM> padded = padded_shape(s, ball);
  parallel_for(padded.numel(), threads, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) eroded[j] = eroded_at_padded(labels, s, padded, j, ball);
  });
  parallel_for(s.numel(), threads, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = opened_label(labels, eroded, s, padded, i, ball);
  });
}

void label_opening_cpu(int ndim, const int64_t* shape, const int32_t* offsets, int64_t count,
                       const int64_t* halo, const void* labels, bool is_int64, void* eroded,
                       void* out, int threads) {
  dispatch_ndim(ndim, "label_opening", [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const Shape<NDIM> s = make_shape<NDIM>(shape);
    const Ball<NDIM> ball = make_ball<NDIM>(offsets, count, halo);
    if (is_int64)
      opening_typed(s, ball, static_cast<const int64_t*>(labels), static_cast<int64_t*>(eroded),
                    static_cast<int64_t*>(out), threads);
    else
      opening_typed(s, ball, static_cast<const int32_t*>(labels), static_cast<int32_t*>(eroded),
                    static_cast<int32_t*>(out), threads);
  });
}

}  // namespace rdc
