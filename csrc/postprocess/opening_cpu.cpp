#include "../common/parallel.h"
#include "entry.h"

#include <cstring>

namespace rdc {

// Row loops over pixels whose whole ball lies in the (padded) buffer, two 16-byte vectors of labels
// at a time (GCC vector extensions, SSE2 on baseline x86-64), with the loop over the ball's offsets
// inside so the accumulators stay in registers. No early exits: every offset is tested, which is
// cheaper than the branches. Results equal eroded_at / opened_label exactly.
#if defined(__GNUC__) || defined(__clang__)
#define RDC_OPENING_VECTOR 1
template <typename L>
struct LabelVec {
  typedef L V __attribute__((vector_size(16)));
  static constexpr int64_t kLanes = 16 / sizeof(L);
  static V load(const L* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(L* p, V v) { std::memcpy(p, &v, sizeof(V)); }
};
#endif  // other compilers: the scalar loops below only

// Erosion of `len` pixels of one row whose balls lie inside the image (at[j]: label of pixel j):
// the label if every offset has it (a zero label stays zero), else 0.
template <typename L>
static void erode_run(const L* at, const int64_t* deltas, int64_t count, int64_t len, L* dst) {
  int64_t j = 0;
#ifdef RDC_OPENING_VECTOR
  using LV = LabelVec<L>;
  constexpr int64_t W = LV::kLanes;
  for (; j + 2 * W <= len; j += 2 * W) {
    typename LV::V a0 = LV::load(at + j), a1 = LV::load(at + j + W);
    for (int64_t m = 1; m < count; ++m) {
      const L* o = at + j + deltas[m];
      a0 &= (LV::load(o) == a0);
      a1 &= (LV::load(o + W) == a1);
    }
    LV::store(dst + j, a0);
    LV::store(dst + j + W, a1);
  }
#endif
  for (; j < len; ++j) {
    L a = at[j];
    for (int64_t m = 1; m < count; ++m) a = (at[j + deltas[m]] == a) ? a : L(0);
    dst[j] = a;
  }
}

// opened_label of `len` consecutive pixels of one row (labels lab, padded-buffer positions ep):
// the label if the erosion equals it at some offset. A zero label gives 0 whatever the hits
// (lab & hit).
template <typename L>
static void open_run(const L* lab, const L* ep, const int64_t* deltas, int64_t count, int64_t len,
                     L* dst) {
  int64_t j = 0;
#ifdef RDC_OPENING_VECTOR
  using LV = LabelVec<L>;
  constexpr int64_t W = LV::kLanes;
  for (; j + 2 * W <= len; j += 2 * W) {
    const typename LV::V l0 = LV::load(lab + j), l1 = LV::load(lab + j + W);
    typename LV::V h0 = l0 != l0, h1 = l1 != l1;  // all false
    for (int64_t m = 0; m < count; ++m) {
      const L* o = ep + j + deltas[m];
      h0 |= (LV::load(o) == l0);
      h1 |= (LV::load(o + W) == l1);
    }
    LV::store(dst + j, l0 & h0);
    LV::store(dst + j + W, l1 & h1);
  }
#endif
  for (; j < len; ++j) {
    L h = 0;
    for (int64_t m = 0; m < count; ++m) h |= static_cast<L>(ep[j + deltas[m]] == lab[j]);
    dst[j] = h ? lab[j] : L(0);
  }
}

template <int NDIM, typename L>
static void opening_typed(const Shape<NDIM>& s, const Ball<NDIM>& ball, const L* labels, L* eroded,
                          L* out, int threads) {
  constexpr int X = NDIM - 1;
  const Shape<NDIM> padded = padded_shape(s, ball);
  const int64_t pnx = padded.size[X], nx = s.size[X], hx = ball.halo[X];
  const int64_t padded_rows = pnx ? padded.numel() / pnx : 0;
  parallel_for(padded_rows, threads, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int64_t pc[NDIM], q[NDIM];
      int64_t rest = r;
      bool lead_interior = true;
      for (int a = X - 1; a >= 0; --a) {
        pc[a] = rest % padded.size[a];
        rest /= padded.size[a];
        q[a] = pc[a] - ball.halo[a];
        lead_interior &= (q[a] >= ball.halo[a]) & (q[a] < s.size[a] - ball.halo[a]);
      }
      L* erow = eroded + r * pnx;
      // Padded x whose ball lies inside the image: [2 hx, nx) (image x in [hx, nx - hx)).
      int64_t x0 = pnx, x1 = pnx;
      if (lead_interior && nx > 2 * hx) x0 = 2 * hx, x1 = nx;
      for (pc[X] = 0; pc[X] < x0; ++pc[X]) erow[pc[X]] = eroded_at(labels, s, pc, ball);
      if (x1 > x0) {
        q[X] = x0 - hx;  // image x of padded x0
        erode_run(labels + s.ravel(q), ball.image_deltas, ball.count, x1 - x0, erow + x0);
      }
      for (pc[X] = x1; pc[X] < pnx; ++pc[X]) erow[pc[X]] = eroded_at(labels, s, pc, ball);
    }
  });
  const int64_t rows = nx ? s.numel() / nx : 0;
  parallel_for(rows, threads, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int64_t c[NDIM];
      int64_t rest = r;
      for (int a = X - 1; a >= 0; --a) {
        c[a] = rest % s.size[a];
        rest /= s.size[a];
      }
      c[X] = 0;
      const L* ep = eroded + padded_index(padded, c, ball);
      open_run(labels + r * nx, ep, ball.padded_deltas, ball.count, nx, out + r * nx);
    }
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
