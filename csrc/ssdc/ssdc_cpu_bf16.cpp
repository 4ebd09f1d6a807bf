// CPU sSDC forward and backward for bfloat16 tensors on CPUs with AVX512-BF16: bf16 operands,
// float32 accumulation, `vdpbf16ps` micro-kernels (GCC on x86-64 only; ssdc_cpu.cpp dispatches here
// when the CPU has the instructions, and Python computes bfloat16 in float32 elsewhere).
//
// The structure is that of ssdc_cpu_impl.h (row tiles, gather, register-blocked direct convolution,
// activations only in tile buffers; backward recomputes them), with one difference in layout:
// `vdpbf16ps` multiplies *pairs* of bf16 and adds both products to one float32 lane, so the
// reduction index of every product comes in pairs. Forward and grad x reduce over channels: their
// inputs are gathered as 32-bit words holding the same position of two consecutive channels
// ("channel pairs"), and their weights packed as the matching pairs. Weight gradients reduce over
// positions: their tiles are transposed into words holding two consecutive positions of one
// channel ("position pairs"), the broadcast operand read as two consecutive bf16 of a row.
// Per-dilation activations are rounded to bf16 before the 1x1 reduction (as a bf16 framework chain
// stores them); every sum is float32 in registers and float64 across tiles for the parameter
// gradients, and grad x is accumulated in float32 and rounded once.
//
// AMX (tile matrix multiply, Intel Sapphire Rapids and later) would slot in as another micro-kernel
// behind ssdc_cpu_bf16_kind(); it is not written: no machine here has AMX to test it on.
#include "entry.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/parallel.h"
#include "ssdc.h"

namespace rdc {
namespace ssdc_bf16 {
namespace {

using bf16 = uint16_t;
using word = uint32_t;  // two bf16: the lower half is the first of the pair

constexpr int COB = 8;    // output channels per register block
constexpr int NV = 2;     // vectors of positions per register block
constexpr int VW = 16;    // float32 lanes (positions) per vector
constexpr int PB = NV * VW;
constexpr int64_t kTileWidth = 128;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

inline float to_f32(bf16 v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16(u >> 16);
}

inline word pair(bf16 lo, bf16 hi) { return word(lo) | (word(hi) << 16); }

inline word load_word(const bf16* p) {  // two consecutive bf16, any alignment
  word w;
  std::memcpy(&w, p, 4);
  return w;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,fma")

struct Kern {
  static __m512 dot(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(a), reinterpret_cast<__m512bh&>(b));
  }

  // out[co][j] += sum_{cp < CP} sum_{r in rows} sum_{kw_lo <= kw < kw_hi}
  //                 wp[cob][cp][r][kw][i] . in[(cp * NR + r) * ldi + in_off + j + kw * pad]
  // (`.`: the two-term dot product of a channel pair) for co = cob * COB + i < Cop (a multiple of
  // COB) and j < npos (a multiple of PB). `taps` is the weights' stride between rows (3 or 1).
  static void conv_tile(float* out, int64_t ldo, int64_t npos, int64_t Cop, const word* in, int64_t CP, int NR,
                        int64_t ldi, const int* rows, int nrows, const word* wp, int taps, int kw_lo, int kw_hi,
                        int64_t pad, int64_t in_off) {
    for (int64_t cob = 0; cob < Cop / COB; ++cob) {
      const word* wb = wp + cob * CP * NR * taps * COB;
      float* ob = out + cob * COB * ldo;
      for (int64_t j0 = 0; j0 < npos; j0 += PB) {
        __m512 acc[COB][NV];
        for (int i = 0; i < COB; ++i)
          for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_loadu_ps(ob + i * ldo + j0 + v * VW);
        for (int64_t cp = 0; cp < CP; ++cp) {
          for (int rr = 0; rr < nrows; ++rr) {
            const int r = rows[rr];
            const word* src = in + (cp * NR + r) * ldi + in_off + j0;
            const word* w = wb + (cp * NR + r) * taps * COB;
            for (int kw = kw_lo; kw < kw_hi; ++kw) {
              const word* s = src + kw * pad;
              __m512i xv[NV];
              for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512(s + v * VW);
              const word* wk = w + kw * COB;
              for (int i = 0; i < COB; ++i) {
                const __m512i wv = _mm512_set1_epi32(int(wk[i]));
                for (int v = 0; v < NV; ++v) acc[i][v] = dot(acc[i][v], xv[v], wv);
              }
            }
          }
        }
        for (int i = 0; i < COB; ++i)
          for (int v = 0; v < NV; ++v) _mm512_storeu_ps(ob + i * ldo + j0 + v * VW, acc[i][v]);
      }
    }
  }

  // Conversions of a row of n values into channel pairs (dst[j] = (lo[j], hi[j]); hi null: 0) and
  // into bf16 rows, 16 at a time (the tails masked). From float32 with `leaky`: LeakyReLU first.
  static __m512i widen(const bf16* p, __mmask16 m) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  }
  static __m512i narrow(const float* p, __mmask16 m, bool leaky, __m512 slope) {
    __m512 v = _mm512_maskz_loadu_ps(m, p);
    if (leaky) v = _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, slope);
    const __m256bh h = _mm512_cvtneps_pbh(v);
    return _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(h));
  }
  static __mmask16 tail(int64_t n, int64_t j) { return n - j >= VW ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1); }

  static void pairs_bf16(const bf16* lo, const bf16* hi, word* dst, int64_t n) {
    for (int64_t j = 0; j < n; j += VW) {
      const __mmask16 m = tail(n, j);
      __m512i v = widen(lo + j, m);
      if (hi) v = _mm512_or_si512(v, _mm512_slli_epi32(widen(hi + j, m), 16));
      _mm512_mask_storeu_epi32(dst + j, m, v);
    }
  }
  static void pairs_f32(const float* lo, const float* hi, word* dst, int64_t n, bool leaky, float slope) {
    const __m512 s = _mm512_set1_ps(slope);
    for (int64_t j = 0; j < n; j += VW) {
      const __mmask16 m = tail(n, j);
      __m512i v = narrow(lo + j, m, leaky, s);
      if (hi) v = _mm512_or_si512(v, _mm512_slli_epi32(narrow(hi + j, m, leaky, s), 16));
      _mm512_mask_storeu_epi32(dst + j, m, v);
    }
  }
  static void row_bf16(const float* src, bf16* dst, int64_t n, bool leaky, float slope) {
    const __m512 s = _mm512_set1_ps(slope);
    for (int64_t j = 0; j < n; j += VW) {
      const __mmask16 m = tail(n, j);
      _mm256_mask_storeu_epi16(dst + j, m, _mm512_cvtepi32_epi16(narrow(src + j, m, leaky, s)));
    }
  }

  // g[j] = LeakyReLU'(z[j]) g[j] for j < n, 0 for n <= j < np (a multiple of VW); returns the sum.
  static double leaky_backward_row(const float* z, float* g, int64_t n, int64_t np, float slope) {
    const __m512 s = _mm512_set1_ps(slope);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < np; j += VW) {
      const __mmask16 m = j < n ? tail(n, j) : __mmask16(0);
      const __m512 zv = _mm512_loadu_ps(z + j);
      __m512 gv = _mm512_maskz_loadu_ps(m, g + j);
      gv = _mm512_mask_mul_ps(gv, _mm512_cmp_ps_mask(zv, _mm512_setzero_ps(), _CMP_LE_OQ), gv, s);
      _mm512_storeu_ps(g + j, gv);
      sum = _mm512_add_ps(sum, gv);
    }
    return double(_mm512_reduce_add_ps(sum));
  }

  // Column m of a position-pair tile: t[jp * ld] = (row[2 jp], row[2 jp + 1]) for the n values of
  // a float32 row (rounded to bf16; past n: 0), or of a bf16 row.
  static void column_pairs_f32(const float* row, int64_t n, word* t, int64_t ld) {
    const __m512i index = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(int(ld)));
    for (int64_t j = 0; j < n; j += 2 * VW) {
      const __m512 a = _mm512_maskz_loadu_ps(tail(n, j), row + j);
      const __m512 b = _mm512_maskz_loadu_ps(j + VW < n ? tail(n, j + VW) : __mmask16(0), row + j + VW);
      const __m512bh h = _mm512_cvtne2ps_pbh(b, a);  // 16-bit lanes: a0..a15, b0..b15
      const int64_t words = std::min<int64_t>(VW, (n - j + 1) / 2);
      _mm512_mask_i32scatter_epi32(t + (j / 2) * ld, tail(words, 0), index, reinterpret_cast<const __m512i&>(h), 4);
    }
  }
  static void column_pairs_bf16(const bf16* row, int64_t n, word* t, int64_t ld) {
    const __m512i index = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(int(ld)));
    for (int64_t j = 0; j < n; j += 2 * VW) {
      const int64_t left = std::min<int64_t>(2 * VW, n - j);
      const __mmask32 m = left >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << left) - 1);
      const __m512i v = _mm512_maskz_loadu_epi16(m, row + j);
      const int64_t words = (left + 1) / 2;
      _mm512_mask_i32scatter_epi32(t + (j / 2) * ld, tail(words, 0), index, v, 4);
    }
  }

  // out[k][m] += sum_{jp < np} at[jp * lda + m] . (b[k][2 jp], b[k][2 jp + 1]) for k < NB and
  // m < Mv * VW (Mv a multiple of 4): at holds position pairs of each channel m, b are bf16 rows.
  template <int NB>
  static void outer(const word* at, int64_t lda, int64_t Mv, const bf16* const* b, int64_t np, double* const* out) {
    constexpr int MB = 4;
    for (int64_t mv0 = 0; mv0 < Mv; mv0 += MB) {
      __m512 acc[MB][NB];
      for (int i = 0; i < MB; ++i)
        for (int k = 0; k < NB; ++k) acc[i][k] = _mm512_setzero_ps();
      for (int64_t jp = 0; jp < np; ++jp) {
        __m512i av[MB];
        for (int i = 0; i < MB; ++i) av[i] = _mm512_loadu_si512(at + jp * lda + (mv0 + i) * VW);
        for (int k = 0; k < NB; ++k) {
          const __m512i bv = _mm512_set1_epi32(int(load_word(b[k] + 2 * jp)));
          for (int i = 0; i < MB; ++i) acc[i][k] = dot(acc[i][k], av[i], bv);
        }
      }
      for (int k = 0; k < NB; ++k)
        for (int i = 0; i < MB; ++i) {  // into the float64 accumulators, 8 lanes at a time
          double* o = out[k] + (mv0 + i) * VW;
          const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(acc[i][k]));
          const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][k]), 1)));
          _mm512_storeu_pd(o, _mm512_add_pd(_mm512_loadu_pd(o), lo));
          _mm512_storeu_pd(o + 8, _mm512_add_pd(_mm512_loadu_pd(o + 8), hi));
        }
    }
  }
};

#pragma GCC pop_options

// Everything a tile needs that does not change between tiles.
struct Plan {
  const SsdcArgs& a;
  int64_t B, G, C, CP, N, Wd, rows_total, D, Cp, TW, tiles_per_row, padmax, Lpmax, ldi, ldz;
  int NR, K;
  float slope;

  explicit Plan(const SsdcArgs& args) : a(args) {
    B = a.batch, G = a.groups, C = a.channels, D = a.ndil;
    CP = (C + 1) / 2;
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
    Lpmax = round_up(std::max<int64_t>(TW, 1), PB);
    ldi = Lpmax + 2 * padmax + PB;
    ldz = Lpmax;
    slope = float(a.slope);
  }

  int source_rows(int64_t row, int64_t d, int* rows, int64_t* src) const {
    int n = 0;
    for (int r = 0; r < NR; ++r) {
      src[r] = ssdc_source_row(a, row, r, d);
      if (src[r] >= 0) rows[n++] = r;
    }
    return n;
  }

  // The tile's source rows, zero outside the row, in channel pairs: xp[cp][r][j] = (x[2cp], x[2cp+1])
  // at column w0 - pad + j; with `plain`, also as bf16 rows xr[ci][r][j] (for grad W).
  void gather(word* xp, bf16* plain, const bf16* xg, const int* rows, int nrows, const int64_t* src, int64_t w0,
              int64_t Lp, int64_t pad) const {
    const int64_t len = Lp + 2 * pad;
    const int64_t lo = std::max<int64_t>(0, pad - w0), hi = std::min<int64_t>(len, Wd - w0 + pad);
    for (int64_t cp = 0; cp < CP; ++cp)
      for (int rr = 0; rr < nrows; ++rr) {
        const int r = rows[rr];
        word* dst = xp + (cp * NR + r) * ldi;
        const bf16* s0 = xg + (2 * cp) * N + src[r] * Wd + (w0 - pad);
        const bf16* s1 = 2 * cp + 1 < C ? s0 + N : nullptr;
        std::fill(dst, dst + lo, word(0));
        if (hi > lo) Kern::pairs_bf16(s0 + lo, s1 ? s1 + lo : nullptr, dst + lo, hi - lo);
        std::fill(dst + std::max(lo, hi), dst + len, word(0));
        if (plain) {
          for (int h = 0; h < 2 && 2 * cp + h < C; ++h) {
            bf16* p = plain + ((2 * cp + h) * NR + r) * ldi;
            const bf16* s = h ? s1 : s0;
            std::fill(p, p + lo, bf16(0));
            if (hi > lo) std::memcpy(p + lo, s + lo, sizeof(bf16) * (hi - lo));
            std::fill(p + std::max(lo, hi), p + len + 2, bf16(0));
          }
        }
      }
  }

  // Conv weights in channel pairs: wf[g][cob][cp][r*3 + kw][i] = (W[co][2cp][k], W[co][2cp+1][k]), co = cob*COB + i.
  std::vector<word> pack_conv(const bf16* w) const {
    std::vector<word> p(size_t(G * Cp * CP * K), word(0));
    for (int64_t g = 0; g < G; ++g)
      for (int64_t co = 0; co < C; ++co)
        for (int64_t cp = 0; cp < CP; ++cp)
          for (int k = 0; k < K; ++k) {
            const bf16 lo = w[((g * C + co) * C + 2 * cp) * K + k];
            const bf16 hi = 2 * cp + 1 < C ? w[((g * C + co) * C + 2 * cp + 1) * K + k] : bf16(0);
            p[(((g * (Cp / COB) + co / COB) * CP + cp) * K + k) * COB + co % COB] = pair(lo, hi);
          }
    return p;
  }
  // 1x1 weights of dilation d in pairs over the reduced channel: [g][d][ob][pair][i].
  // transpose = false: out o, pairs over co of rw[g*C + o][d*C + co]; true: out co, pairs over o.
  std::vector<word> pack_reduce(const bf16* rw, bool transpose) const {
    std::vector<word> p(size_t(G * D * Cp * CP), word(0));
    auto at = [&](int64_t g, int64_t o, int64_t d, int64_t co) -> bf16 {
      return o < C && co < C ? rw[(g * C + o) * D * C + d * C + co] : bf16(0);
    };
    for (int64_t g = 0; g < G; ++g)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t out = 0; out < C; ++out)
          for (int64_t cp = 0; cp < CP; ++cp) {
            const word v = transpose ? pair(at(g, 2 * cp, d, out), at(g, 2 * cp + 1, d, out))
                                     : pair(at(g, out, d, 2 * cp), at(g, out, d, 2 * cp + 1));
            p[(((g * D + d) * (Cp / COB) + out / COB) * CP + cp) * COB + out % COB] = v;
          }
    return p;
  }
  // grad-x weights per outer tap r, pairs over co: [g][r][cib][cop][kw'][i] = W[2cop(+1)][ci][r*3 + 2 - kw'].
  std::vector<word> pack_transposed(const bf16* w) const {
    std::vector<word> p(size_t(G * NR * Cp * CP * 3), word(0));
    for (int64_t g = 0; g < G; ++g)
      for (int r = 0; r < NR; ++r)
        for (int64_t ci = 0; ci < C; ++ci)
          for (int64_t cp = 0; cp < CP; ++cp)
            for (int kw = 0; kw < 3; ++kw) {
              const int k = r * 3 + (2 - kw);
              const bf16 lo = w[((g * C + 2 * cp) * C + ci) * K + k];
              const bf16 hi = 2 * cp + 1 < C ? w[((g * C + 2 * cp + 1) * C + ci) * K + k] : bf16(0);
              p[((((g * NR + r) * (Cp / COB) + ci / COB) * CP + cp) * 3 + kw) * COB + ci % COB] = pair(lo, hi);
            }
    return p;
  }
};

// z[co][j] (float32, Cp rows) = b + conv_d(x) over the tile, with the gathered channel pairs xp.
inline void conv_dilation(const Plan& P, float* z, const word* xp, const int* rows, int nrows, const word* wf_g,
                          const bf16* b_g, int64_t Lp, int64_t pad) {
  for (int64_t co = 0; co < P.Cp; ++co)
    std::fill(z + co * P.ldz, z + co * P.ldz + Lp, co < P.C ? to_f32(b_g[co]) : 0.0f);
  Kern::conv_tile(z, P.ldz, Lp, P.Cp, xp, P.CP, P.NR, P.ldi, rows, nrows, wf_g, 3, pad > 0 ? 0 : 1, pad > 0 ? 3 : 2,
                  pad, 0);
}

void forward(const SsdcArgs& args, const bf16* x, const bf16* w, const bf16* b, const bf16* rw, const bf16* rb,
             bf16* y, int threads) {
  const Plan P(args);
  if (P.B == 0 || P.G == 0 || P.C == 0 || P.N == 0) return;
  const std::vector<word> wf = P.pack_conv(w), pf = P.pack_reduce(rw, false);
  const int64_t units = P.B * P.G * P.rows_total * P.tiles_per_row;
  const int64_t Cp = P.Cp, C = P.C, CP = P.CP, N = P.N, ldz = P.ldz;
  parallel_for(units, threads, 1, [&](int64_t begin, int64_t end) {
    std::vector<word> xp(size_t(CP * P.NR * P.ldi), word(0)), ap(size_t(CP * ldz), word(0));
    std::vector<float> z(size_t(Cp * ldz)), yt(size_t(Cp * ldz));
    int rows[9];
    int64_t src[9];
    const int zero_row[1] = {0};
    for (int64_t u = begin; u < end; ++u) {
      const int64_t tile = u % P.tiles_per_row, rest = u / P.tiles_per_row;
      const int64_t row = rest % P.rows_total, bg = rest / P.rows_total, g = bg % P.G;
      const int64_t w0 = tile * P.TW, L = std::min(P.TW, P.Wd - w0), Lp = round_up(L, PB);
      const bf16* xg = x + bg * C * N;
      for (int64_t co = 0; co < Cp; ++co)
        std::fill(yt.data() + co * ldz, yt.data() + co * ldz + Lp, co < C ? to_f32(rb[g * C + co]) : 0.0f);
      for (int64_t di = 0; di < P.D; ++di) {
        const int64_t d = args.dilation[di], pad = ssdc_row_pad(d, P.Wd);
        const int nrows = P.source_rows(row, d, rows, src);
        P.gather(xp.data(), nullptr, xg, rows, nrows, src, w0, Lp, pad);
        conv_dilation(P, z.data(), xp.data(), rows, nrows, wf.data() + g * Cp * CP * P.K, b + g * C, Lp, pad);
        // a = LeakyReLU(z), rounded to bf16 and paired over channels for the 1x1 reduction.
        for (int64_t cp = 0; cp < CP; ++cp) {
          const float* z0 = z.data() + 2 * cp * ldz;
          Kern::pairs_f32(z0, 2 * cp + 1 < C ? z0 + ldz : nullptr, ap.data() + cp * ldz, Lp, true, P.slope);
        }
        Kern::conv_tile(yt.data(), ldz, Lp, Cp, ap.data(), CP, 1, ldz, zero_row, 1,
                        pf.data() + (g * P.D + di) * Cp * CP, 1, 0, 1, 0, 0);
      }
      bf16* yg = y + bg * C * N + row * P.Wd + w0;
      for (int64_t co = 0; co < C; ++co) Kern::row_bf16(yt.data() + co * ldz, yg + co * N, L, false, 0.0f);
    }
  });
}

void backward(const SsdcArgs& args, const bf16* x, const bf16* w, const bf16* b, const bf16* rw, const bf16* gy,
              bf16* gx, bf16* gw, bf16* gb, bf16* grw, bf16* grb, int threads) {
  const Plan P(args);
  const int64_t G = P.G, C = P.C, CP = P.CP, N = P.N, D = P.D, K = P.K, NR = P.NR, Cp = P.Cp, ldz = P.ldz;
  const int64_t nw = G * C * C * K, nb = G * C, nrw = G * C * D * C;
  // Weight-gradient accumulators keep the vectorised channel contiguous (padded to Mp):
  // aw [g][ci][k][co], arw [g][d][co][o]; float64 per chunk, reduced in order.
  const int64_t Mp = round_up(std::max<int64_t>(C, 1), 4 * VW);
  const int64_t naw = G * C * K * Mp, narw = G * D * C * Mp;
  std::fill(gx, gx + P.B * G * C * N, bf16(0));
  if (P.B == 0 || G == 0 || C == 0 || N == 0) {
    std::fill(gw, gw + nw, bf16(0));
    std::fill(gb, gb + nb, bf16(0));
    std::fill(grw, grw + nrw, bf16(0));
    std::fill(grb, grb + nb, bf16(0));
    return;
  }
  const std::vector<word> wf = P.pack_conv(w), pt = P.pack_reduce(rw, true), wt = P.pack_transposed(w);
  const int64_t units = P.B * G;
  const int64_t chunks = parallel_chunks(units, threads, 1);
  const int64_t nacc = naw + nb + narw + nb;
  std::vector<std::vector<double>> acc(static_cast<size_t>(chunks));
  const int64_t ldg = P.Lpmax + 4 * P.padmax + 2 * PB;
  const int64_t ldx = round_up(P.Lpmax + 2 * P.padmax, PB);
  const int64_t npmax = P.Lpmax / 2;  // position pairs per tile
  parallel_for_chunks(units, threads, 1, [&](int64_t chunk, int64_t begin, int64_t end) {
    std::vector<double>& A = acc[size_t(chunk)];
    A.assign(size_t(nacc), 0.0);
    double* aw = A.data();
    double* ab = aw + naw;
    double* arw = ab + nb;
    double* arb = arw + narw;
    std::vector<word> xp(size_t(CP * NR * P.ldi), word(0)), gyp(size_t(CP * ldz), word(0)),
        gzp(size_t(CP * ldg), word(0)), gy_t(size_t(npmax * Mp), word(0)), gz_t(size_t(npmax * Mp), word(0));
    std::vector<bf16> xr(size_t(C * NR * P.ldi + 2), bf16(0)), ar(size_t(C * ldz + 2), bf16(0));
    std::vector<float> z(size_t(Cp * ldz)), gz(size_t(Cp * ldz)), gxr(size_t(Cp * ldx)), gxs(size_t(C * N));
    int rows[9];
    int64_t src[9];
    const int zero_row[1] = {0};
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t g = bg % G;
      const bf16* xg = x + bg * C * N;
      const bf16* gyg = gy + bg * C * N;
      std::fill(gxs.begin(), gxs.end(), 0.0f);
      for (int64_t row = 0; row < P.rows_total; ++row)
        for (int64_t tile = 0; tile < P.tiles_per_row; ++tile) {
          const int64_t w0 = tile * P.TW, L = std::min(P.TW, P.Wd - w0), Lp = round_up(L, PB), np = (L + 1) / 2;
          // gy of the tile: in channel pairs (for P_d^T gy) and in position pairs per channel (for grad P).
          for (int64_t cp = 0; cp < CP; ++cp) {
            const bf16* s0 = gyg + 2 * cp * N + row * P.Wd + w0;
            const bf16* s1 = 2 * cp + 1 < C ? s0 + N : nullptr;
            word* dst = gyp.data() + cp * ldz;
            Kern::pairs_bf16(s0, s1, dst, L);
            std::fill(dst + L, dst + Lp, word(0));
          }
          for (int64_t o = 0; o < C; ++o) {
            const bf16* s = gyg + o * N + row * P.Wd + w0;
            double t = 0;
            for (int64_t j = 0; j < L; ++j) t += double(to_f32(s[j]));
            arb[g * C + o] += t;
            Kern::column_pairs_bf16(s, L, gy_t.data() + o, Mp);
          }
          for (int64_t di = 0; di < D; ++di) {
            const int64_t d = args.dilation[di], pad = ssdc_row_pad(d, P.Wd);
            const int kw_lo = pad > 0 ? 0 : 1, kw_hi = pad > 0 ? 3 : 2;
            const int nrows = P.source_rows(row, d, rows, src);
            P.gather(xp.data(), xr.data(), xg, rows, nrows, src, w0, Lp, pad);
            conv_dilation(P, z.data(), xp.data(), rows, nrows, wf.data() + g * Cp * CP * K, b + g * C, Lp, pad);
            // ga = P_d^T gy; gz = LeakyReLU'(z) ga (0 past the tile); a = LeakyReLU(z) as bf16 rows.
            std::fill(gz.begin(), gz.end(), 0.0f);
            Kern::conv_tile(gz.data(), ldz, Lp, Cp, gyp.data(), CP, 1, ldz, zero_row, 1,
                            pt.data() + (g * D + di) * Cp * CP, 1, 0, 1, 0, 0);
            for (int64_t co = 0; co < C; ++co) {  // rows past C stay 0 (zero weights)
              const float* zr = z.data() + co * ldz;
              ab[g * C + co] += Kern::leaky_backward_row(zr, gz.data() + co * ldz, L, Lp, P.slope);
              Kern::row_bf16(zr, ar.data() + co * ldz, Lp, true, P.slope);
            }
            // grad P_d[o][co] += sum_j gy[o][j] a[co][j]  (vectors along o; arw is [g][d][co][o]).
            for (int64_t co0 = 0; co0 < C; co0 += 4) {
              const int nk = int(std::min<int64_t>(4, C - co0));
              const bf16* br[4];
              double* orow[4];
              for (int k = 0; k < nk; ++k) {
                br[k] = ar.data() + (co0 + k) * ldz;
                orow[k] = arw + ((g * D + di) * C + co0 + k) * Mp;
              }
              if (nk == 4)
                Kern::outer<4>(gy_t.data(), Mp, Mp / VW, br, np, orow);
              else
                for (int k = 0; k < nk; ++k) Kern::outer<1>(gy_t.data(), Mp, Mp / VW, br + k, np, orow + k);
            }
            // grad W[co][ci][r*3 + kw] += sum_j gz[co][j] x[ci][r][j + kw pad]  (aw is [g][ci][k][co]).
            for (int64_t co = 0; co < C; ++co) Kern::column_pairs_f32(gz.data() + co * ldz, L, gz_t.data() + co, Mp);
            {
              const bf16* br[4];
              double* orow[4];
              int nk = 0;
              auto flush = [&] {
                if (nk == 4)
                  Kern::outer<4>(gz_t.data(), Mp, Mp / VW, br, np, orow);
                else
                  for (int k = 0; k < nk; ++k) Kern::outer<1>(gz_t.data(), Mp, Mp / VW, br + k, np, orow + k);
                nk = 0;
              };
              for (int64_t ci = 0; ci < C; ++ci)
                for (int rr = 0; rr < nrows; ++rr) {
                  const int r = rows[rr];
                  const bf16* xrow = xr.data() + (ci * NR + r) * P.ldi;
                  for (int kw = kw_lo; kw < kw_hi; ++kw) {
                    br[nk] = xrow + kw * pad;
                    orow[nk] = aw + ((g * C + ci) * K + r * 3 + kw) * Mp;
                    if (++nk == 4) flush();
                  }
                }
              if (nk) flush();
            }
            // grad x: for each source row, gxr[ci][t - t_lo] = sum_kw sum_co W[co][ci][r][kw] gz[co][t - kw pad].
            const int64_t lead = 2 * pad;
            for (int64_t cp = 0; cp < CP; ++cp) {
              word* dst = gzp.data() + cp * ldg;
              const float* g0 = gz.data() + 2 * cp * ldz;
              const float* g1 = g0 + ldz;  // row 2cp + 1 < Cp always (Cp is a multiple of COB, even)
              std::fill(dst, dst + lead, word(0));
              Kern::pairs_f32(g0, g1, dst + lead, Lp, false, 0.0f);
              std::fill(dst + lead + Lp, dst + ldg, word(0));
            }
            const int64_t t_lo = std::max<int64_t>(0, pad - w0), t_hi = std::min<int64_t>(L + 2 * pad, P.Wd - w0 + pad);
            const int64_t n = t_hi - t_lo, npos = round_up(n, PB);
            for (int rr = 0; rr < nrows; ++rr) {
              const int r = rows[rr];
              std::fill(gxr.begin(), gxr.begin() + Cp * ldx, 0.0f);
              Kern::conv_tile(gxr.data(), ldx, npos, Cp, gzp.data(), CP, 1, ldg, zero_row, 1,
                              wt.data() + (g * NR + r) * Cp * CP * 3, 3, kw_lo, kw_hi, pad, t_lo);
              for (int64_t ci = 0; ci < C; ++ci) {
                float* dst = gxs.data() + ci * N + src[r] * P.Wd + (w0 - pad + t_lo);
                const float* s = gxr.data() + ci * ldx;
                for (int64_t t = 0; t < n; ++t) dst[t] += s[t];
              }
            }
          }
        }
      Kern::row_bf16(gxs.data(), gx + bg * C * N, C * N, false, 0.0f);
    }
  });
  std::vector<double> total(size_t(nacc), 0.0);
  for (const auto& A : acc)
    for (int64_t i = 0; i < nacc; ++i) total[size_t(i)] += A[size_t(i)];
  const double* tw = total.data();
  const double* tb = tw + naw;
  const double* trw = tb + nb;
  const double* trb = trw + narw;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t co = 0; co < C; ++co) {
      for (int64_t ci = 0; ci < C; ++ci)
        for (int64_t k = 0; k < K; ++k)
          gw[((g * C + co) * C + ci) * K + k] = to_bf16(float(tw[((g * C + ci) * K + k) * Mp + co]));
      for (int64_t d = 0; d < D; ++d)
        for (int64_t c2 = 0; c2 < C; ++c2)
          grw[(g * C + co) * D * C + d * C + c2] = to_bf16(float(trw[((g * D + d) * C + c2) * Mp + co]));
    }
  for (int64_t i = 0; i < nb; ++i) gb[i] = to_bf16(float(tb[i]));
  for (int64_t i = 0; i < nb; ++i) grb[i] = to_bf16(float(trb[i]));
}

}  // namespace

void forward(const SsdcArgs& a, const void* x, const void* w, const void* b, const void* rw, const void* rb, void* y,
             int threads) {
  forward(a, static_cast<const bf16*>(x), static_cast<const bf16*>(w), static_cast<const bf16*>(b),
          static_cast<const bf16*>(rw), static_cast<const bf16*>(rb), static_cast<bf16*>(y), threads);
}

void backward(const SsdcArgs& a, const void* x, const void* w, const void* b, const void* rw, const void* gy,
              void* gx, void* gw, void* gb, void* grw, void* grb, int threads) {
  backward(a, static_cast<const bf16*>(x), static_cast<const bf16*>(w), static_cast<const bf16*>(b),
           static_cast<const bf16*>(rw), static_cast<const bf16*>(gy), static_cast<bf16*>(gx), static_cast<bf16*>(gw),
           static_cast<bf16*>(gb), static_cast<bf16*>(grw), static_cast<bf16*>(grb), threads);
}

}  // namespace ssdc_bf16
}  // namespace rdc
#endif
