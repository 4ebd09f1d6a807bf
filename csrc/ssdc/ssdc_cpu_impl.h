// CPU sSDC forward and backward, included once per instruction-set variant by ssdc_cpu*.cpp, each
// of which defines, before including this file:
//   RDC_SSDC_NS  namespace of the variant (its functions must not be merged with another's)
//   RDC_SSDC_VB  bytes per SIMD vector (GCC vector extensions; the compiler picks instructions)
//   RDC_SSDC_COB output channels per register block (even)
// and optionally RDC_SSDC_TARGET_PRAGMA, a _Pragma("GCC target(...)") that compiles only the
// vector micro-kernels (struct Kern, internal linkage) for a wider instruction set. The rest of the
// file, including every standard-library template it instantiates, stays at the baseline ISA:
// weak symbols shared with other files must never carry AVX instructions.
// RDC_SSDC_NATIVE_BF16 (with RDC_SSDC_VB 64 and a target with avx512bf16) makes the bfloat16
// micro-kernels use vdpbf16ps, and RDC_SSDC_BF16_ONLY compiles only the bfloat16 entry points;
// without RDC_SSDC_NATIVE_BF16 the bfloat16 micro-kernels widen each pair to float32 (exact) and
// use two FMAs.
//
// Work is split into row tiles: up to kTileWidth contiguous positions of one row (all axes but the
// last fixed). For each tile and dilation d the kernel gathers the 3 (2D) or 9 (3D) source rows of
// every input channel into a small zero-padded buffer, computes z_d = conv_d(x) + b for all C
// outputs of the group with a register-blocked direct convolution whose innermost loop runs over
// contiguous positions, applies the LeakyReLU and accumulates P_d * LeakyReLU(z_d) into the
// tile's output; the per-dilation activations live only in the tile buffers (a few tens of KiB,
// in L1/L2). The backward pass recomputes z_d per tile the same way, then:
//   gz_d = LeakyReLU'(z_d) * (P_d^T gy)          (register-blocked, like the forward)
//   grad P_d += gy a_d^T, grad b += sum gz_d, grad W += gz_d (x)^T   (dot products over the tile)
//   grad x += conv^T(gz_d)  as a direct convolution of gz_d with the flipped, transposed kernel,
//            written row by row into the source rows (scatter-free within a (batch, group)).
// Forward parallelises over tiles; backward over (batch, group) pairs (each owns its slice of
// grad x) with per-thread float64 accumulators for the parameter gradients, reduced in order.
//
// Element types (ssdc_cpu_types.h): buffers store S (float, double or bfloat16) and the
// micro-kernels accumulate in Acc (float for float and bfloat16). Every operand of a reduction is
// stored in k-groups of KG consecutive reduction elements (KG = 2 for bfloat16: channel pairs for
// the convolutions, position pairs for the gradient outer products), so that one vector lane
// multiplies a whole k-group. bfloat16 rounding happens where the bf16 chain of framework ops
// rounds too: the activations a_d entering the 1x1 reduction, the gradient gz_d entering grad W and
// grad x, and the outputs; grad x is summed in float32 and the parameter gradients in float64.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/parallel.h"
#include "ssdc.h"
#include "ssdc_cpu_types.h"

#if defined(RDC_SSDC_NATIVE_BF16)
#include <immintrin.h>
#endif

#if !defined(RDC_SSDC_NS) || !defined(RDC_SSDC_VB) || !defined(RDC_SSDC_COB)
#error "define RDC_SSDC_NS, RDC_SSDC_VB and RDC_SSDC_COB before including ssdc_cpu_impl.h"
#endif

namespace rdc {
namespace RDC_SSDC_NS {
namespace {

constexpr int COB = RDC_SSDC_COB;  // output channels per register block
constexpr int NV = 2;              // vectors of positions per register block
constexpr int64_t kTileWidth = 128;
static_assert(COB % 2 == 0, "k-groups of output channels must not straddle register blocks");

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

#ifdef RDC_SSDC_TARGET_PRAGMA
#pragma GCC push_options
RDC_SSDC_TARGET_PRAGMA
#endif

template <typename S>
struct Kern {
  using E = SsdcElem<S>;
  using A = typename E::Acc;
  using U = typename E::Unit;
  static constexpr int KG = E::KG;
  typedef A V __attribute__((vector_size(RDC_SSDC_VB)));  // accumulators
  typedef U X __attribute__((vector_size(RDC_SSDC_VB)));  // reduction operands, one k-group a lane
  static constexpr int VW = RDC_SSDC_VB / int(sizeof(A));  // lanes
  static constexpr int PB = NV * VW;                       // positions per register block

  static V load(const A* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(A* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static X loadx(const S* p) {
    X v;
    std::memcpy(&v, p, sizeof(X));
    return v;
  }
  // One k-group broadcast to every lane.
  static X bcast(const S* p) {
    U u;
    std::memcpy(&u, p, sizeof(U));
    X v = {};
    return v + u;
  }
  // acc + the dot product of each lane's k-group of w and x.
  static V madd(const V& acc, const X& w, const X& x) {
    if constexpr (KG == 1) {
      return acc + w * x;
    } else {
#if defined(RDC_SSDC_NATIVE_BF16)
      static_assert(RDC_SSDC_VB == 64, "vdpbf16ps micro-kernels need 512-bit vectors");
      return (V)_mm512_dpbf16_ps((__m512)acc, (__m512bh)x, (__m512bh)w);
#else
      const X hi = X{} + 0xffff0000u;  // the upper bf16 of a pair is a float32 with its low bits cleared
      return acc + (V)(w & hi) * (V)(x & hi) + (V)(w << 16) * (V)(x << 16);
#endif
    }
  }

  // out[co][j] += sum_cg sum_{r in rows} sum_{kw_lo <= kw < kw_hi} sum_k
  //                 wp[cob][cg][r][kw][i][k] * in[((cg * NR + r) * ldi + in_off + j + kw * pad) * KG + k]
  // for co = cob * COB + i < Cop (a multiple of COB), 0 <= j < npos (a multiple of PB), k < KG.
  // `taps` is the weights' kw extent (3; 1 for the 1x1 convolutions, kw_lo = 0, kw_hi = 1).
  static void conv_tile(A* out, int64_t ldo, int64_t npos, int64_t Cop, const S* in, int64_t CG, int NR,
                        int64_t ldi, const int* rows, int nrows, const S* wp, int taps, int kw_lo, int kw_hi,
                        int64_t pad, int64_t in_off) {
    for (int64_t cob = 0; cob < Cop / COB; ++cob) {
      const S* wb = wp + cob * CG * NR * taps * COB * KG;
      A* ob = out + cob * COB * ldo;
      for (int64_t j0 = 0; j0 < npos; j0 += PB) {
        V acc[COB][NV];
        for (int i = 0; i < COB; ++i)
          for (int v = 0; v < NV; ++v) acc[i][v] = load(ob + i * ldo + j0 + v * VW);
        for (int64_t cg = 0; cg < CG; ++cg) {
          for (int rr = 0; rr < nrows; ++rr) {
            const int r = rows[rr];
            const S* src = in + ((cg * NR + r) * ldi + in_off + j0) * KG;
            const S* w = wb + (cg * NR + r) * taps * COB * KG;
            for (int kw = kw_lo; kw < kw_hi; ++kw) {
              const S* s = src + kw * pad * KG;
              X xv[NV];
              for (int v = 0; v < NV; ++v) xv[v] = loadx(s + v * VW * KG);
              const S* wk = w + kw * COB * KG;
              for (int i = 0; i < COB; ++i) {
                const X wv = bcast(wk + i * KG);
                for (int v = 0; v < NV; ++v) acc[i][v] = madd(acc[i][v], wv, xv[v]);
              }
            }
          }
        }
        for (int i = 0; i < COB; ++i)
          for (int v = 0; v < NV; ++v) store(ob + i * ldo + j0 + v * VW, acc[i][v]);
      }
    }
  }

  // out[k][m] += sum_{j < n} at[((j / KG) * lda + m) * KG + j % KG] * b[k][j] for k < NB, m < Mv * VW
  // (Mv a multiple of 4): gradient accumulation with vectors along m (a transposed tile) and
  // positions j as the reduction, so nothing is summed horizontally; out rows are float64. For
  // KG > 1, `at` holds zeros for n <= j < round_up(n, KG) and b[k] is readable there.
  template <int NB>
  static void outer(const S* at, int64_t lda, int64_t Mv, const S* const* b, int64_t n, double* const* out) {
    constexpr int MB = 4;
    for (int64_t mv0 = 0; mv0 < Mv; mv0 += MB) {
      V acc[MB][NB];
      for (int i = 0; i < MB; ++i)
        for (int k = 0; k < NB; ++k) acc[i][k] = V{};
      const int64_t ng = (n + KG - 1) / KG;
      for (int64_t jg = 0; jg < ng; ++jg) {
        X av[MB];
        for (int i = 0; i < MB; ++i) av[i] = loadx(at + (jg * lda + (mv0 + i) * VW) * KG);
        for (int k = 0; k < NB; ++k) {
          const X bv = bcast(b[k] + jg * KG);
          for (int i = 0; i < MB; ++i) acc[i][k] = madd(acc[i][k], bv, av[i]);
        }
      }
#pragma GCC unroll 4
      for (int k = 0; k < NB; ++k)
#pragma GCC unroll 4
        for (int i = 0; i < MB; ++i) add_to(out[k] + (mv0 + i) * VW, acc[i][k]);
    }
  }
  // o[l] += v[l] in float64, whole vectors (indexing lanes, or taking v's address, made GCC keep
  // every accumulator on the stack).
  static void add_to(double* o, const V& v) {
    typedef double D __attribute__((vector_size(VW * sizeof(double))));
    D cur;
    std::memcpy(&cur, o, sizeof(D));
    cur += __builtin_convertvector(v, D);
    std::memcpy(o, &cur, sizeof(D));
  }

  // LeakyReLU of a row, in place, n a multiple of VW. (Vector selects: a scalar `z > 0 ? z : z * s`
  // stays a branch under GCC's default -ftrapping-math, mispredicted half the time.)
  static void leaky(A* z, int64_t n, A slope) {
    for (int64_t p = 0; p < n; p += VW) {
      const V v = load(z + p);
      store(z + p, v > V{} ? v : v * slope);
    }
  }
  // g <- LeakyReLU'(z) g for p < L and 0 for L <= p < n, z <- LeakyReLU(z), n a multiple of VW;
  // returns the sum of the new g (float64 over the lanes). The row's tail is masked, not branched.
  static double leaky_backward(A* z, A* g, int64_t L, int64_t n, A slope) {
    typedef typename std::conditional<sizeof(A) == 8, int64_t, int32_t>::type ML;
    typedef ML M __attribute__((vector_size(RDC_SSDC_VB)));  // lane masks, as V > V gives them
    M iota;
    for (int l = 0; l < VW; ++l) iota[l] = ML(l);
    V sum = {};
    for (int64_t p = 0; p < n; p += VW) {
      const V zv = load(z + p), gv = load(g + p);
      const int64_t live = L - p < 0 ? 0 : (L - p > VW ? VW : L - p);
      const V gz = iota < M{} + ML(live) ? (zv > V{} ? gv : gv * slope) : V{};
      store(g + p, gz);
      store(z + p, zv > V{} ? zv : zv * slope);
      sum += gz;
    }
    double total = 0;
    for (int l = 0; l < VW; ++l) total += double(sum[l]);
    return total;
  }

  // ---- bfloat16 conversions (KG = 2), vectorised for this variant's instruction set ------------
  typedef uint16_t H __attribute__((vector_size(RDC_SSDC_VB / 2)));  // VW bf16

  // The bf16 (low 16 bits of each lane) nearest to each float32 lane, ties to even; NaN stays NaN.
  static X round_bf16(const V& v) {
#if defined(RDC_SSDC_NATIVE_BF16)
    return __builtin_convertvector((H)_mm512_cvtneps_pbh((__m512)v), X);
#else
    const X u = (X)v;
    const X rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const X nan = (X)((u & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
    return (nan & ((u >> 16) | 0x40u)) | (~nan & rounded);
#endif
  }
  static U round_bf16(A v) { return U(SsdcElem<S>::narrow(v).bits); }
  static X widen_h(const S* p) {
    H h;
    std::memcpy(&h, p, sizeof(H));
    return __builtin_convertvector(h, X);
  }
  template <typename Src>
  static X to_pairs(const Src* p) {
    if constexpr (std::is_same<Src, S>::value)
      return widen_h(p);
    else
      return round_bf16(load(p));
  }
  template <typename Src>
  static U to_pair(const Src* p) {
    if constexpr (std::is_same<Src, S>::value)
      return p->bits;
    else
      return round_bf16(*p);
  }

  // dst[p] = (a[p], b[p]) as one pair of bf16 for p < n; a or b == nullptr reads as zeros. Src is
  // S or float32 (rounded to bf16).
  template <typename Src>
  static void interleave(S* dst, const Src* a, const Src* b, int64_t n) {
    if (!a) {
      std::memset(static_cast<void*>(dst), 0, sizeof(S) * 2 * size_t(n));
      return;
    }
    int64_t p = 0;
    for (; p + VW <= n; p += VW) {
      const X lo = to_pairs(a + p), hi = b ? to_pairs(b + p) : X{};
      const X pair = lo | (hi << 16);
      std::memcpy(dst + 2 * p, &pair, sizeof(X));
    }
    for (; p < n; ++p) {
      const U pair = to_pair(a + p) | (b ? to_pair(b + p) << 16 : 0u);
      std::memcpy(dst + 2 * p, &pair, sizeof(U));
    }
  }
  // dst[p] = bf16(src[p]) for p < n.
  static void narrow_row(S* dst, const A* src, int64_t n) {
    int64_t p = 0;
    for (; p + VW <= n; p += VW) {
      const H h = __builtin_convertvector(round_bf16(load(src + p)), H);
      std::memcpy(dst + p, &h, sizeof(H));
    }
    for (; p < n; ++p) dst[p] = SsdcElem<S>::narrow(src[p]);
  }
};

#ifdef RDC_SSDC_TARGET_PRAGMA
#pragma GCC pop_options
#endif

// Pair-interleaved copy of rows: dst[(g * ldd + lead + p) * KG + k] = src[(g * KG + k) * lds + p]
// for g < ngroups, p < n; rows g * KG + k >= nrows read as zero. Src is S or (KG > 1) float32,
// rounded to S.
template <typename S, typename Src>
void pack_rows(S* dst, int64_t ldd, int64_t lead, const Src* src, int64_t lds, int64_t nrows, int64_t ngroups,
               int64_t n) {
  constexpr int KG = SsdcElem<S>::KG;
  for (int64_t g = 0; g < ngroups; ++g) {
    S* d = dst + (g * ldd + lead) * KG;
    if constexpr (KG == 1) {
      if (g < nrows)
        std::memcpy(d, src + g * lds, sizeof(S) * n);
      else
        std::fill(d, d + n, S{});
    } else {
      Kern<S>::interleave(d, g * KG < nrows ? src + g * KG * lds : nullptr,
                          g * KG + 1 < nrows ? src + (g * KG + 1) * lds : nullptr, n);
    }
  }
}

// Transposed copy for the gradient outer products: dst[((j / KG) * ldt + c) * KG + j % KG] =
// src[c * lds + j] for c < nrows, j < n, and zero for n <= j < round_up(n, KG).
template <typename S>
void transpose_rows(S* dst, int64_t ldt, const S* src, int64_t lds, int64_t nrows, int64_t n) {
  constexpr int KG = SsdcElem<S>::KG;
  const int64_t full = n / KG * KG;
  for (int64_t c = 0; c < nrows; ++c) {
    const S* s = src + c * lds;
    for (int64_t j = 0; j < full; j += KG) std::memcpy(dst + ((j / KG) * ldt + c) * KG, s + j, sizeof(S) * KG);
    for (int64_t j = full; j < round_up(n, KG); ++j) dst[((j / KG) * ldt + c) * KG + j % KG] = j < n ? s[j] : S{};
  }
}

// Everything a tile needs that does not change between tiles.
template <typename S>
struct Plan {
  static constexpr int KG = SsdcElem<S>::KG;
  const SsdcArgs& a;
  int64_t B, G, C, CG, N, Wd, rows_total, D, Cp, TW, tiles_per_row, padmax, Lpmax, ldi, ldz;
  int NR, K;
  double slope;

  explicit Plan(const SsdcArgs& args) : a(args) {
    B = a.batch, G = a.groups, C = a.channels, D = a.ndil;
    CG = (C + KG - 1) / KG;
    N = ssdc_numel(a);
    Wd = a.size[a.ndim - 1];
    rows_total = Wd > 0 ? N / Wd : 0;
    NR = a.ndim == 2 ? 3 : 9;
    K = NR * 3;
    Cp = round_up(C, COB);
    TW = std::min<int64_t>(Wd, kTileWidth);
    tiles_per_row = TW > 0 ? (Wd + TW - 1) / TW : 0;
    padmax = 0;
    for (int i = 0; i < D; ++i) padmax = std::max(padmax, ssdc_row_pad(a.dilation[i], Wd));
    Lpmax = round_up(std::max<int64_t>(TW, 1), Kern<S>::PB);
    ldi = Lpmax + 2 * padmax + Kern<S>::PB;
    ldz = Lpmax;
    slope = a.slope;
  }

  // Valid outer taps of `row` at dilation d: their indices and source rows.
  int source_rows(int64_t row, int64_t d, int* rows, int64_t* src) const {
    int n = 0;
    for (int r = 0; r < NR; ++r) {
      src[r] = ssdc_source_row(a, row, r, d);
      if (src[r] >= 0) rows[n++] = r;
    }
    return n;
  }

  // xr[ci][r][j] = x[ci, src[r], w0 - pad + j] (zero outside the row) for j < Lp + 2 pad (for
  // KG > 1 only when xr is not null), and for KG > 1 their pair-interleaved copy
  // xb[cg][r][j][k] = xr[cg * KG + k][r][j] (zero past C).
  void gather(S* xr, S* xb, const S* xg, const int* rows, int nrows, const int64_t* src, int64_t w0, int64_t Lp,
              int64_t pad) const {
    const int64_t len = Lp + 2 * pad;
    const int64_t lo = std::max<int64_t>(0, pad - w0), hi = std::max(lo, std::min<int64_t>(len, Wd - w0 + pad));
    for (int rr = 0; rr < nrows; ++rr) {
      const int r = rows[rr];
      const S* s = xg + src[r] * Wd + (w0 - pad);
      if (KG == 1 || xr)
        for (int64_t ci = 0; ci < C; ++ci) {
          S* dst = xr + (ci * NR + r) * ldi;
          std::fill(dst, dst + lo, S{});
          std::memcpy(dst + lo, s + ci * N + lo, sizeof(S) * (hi - lo));
          std::fill(dst + hi, dst + len, S{});
        }
      if constexpr (KG > 1)
        for (int64_t cg = 0; cg < CG; ++cg) {
          S* dst = xb + (cg * NR + r) * ldi * KG;
          std::fill(dst, dst + lo * KG, S{});
          const int64_t c0 = cg * KG;
          Kern<S>::interleave(dst + lo * KG, s + c0 * N + lo, c0 + 1 < C ? s + (c0 + 1) * N + lo : nullptr, hi - lo);
          std::fill(dst + hi * KG, dst + len * KG, S{});
        }
    }
  }

  // The conv input: the plain rows for KG = 1, their pair-interleaved copy otherwise.
  static const S* conv_input(const std::vector<S>& plain, const std::vector<S>& packed) {
    return KG == 1 ? plain.data() : packed.data();
  }

  // Forward weights: wf[g][cob][cg][r][kw][i][k] = W[g*C + cob*COB + i][cg*KG + k][r*3 + kw] (0 past C).
  std::vector<S> pack_conv(const S* w) const {
    std::vector<S> p(size_t(G * Cp * CG * K * KG), S{});
    for (int64_t g = 0; g < G; ++g)
      for (int64_t co = 0; co < C; ++co)
        for (int64_t ci = 0; ci < C; ++ci)
          for (int k = 0; k < K; ++k)
            p[((((g * (Cp / COB) + co / COB) * CG + ci / KG) * K + k) * COB + co % COB) * KG + ci % KG] =
                w[((g * C + co) * C + ci) * K + k];
    return p;
  }
  // 1x1 weights as a one-tap conv over Cp input rows: [g][d][cob][cin / KG][COB][KG].
  // transpose = false: out channel o, in channel co: rw[g*C + o][d*C + co]; true: swapped.
  std::vector<S> pack_reduce(const S* rw, bool transpose) const {
    std::vector<S> p(size_t(G * D * Cp * Cp), S{});
    for (int64_t g = 0; g < G; ++g)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t o = 0; o < C; ++o)
          for (int64_t co = 0; co < C; ++co) {
            const S v = rw[(g * C + o) * D * C + d * C + co];
            const int64_t out = transpose ? co : o, in = transpose ? o : co;
            p[((((g * D + d) * (Cp / COB) + out / COB) * (Cp / KG) + in / KG) * COB + out % COB) * KG + in % KG] = v;
          }
    return p;
  }
  // grad-x weights per outer tap r: [g][r][cib][co / KG][kw'][i][KG] = W[g*C + co][cib*COB + i][r*3 + 2 - kw'].
  std::vector<S> pack_transposed(const S* w) const {
    std::vector<S> p(size_t(G * NR * Cp * Cp * 3), S{});
    for (int64_t g = 0; g < G; ++g)
      for (int r = 0; r < NR; ++r)
        for (int64_t co = 0; co < C; ++co)
          for (int64_t ci = 0; ci < C; ++ci)
            for (int kw = 0; kw < 3; ++kw)
              p[(((((g * NR + r) * (Cp / COB) + ci / COB) * (Cp / KG) + co / KG) * 3 + kw) * COB + ci % COB) * KG +
                co % KG] = w[((g * C + co) * C + ci) * K + r * 3 + (2 - kw)];
    return p;
  }
  // A bias vector in the accumulation type.
  static std::vector<typename SsdcElem<S>::Acc> widen(const S* v, int64_t n) {
    std::vector<typename SsdcElem<S>::Acc> out{};
    out.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = SsdcElem<S>::widen(v[i]);
    return out;
  }
};

template <typename S>
void forward(const SsdcArgs& args, const S* x, const S* w, const S* b, const S* rw, const S* rb, S* y,
             int threads) {
  using KT = Kern<S>;
  using A = typename KT::A;
  constexpr int KG = KT::KG;
  const Plan<S> P(args);
  if (P.B == 0 || P.G == 0 || P.C == 0 || P.N == 0) return;
  const std::vector<S> wf = P.pack_conv(w), pf = P.pack_reduce(rw, false);
  const std::vector<A> bA = Plan<S>::widen(b, P.G * P.C), rbA = Plan<S>::widen(rb, P.G * P.C);
  const int64_t units = P.B * P.G * P.rows_total * P.tiles_per_row;
  const int64_t Cp = P.Cp, C = P.C, N = P.N, ldz = P.ldz;
  const A slope = A(P.slope);
  parallel_for(units, threads, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> xr(KG == 1 ? size_t(C * P.NR * P.ldi) : 0, S{}),
        xb(KG > 1 ? size_t(P.CG * P.NR * P.ldi * KG) : 0, S{}), ap(KG > 1 ? size_t(Cp * ldz) : 0);
    std::vector<A> z(size_t(Cp * ldz)), yt(size_t(Cp * ldz));
    int rows[9];
    int64_t src[9];
    const int zero_row[1] = {0};
    for (int64_t u = begin; u < end; ++u) {
      const int64_t tile = u % P.tiles_per_row, rest = u / P.tiles_per_row;
      const int64_t row = rest % P.rows_total, bg = rest / P.rows_total, g = bg % P.G;
      const int64_t w0 = tile * P.TW, L = std::min(P.TW, P.Wd - w0), Lp = round_up(L, KT::PB);
      const S* xg = x + bg * C * N;
      for (int64_t co = 0; co < Cp; ++co)
        std::fill(yt.data() + co * ldz, yt.data() + co * ldz + Lp, co < C ? rbA[g * C + co] : A(0));
      for (int64_t di = 0; di < P.D; ++di) {
        const int64_t d = args.dilation[di], pad = ssdc_row_pad(d, P.Wd);
        const int nrows = P.source_rows(row, d, rows, src);
        P.gather(KG == 1 ? xr.data() : nullptr, xb.data(), xg, rows, nrows, src, w0, Lp, pad);
        for (int64_t co = 0; co < Cp; ++co)
          std::fill(z.data() + co * ldz, z.data() + co * ldz + Lp, co < C ? bA[g * C + co] : A(0));
        KT::conv_tile(z.data(), ldz, Lp, Cp, Plan<S>::conv_input(xr, xb), P.CG, P.NR, P.ldi, rows, nrows,
                      wf.data() + g * Cp * P.CG * P.K * KG, 3, pad > 0 ? 0 : 1, pad > 0 ? 3 : 2, pad, 0);
        for (int64_t co = 0; co < Cp; ++co) KT::leaky(z.data() + co * ldz, Lp, slope);
        const S* act;
        if constexpr (KG == 1) {
          act = z.data();
        } else {
          pack_rows(ap.data(), ldz, 0, z.data(), ldz, Cp, Cp / KG, Lp);
          act = ap.data();
        }
        KT::conv_tile(yt.data(), ldz, Lp, Cp, act, Cp / KG, 1, ldz, zero_row, 1,
                      pf.data() + (g * P.D + di) * Cp * Cp, 1, 0, 1, 0, 0);
      }
      S* yg = y + bg * C * N + row * P.Wd + w0;
      for (int64_t co = 0; co < C; ++co) {
        if constexpr (KG == 1)
          std::memcpy(yg + co * N, yt.data() + co * ldz, sizeof(S) * L);
        else
          KT::narrow_row(yg + co * N, yt.data() + co * ldz, L);
      }
    }
  });
}

template <typename S>
void backward(const SsdcArgs& args, const S* x, const S* w, const S* b, const S* rw, const S* gy, S* gx,
              S* gw, S* gb, S* grw, S* grb, int threads) {
  using KT = Kern<S>;
  using A = typename KT::A;
  using E = SsdcElem<S>;
  constexpr int KG = KT::KG;
  constexpr bool kSumInGx = std::is_same<S, A>::value;  // grad x summed in place (else in a float32 slice)
  const Plan<S> P(args);
  const int64_t G = P.G, C = P.C, CG = P.CG, N = P.N, D = P.D, K = P.K, NR = P.NR, Cp = P.Cp, ldz = P.ldz;
  const int64_t nw = G * C * C * K, nb = G * C, nrw = G * C * D * C;
  // Gradient accumulators keep the reduced-over channel contiguous (padded to Mp) so that the
  // micro-kernel vectorises along it: aw [g][ci][k][co], arw [g][d][co][o].
  const int64_t Mp = round_up(std::max<int64_t>(C, 1), 4 * Kern<S>::VW);
  const int64_t naw = G * C * K * Mp, narw = G * D * C * Mp;
  std::fill(gx, gx + P.B * G * C * N, S{});
  if (P.B == 0 || G == 0 || C == 0 || N == 0) {
    std::fill(gw, gw + nw, S{});
    std::fill(gb, gb + nb, S{});
    std::fill(grw, grw + nrw, S{});
    std::fill(grb, grb + nb, S{});
    return;
  }
  const std::vector<S> wf = P.pack_conv(w), pt = P.pack_reduce(rw, true), wt = P.pack_transposed(w);
  const std::vector<A> bA = Plan<S>::widen(b, G * C);
  const A slope = A(P.slope);
  const int64_t units = P.B * G;
  const int64_t chunks = parallel_chunks(units, threads, 1);
  // Per-chunk float64 accumulators: [aw | gb | arw | grb].
  const int64_t nacc = naw + nb + narw + nb;
  std::vector<std::vector<double>> acc(static_cast<size_t>(chunks));
  const int64_t ldg = P.Lpmax + 4 * P.padmax + 2 * KT::PB;
  const int64_t ldx = round_up(P.Lpmax + 2 * P.padmax, KT::PB);
  const int64_t Lt = round_up(P.Lpmax, KG);  // positions of the transposed tiles
  parallel_for_chunks(units, threads, 1, [&](int64_t chunk, int64_t begin, int64_t end) {
    std::vector<double>& Acc = acc[size_t(chunk)];
    Acc.assign(size_t(nacc), 0.0);
    double* aw = Acc.data();
    double* ab = aw + naw;
    double* arw = ab + nb;
    double* arb = arw + narw;
    std::vector<S> xr(size_t(C * NR * P.ldi), S{}), xb(KG > 1 ? size_t(CG * NR * P.ldi * KG) : 0, S{}),
        gyt(size_t(Cp * ldz)), gzp(size_t(Cp * ldg), S{}), as(KG > 1 ? size_t(Cp * ldz) : 0),
        gzs(KG > 1 ? size_t(Cp * ldz) : 0),
        gyt_t(size_t(Lt * Mp), S{}), gz_t(size_t(Lt * Mp), S{});
    std::vector<A> z(size_t(Cp * ldz)), gz(size_t(Cp * ldz)), gxr(size_t(Cp * ldx)),
        gxs(kSumInGx ? 0 : size_t(C * N));
    int rows[9];
    int64_t src[9];
    const int zero_row[1] = {0};
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t g = bg % G;
      const S* xg = x + bg * C * N;
      const S* gyg = gy + bg * C * N;
      A* gxa;
      if constexpr (kSumInGx) {
        gxa = gx + bg * C * N;
      } else {
        gxa = gxs.data();
        std::fill(gxs.begin(), gxs.end(), A(0));
      }
      for (int64_t row = 0; row < P.rows_total; ++row)
        for (int64_t tile = 0; tile < P.tiles_per_row; ++tile) {
          const int64_t w0 = tile * P.TW, L = std::min(P.TW, P.Wd - w0), Lp = round_up(L, KT::PB);
          const S* gys = gyg + row * P.Wd + w0;
          std::fill(gyt.begin(), gyt.end(), S{});
          pack_rows(gyt.data(), ldz, 0, gys, N, C, Cp / KG, L);
          transpose_rows(gyt_t.data(), Mp, gys, N, C, L);
          for (int64_t co = 0; co < C; ++co) {
            double t = 0;
            for (int64_t j = 0; j < L; ++j) t += double(E::widen(gys[co * N + j]));
            arb[g * C + co] += t;
          }
          for (int64_t di = 0; di < D; ++di) {
            const int64_t d = args.dilation[di], pad = ssdc_row_pad(d, P.Wd);
            const int kw_lo = pad > 0 ? 0 : 1, kw_hi = pad > 0 ? 3 : 2;
            const int nrows = P.source_rows(row, d, rows, src);
            P.gather(xr.data(), xb.data(), xg, rows, nrows, src, w0, Lp, pad);
            // Recompute z_d = conv_d(x) + b.
            for (int64_t co = 0; co < Cp; ++co)
              std::fill(z.data() + co * ldz, z.data() + co * ldz + Lp, co < C ? bA[g * C + co] : A(0));
            KT::conv_tile(z.data(), ldz, Lp, Cp, Plan<S>::conv_input(xr, xb), CG, P.NR, P.ldi, rows, nrows,
                          wf.data() + g * Cp * CG * K * KG, 3, kw_lo, kw_hi, pad, 0);
            // ga = P_d^T gy; gz = LeakyReLU'(z) ga (0 past the tile); z <- a = LeakyReLU(z).
            std::fill(gz.begin(), gz.end(), A(0));
            KT::conv_tile(gz.data(), ldz, Lp, Cp, gyt.data(), Cp / KG, 1, ldz, zero_row, 1,
                          pt.data() + (g * D + di) * Cp * Cp, 1, 0, 1, 0, 0);
            // (Rows from C on are never read again: gz's are packed as zeros, a's unused.)
            for (int64_t co = 0; co < C; ++co)
              ab[g * C + co] += KT::leaky_backward(z.data() + co * ldz, gz.data() + co * ldz, L, Lp, slope);
            // The activations as the forward's reduction saw them, and gz, in S.
            const S *act, *gzr;
            if constexpr (KG == 1) {
              act = z.data(), gzr = gz.data();
            } else {
              for (int64_t co = 0; co < C; ++co) {
                KT::narrow_row(as.data() + co * ldz, z.data() + co * ldz, Lp);
                KT::narrow_row(gzs.data() + co * ldz, gz.data() + co * ldz, Lp);
              }
              act = as.data(), gzr = gzs.data();
            }
            // grad P_d[o][co] += sum_j gy[o][j] a[co][j]  (vectors along o: arw is [g][d][co][o]).
            for (int64_t co0 = 0; co0 < C; co0 += 4) {
              const int nb4 = int(std::min<int64_t>(4, C - co0));
              const S* br[4];
              double* orow[4];
              for (int k = 0; k < nb4; ++k) {
                br[k] = act + (co0 + k) * ldz;
                orow[k] = arw + ((g * D + di) * C + co0 + k) * Mp;
              }
              if (nb4 == 4)
                KT::template outer<4>(gyt_t.data(), Mp, Mp / KT::VW, br, L, orow);
              else
                for (int k = 0; k < nb4; ++k) KT::template outer<1>(gyt_t.data(), Mp, Mp / KT::VW, br + k, L, orow + k);
            }
            // grad W[co][ci][r*3 + kw] += sum_j gz[co][j] xr[ci][r][j + kw pad]  (aw is [g][ci][k][co]).
            transpose_rows(gz_t.data(), Mp, gzr, ldz, C, L);
            {
              const S* br[4];
              double* orow[4];
              int nb4 = 0;
              auto flush = [&] {
                if (nb4 == 4)
                  KT::template outer<4>(gz_t.data(), Mp, Mp / KT::VW, br, L, orow);
                else
                  for (int k = 0; k < nb4; ++k) KT::template outer<1>(gz_t.data(), Mp, Mp / KT::VW, br + k, L, orow + k);
                nb4 = 0;
              };
              for (int64_t ci = 0; ci < C; ++ci)
                for (int rr = 0; rr < nrows; ++rr) {
                  const int r = rows[rr];
                  const S* xrow = xr.data() + (ci * NR + r) * P.ldi;
                  for (int kw = kw_lo; kw < kw_hi; ++kw) {
                    br[nb4] = xrow + kw * pad;
                    orow[nb4] = aw + ((g * C + ci) * K + r * 3 + kw) * Mp;
                    if (++nb4 == 4) flush();
                  }
                }
              if (nb4) flush();
            }
            // grad x: for each source row, gxr[ci][t - t_lo] = sum_kw sum_co W[co][ci][r][kw] gz[co][t - kw pad]
            // for the columns t (x column w0 - pad + t) inside the image.
            const int64_t lead = 2 * pad;
            for (int64_t cg = 0; cg < Cp / KG; ++cg) {
              S* dst = gzp.data() + cg * ldg * KG;
              std::fill(dst, dst + lead * KG, S{});
              std::fill(dst + (lead + Lp) * KG, dst + ldg * KG, S{});
            }
            pack_rows(gzp.data(), ldg, lead, gzr, ldz, C, Cp / KG, Lp);
            const int64_t t_lo = std::max<int64_t>(0, pad - w0), t_hi = std::min<int64_t>(L + 2 * pad, P.Wd - w0 + pad);
            const int64_t n = t_hi - t_lo, npos = round_up(n, KT::PB);
            for (int rr = 0; rr < nrows; ++rr) {
              const int r = rows[rr];
              std::fill(gxr.begin(), gxr.begin() + Cp * ldx, A(0));
              KT::conv_tile(gxr.data(), ldx, npos, Cp, gzp.data(), Cp / KG, 1, ldg, zero_row, 1,
                            wt.data() + (g * NR + r) * Cp * Cp * 3, 3, kw_lo, kw_hi, pad, t_lo);
              for (int64_t ci = 0; ci < C; ++ci) {
                A* dst = gxa + ci * N + src[r] * P.Wd + (w0 - pad + t_lo);
                const A* s = gxr.data() + ci * ldx;
                for (int64_t t = 0; t < n; ++t) dst[t] += s[t];
              }
            }
          }
        }
      if constexpr (!kSumInGx) {
        KT::narrow_row(gx + bg * C * N, gxs.data(), C * N);
      }
    }
  });
  // Reduce the chunks in order (deterministic for a given thread count).
  std::vector<double> total(size_t(nacc), 0.0);
  for (const auto& Acc : acc)
    for (int64_t i = 0; i < nacc; ++i) total[size_t(i)] += Acc[size_t(i)];
  const double* tw = total.data();
  const double* tb = tw + naw;
  const double* trw = tb + nb;
  const double* trb = trw + narw;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t co = 0; co < C; ++co) {
      for (int64_t ci = 0; ci < C; ++ci)
        for (int64_t k = 0; k < K; ++k)
          gw[((g * C + co) * C + ci) * K + k] = E::from_double(tw[((g * C + ci) * K + k) * Mp + co]);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t c2 = 0; c2 < C; ++c2)
          grw[(g * C + co) * D * C + d * C + c2] = E::from_double(trw[((g * D + d) * C + c2) * Mp + co]);
    }
  for (int64_t i = 0; i < nb; ++i) gb[i] = E::from_double(tb[i]);
  for (int64_t i = 0; i < nb; ++i) grb[i] = E::from_double(trb[i]);
}

// The entry points for one element type.
template <typename S>
void forward_as(const SsdcArgs& a, const void* x, const void* w, const void* b, const void* rw, const void* rb,
                void* y, int threads) {
  forward<S>(a, static_cast<const S*>(x), static_cast<const S*>(w), static_cast<const S*>(b),
             static_cast<const S*>(rw), static_cast<const S*>(rb), static_cast<S*>(y), threads);
}

template <typename S>
void backward_as(const SsdcArgs& a, const void* x, const void* w, const void* b, const void* rw, const void* gy,
                 void* gx, void* gw, void* gb, void* grw, void* grb, int threads) {
  backward<S>(a, static_cast<const S*>(x), static_cast<const S*>(w), static_cast<const S*>(b),
              static_cast<const S*>(rw), static_cast<const S*>(gy), static_cast<S*>(gx), static_cast<S*>(gw),
              static_cast<S*>(gb), static_cast<S*>(grw), static_cast<S*>(grb), threads);
}

}  // namespace

// dtype codes of entry.h: 0 float32, 1 float64, 3 bfloat16 (the dispatcher in ssdc_cpu.cpp checks).
void forward(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b, const void* rw,
             const void* rb, void* y, int threads) {
#ifndef RDC_SSDC_BF16_ONLY
  if (dtype == 0) return forward_as<float>(a, x, w, b, rw, rb, y, threads);
  if (dtype == 1) return forward_as<double>(a, x, w, b, rw, rb, y, threads);
#endif
  (void)dtype;
  forward_as<SsdcBf16>(a, x, w, b, rw, rb, y, threads);
}

void backward(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b, const void* rw,
              const void* gy, void* gx, void* gw, void* gb, void* grw, void* grb, int threads) {
#ifndef RDC_SSDC_BF16_ONLY
  if (dtype == 0) return backward_as<float>(a, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
  if (dtype == 1) return backward_as<double>(a, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
#endif
  (void)dtype;
  backward_as<SsdcBf16>(a, x, w, b, rw, gy, gx, gw, gb, grw, grb, threads);
}

}  // namespace RDC_SSDC_NS
}  // namespace rdc
