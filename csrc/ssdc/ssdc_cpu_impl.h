// CPU sSDC forward and backward, included once per instruction-set variant by ssdc_cpu*.cpp, each
// of which defines, before including this file:
//   RDC_SSDC_NS  namespace of the variant (its functions must not be merged with another's)
//   RDC_SSDC_VB  bytes per SIMD vector (GCC vector extensions; the compiler picks instructions)
//   RDC_SSDC_COB output channels per register block
// and optionally RDC_SSDC_TARGET_PRAGMA, a _Pragma("GCC target(...)") that compiles only the
// vector micro-kernels (struct Kern, internal linkage) for a wider instruction set. The rest of the
// file, including every standard-library template it instantiates, stays at the baseline ISA:
// weak symbols shared with other files must never carry AVX instructions.
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
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/parallel.h"
#include "ssdc.h"

#if !defined(RDC_SSDC_NS) || !defined(RDC_SSDC_VB) || !defined(RDC_SSDC_COB)
#error "define RDC_SSDC_NS, RDC_SSDC_VB and RDC_SSDC_COB before including ssdc_cpu_impl.h"
#endif

namespace rdc {
namespace RDC_SSDC_NS {
namespace {

constexpr int COB = RDC_SSDC_COB;  // output channels per register block
constexpr int NV = 2;              // vectors of positions per register block
constexpr int64_t kTileWidth = 128;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

#ifdef RDC_SSDC_TARGET_PRAGMA
#pragma GCC push_options
RDC_SSDC_TARGET_PRAGMA
#endif

template <typename T>
struct Kern {
  typedef T V __attribute__((vector_size(RDC_SSDC_VB)));
  static constexpr int VW = RDC_SSDC_VB / int(sizeof(T));  // lanes
  static constexpr int PB = NV * VW;                       // positions per register block

  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static V splat(T s) {
    V v = {};
    return v + s;
  }
  static double hsum(const V& v) {
    double s = 0;
    for (int l = 0; l < VW; ++l) s += double(v[l]);
    return s;
  }

  // out[co][j] += sum_ci sum_{r in rows} sum_{kw_lo <= kw < kw_hi}
  //                 wp[cob][ci][r][kw][i] * in[(ci * NR + r) * ldi + in_off + j + kw * pad]
  // for co = cob * COB + i < Cop (a multiple of COB) and 0 <= j < npos (a multiple of PB).
  static void conv_tile(T* out, int64_t ldo, int64_t npos, int64_t Cop, const T* in, int64_t CI, int NR,
                        int64_t ldi, const int* rows, int nrows, const T* wp, int kw_lo, int kw_hi,
                        int64_t pad, int64_t in_off) {
    for (int64_t cob = 0; cob < Cop / COB; ++cob) {
      const T* wb = wp + cob * CI * NR * 3 * COB;
      T* ob = out + cob * COB * ldo;
      for (int64_t j0 = 0; j0 < npos; j0 += PB) {
        V acc[COB][NV];
        for (int i = 0; i < COB; ++i)
          for (int v = 0; v < NV; ++v) acc[i][v] = load(ob + i * ldo + j0 + v * VW);
        for (int64_t ci = 0; ci < CI; ++ci) {
          for (int rr = 0; rr < nrows; ++rr) {
            const int r = rows[rr];
            const T* src = in + (ci * NR + r) * ldi + in_off + j0;
            const T* w = wb + (ci * NR + r) * 3 * COB;
            for (int kw = kw_lo; kw < kw_hi; ++kw) {
              const T* s = src + kw * pad;
              V xv[NV];
              for (int v = 0; v < NV; ++v) xv[v] = load(s + v * VW);
              const T* wk = w + kw * COB;
              for (int i = 0; i < COB; ++i) {
                const V wv = splat(wk[i]);
                for (int v = 0; v < NV; ++v) acc[i][v] += wv * xv[v];
              }
            }
          }
        }
        for (int i = 0; i < COB; ++i)
          for (int v = 0; v < NV; ++v) store(ob + i * ldo + j0 + v * VW, acc[i][v]);
      }
    }
  }

  // g[j] = LeakyReLU'(z[j]) g[j] for j < n, 0 for n <= j < np (np a multiple of VW); returns the sum.
  static double leaky_backward_row(const T* z, T* g, int64_t n, int64_t np, T slope) {
    V sum = {};
    for (int64_t j = 0; j < np; j += VW) {
      const V zv = load(z + j);
      V gv = load(g + j);
      for (int l = 0; l < VW; ++l) gv[l] = j + l < n ? (zv[l] > T(0) ? gv[l] : gv[l] * slope) : T(0);
      store(g + j, gv);
      sum += gv;
    }
    return hsum(sum);
  }

  // out[k][m] += sum_{j < n} at[j * lda + m] * b[k][j] for k < NB, m < Mv * VW (Mv a multiple of
  // 4): gradient accumulation with vectors along m (a transposed tile) and positions j as the
  // reduction, so nothing is summed horizontally; out rows are float64.
  template <int NB>
  static void outer(const T* at, int64_t lda, int64_t Mv, const T* const* b, int64_t n, double* const* out) {
    constexpr int MB = 4;
    for (int64_t mv0 = 0; mv0 < Mv; mv0 += MB) {
      V acc[MB][NB];
      for (int i = 0; i < MB; ++i)
        for (int k = 0; k < NB; ++k) acc[i][k] = V{};
      for (int64_t j = 0; j < n; ++j) {
        V av[MB];
        for (int i = 0; i < MB; ++i) av[i] = load(at + j * lda + (mv0 + i) * VW);
        for (int k = 0; k < NB; ++k) {
          const V bv = splat(b[k][j]);
          for (int i = 0; i < MB; ++i) acc[i][k] += av[i] * bv;
        }
      }
      for (int k = 0; k < NB; ++k)
        for (int i = 0; i < MB; ++i) {
          double* o = out[k] + (mv0 + i) * VW;
          for (int l = 0; l < VW; ++l) o[l] += double(acc[i][k][l]);
        }
    }
  }
};

#ifdef RDC_SSDC_TARGET_PRAGMA
#pragma GCC pop_options
#endif

// Everything a tile needs that does not change between tiles.
template <typename T>
struct Plan {
  const SsdcArgs& a;
  int64_t B, G, C, N, Wd, rows_total, D, Cp, TW, tiles_per_row, padmax, Lpmax, ldi, ldz;
  int NR, K;
  T slope;

  explicit Plan(const SsdcArgs& args) : a(args) {
    B = a.batch, G = a.groups, C = a.channels, D = a.ndil;
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
    Lpmax = round_up(std::max<int64_t>(TW, 1), Kern<T>::PB);
    ldi = Lpmax + 2 * padmax + Kern<T>::PB;
    ldz = Lpmax;
    slope = T(a.slope);
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

  // xb[ci][r][j] = x[ci, src[r], w0 - pad + j] (zero outside the row) for j < Lp + 2 pad.
  void gather(T* xb, const T* xg, const int* rows, int nrows, const int64_t* src, int64_t w0, int64_t Lp,
              int64_t pad) const {
    const int64_t len = Lp + 2 * pad;
    const int64_t lo = std::max<int64_t>(0, pad - w0), hi = std::min<int64_t>(len, Wd - w0 + pad);
    for (int64_t ci = 0; ci < C; ++ci)
      for (int rr = 0; rr < nrows; ++rr) {
        const int r = rows[rr];
        T* dst = xb + (ci * NR + r) * ldi;
        const T* s = xg + ci * N + src[r] * Wd + (w0 - pad);
        std::fill(dst, dst + lo, T(0));
        if (hi > lo) std::memcpy(dst + lo, s + lo, sizeof(T) * (hi - lo));
        std::fill(dst + std::max(lo, hi), dst + len, T(0));
      }
  }

  // Forward weights: wf[g][cob][ci][r][kw][i] = W[g*C + cob*COB + i][ci][r*3 + kw] (0 for padded rows).
  std::vector<T> pack_conv(const T* w) const {
    std::vector<T> p(size_t(G * Cp * C * K), T(0));
    for (int64_t g = 0; g < G; ++g)
      for (int64_t co = 0; co < C; ++co)
        for (int64_t ci = 0; ci < C; ++ci)
          for (int k = 0; k < K; ++k)
            p[(((g * (Cp / COB) + co / COB) * C + ci) * K + k) * COB + co % COB] =
                w[((g * C + co) * C + ci) * K + k];
    return p;
  }
  // 1x1 weights as a one-tap conv over Cp input rows: [g][d][cob][cin][3][COB] (only tap 0 used).
  // transpose = false: out channel o, in channel co: rw[g*C + o][d*C + co]; true: swapped.
  std::vector<T> pack_reduce(const T* rw, bool transpose) const {
    std::vector<T> p(size_t(G * D * Cp * Cp * 3), T(0));
    for (int64_t g = 0; g < G; ++g)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t o = 0; o < C; ++o)
          for (int64_t co = 0; co < C; ++co) {
            const T v = rw[(g * C + o) * D * C + d * C + co];
            const int64_t out = transpose ? co : o, in = transpose ? o : co;
            p[((((g * D + d) * (Cp / COB) + out / COB) * Cp + in) * 3) * COB + out % COB] = v;
          }
    return p;
  }
  // grad-x weights per outer tap r: [g][r][cib][co][kw'][i] = W[g*C + co][cib*COB + i][r*3 + 2 - kw'].
  std::vector<T> pack_transposed(const T* w) const {
    std::vector<T> p(size_t(G * NR * Cp * Cp * 3), T(0));
    for (int64_t g = 0; g < G; ++g)
      for (int r = 0; r < NR; ++r)
        for (int64_t co = 0; co < C; ++co)
          for (int64_t ci = 0; ci < C; ++ci)
            for (int kw = 0; kw < 3; ++kw)
              p[((((g * NR + r) * (Cp / COB) + ci / COB) * Cp + co) * 3 + kw) * COB + ci % COB] =
                  w[((g * C + co) * C + ci) * K + r * 3 + (2 - kw)];
    return p;
  }
};

template <typename T>
void forward(const SsdcArgs& args, const T* x, const T* w, const T* b, const T* rw, const T* rb, T* y,
             int threads) {
  using KT = Kern<T>;
  const Plan<T> P(args);
  if (P.B == 0 || P.G == 0 || P.C == 0 || P.N == 0) return;
  const std::vector<T> wf = P.pack_conv(w), pf = P.pack_reduce(rw, false);
  const int64_t units = P.B * P.G * P.rows_total * P.tiles_per_row;
  const int64_t Cp = P.Cp, C = P.C, N = P.N, ldz = P.ldz;
  parallel_for(units, threads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xb(size_t(C * P.NR * P.ldi), T(0)), z(size_t(Cp * ldz)), yt(size_t(Cp * ldz));
    int rows[9];
    int64_t src[9];
    const int zero_row[1] = {0};
    for (int64_t u = begin; u < end; ++u) {
      const int64_t tile = u % P.tiles_per_row, rest = u / P.tiles_per_row;
      const int64_t row = rest % P.rows_total, bg = rest / P.rows_total, g = bg % P.G;
      const int64_t w0 = tile * P.TW, L = std::min(P.TW, P.Wd - w0), Lp = round_up(L, KT::PB);
      const T* xg = x + bg * C * N;
      for (int64_t co = 0; co < Cp; ++co)
        std::fill(yt.data() + co * ldz, yt.data() + co * ldz + Lp, co < C ? rb[g * C + co] : T(0));
      for (int64_t di = 0; di < P.D; ++di) {
        const int64_t d = args.dilation[di], pad = ssdc_row_pad(d, P.Wd);
        const int nrows = P.source_rows(row, d, rows, src);
        P.gather(xb.data(), xg, rows, nrows, src, w0, Lp, pad);
        for (int64_t co = 0; co < Cp; ++co)
          std::fill(z.data() + co * ldz, z.data() + co * ldz + Lp, co < C ? b[g * C + co] : T(0));
        KT::conv_tile(z.data(), ldz, Lp, Cp, xb.data(), C, P.NR, P.ldi, rows, nrows,
                      wf.data() + g * Cp * C * P.K, pad > 0 ? 0 : 1, pad > 0 ? 3 : 2, pad, 0);
        for (int64_t co = 0; co < Cp; ++co) {
          T* zr = z.data() + co * ldz;
          for (int64_t j = 0; j < Lp; ++j) zr[j] = ssdc_leaky(zr[j], P.slope);
        }
        KT::conv_tile(yt.data(), ldz, Lp, Cp, z.data(), Cp, 1, ldz, zero_row, 1,
                      pf.data() + (g * P.D + di) * Cp * Cp * 3, 0, 1, 0, 0);
      }
      T* yg = y + bg * C * N + row * P.Wd + w0;
      for (int64_t co = 0; co < C; ++co) std::memcpy(yg + co * N, yt.data() + co * ldz, sizeof(T) * L);
    }
  });
}

template <typename T>
void backward(const SsdcArgs& args, const T* x, const T* w, const T* b, const T* rw, const T* gy, T* gx,
              T* gw, T* gb, T* grw, T* grb, int threads) {
  using KT = Kern<T>;
  const Plan<T> P(args);
  const int64_t G = P.G, C = P.C, N = P.N, D = P.D, K = P.K, NR = P.NR, Cp = P.Cp, ldz = P.ldz;
  const int64_t nw = G * C * C * K, nb = G * C, nrw = G * C * D * C;
  // Gradient accumulators keep the reduced-over channel contiguous (padded to Mp) so that the
  // micro-kernel vectorises along it: aw [g][ci][k][co], arw [g][d][co][o].
  const int64_t Mp = round_up(std::max<int64_t>(C, 1), 4 * Kern<T>::VW);
  const int64_t naw = G * C * K * Mp, narw = G * D * C * Mp;
  std::fill(gx, gx + P.B * G * C * N, T(0));
  if (P.B == 0 || G == 0 || C == 0 || N == 0) {
    std::fill(gw, gw + nw, T(0));
    std::fill(gb, gb + nb, T(0));
    std::fill(grw, grw + nrw, T(0));
    std::fill(grb, grb + nb, T(0));
    return;
  }
  const std::vector<T> wf = P.pack_conv(w), pt = P.pack_reduce(rw, true), wt = P.pack_transposed(w);
  const int64_t units = P.B * G;
  const int64_t chunks = parallel_chunks(units, threads, 1);
  // Per-chunk float64 accumulators: [aw | gb | arw | grb].
  const int64_t nacc = naw + nb + narw + nb;
  std::vector<std::vector<double>> acc(static_cast<size_t>(chunks));
  const int64_t ldg = P.Lpmax + 4 * P.padmax + 2 * KT::PB;
  const int64_t ldx = round_up(P.Lpmax + 2 * P.padmax, KT::PB);
  parallel_for_chunks(units, threads, 1, [&](int64_t chunk, int64_t begin, int64_t end) {
    std::vector<double>& A = acc[size_t(chunk)];
    A.assign(size_t(nacc), 0.0);
    double* aw = A.data();
    double* ab = aw + naw;
    double* arw = ab + nb;
    double* arb = arw + narw;
    std::vector<T> xb(size_t(C * NR * P.ldi), T(0)), z(size_t(Cp * ldz)), gyt(size_t(Cp * ldz)),
        gz(size_t(Cp * ldz)), gzp(size_t(Cp * ldg), T(0)), gxr(size_t(Cp * ldx)),
        gyt_t(size_t(P.Lpmax * Mp), T(0)), gz_t(size_t(P.Lpmax * Mp), T(0));
    int rows[9];
    int64_t src[9];
    const int zero_row[1] = {0};
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t g = bg % G;
      const T* xg = x + bg * C * N;
      const T* gyg = gy + bg * C * N;
      T* gxg = gx + bg * C * N;
      for (int64_t row = 0; row < P.rows_total; ++row)
        for (int64_t tile = 0; tile < P.tiles_per_row; ++tile) {
          const int64_t w0 = tile * P.TW, L = std::min(P.TW, P.Wd - w0), Lp = round_up(L, KT::PB);
          std::fill(gyt.begin(), gyt.end(), T(0));
          for (int64_t co = 0; co < C; ++co) {
            const T* s = gyg + co * N + row * P.Wd + w0;
            std::memcpy(gyt.data() + co * ldz, s, sizeof(T) * L);
            double t = 0;
            for (int64_t j = 0; j < L; ++j) {
              t += double(s[j]);
              gyt_t[j * Mp + co] = s[j];
            }
            arb[g * C + co] += t;
          }
          for (int64_t di = 0; di < D; ++di) {
            const int64_t d = args.dilation[di], pad = ssdc_row_pad(d, P.Wd);
            const int kw_lo = pad > 0 ? 0 : 1, kw_hi = pad > 0 ? 3 : 2;
            const int nrows = P.source_rows(row, d, rows, src);
            P.gather(xb.data(), xg, rows, nrows, src, w0, Lp, pad);
            // Recompute z_d = conv_d(x) + b.
            for (int64_t co = 0; co < Cp; ++co)
              std::fill(z.data() + co * ldz, z.data() + co * ldz + Lp, co < C ? b[g * C + co] : T(0));
            KT::conv_tile(z.data(), ldz, Lp, Cp, xb.data(), C, P.NR, P.ldi, rows, nrows,
                          wf.data() + g * Cp * C * K, kw_lo, kw_hi, pad, 0);
            // ga = P_d^T gy; gz = LeakyReLU'(z) ga (0 past the tile); z <- a = LeakyReLU(z).
            std::fill(gz.begin(), gz.end(), T(0));
            KT::conv_tile(gz.data(), ldz, Lp, Cp, gyt.data(), Cp, 1, ldz, zero_row, 1,
                          pt.data() + (g * D + di) * Cp * Cp * 3, 0, 1, 0, 0);
            for (int64_t co = 0; co < Cp; ++co) {  // rows past C are 0 (zero weights)
              T* zr = z.data() + co * ldz;
              const double s = KT::leaky_backward_row(zr, gz.data() + co * ldz, L, Lp, P.slope);
              for (int64_t j = 0; j < Lp; ++j) zr[j] = ssdc_leaky(zr[j], P.slope);
              if (co < C) ab[g * C + co] += s;
            }
            // grad P_d[o][co] += sum_j gy[o][j] a[co][j]  (vectors along o: arw is [g][d][co][o]).
            for (int64_t co0 = 0; co0 < C; co0 += 4) {
              const int nb = int(std::min<int64_t>(4, C - co0));
              const T* br[4];
              double* orow[4];
              for (int k = 0; k < nb; ++k) {
                br[k] = z.data() + (co0 + k) * ldz;
                orow[k] = arw + ((g * D + di) * C + co0 + k) * Mp;
              }
              if (nb == 4)
                KT::template outer<4>(gyt_t.data(), Mp, Mp / KT::VW, br, L, orow);
              else
                for (int k = 0; k < nb; ++k) KT::template outer<1>(gyt_t.data(), Mp, Mp / KT::VW, br + k, L, orow + k);
            }
            // grad W[co][ci][r*3 + kw] += sum_j gz[co][j] xb[ci][r][j + kw pad]  (aw is [g][ci][k][co]).
            for (int64_t co = 0; co < C; ++co) {
              const T* gr = gz.data() + co * ldz;
              for (int64_t j = 0; j < L; ++j) gz_t[j * Mp + co] = gr[j];
            }
            {
              const T* br[4];
              double* orow[4];
              int nb = 0;
              auto flush = [&] {
                if (nb == 4)
                  KT::template outer<4>(gz_t.data(), Mp, Mp / KT::VW, br, L, orow);
                else
                  for (int k = 0; k < nb; ++k) KT::template outer<1>(gz_t.data(), Mp, Mp / KT::VW, br + k, L, orow + k);
                nb = 0;
              };
              for (int64_t ci = 0; ci < C; ++ci)
                for (int rr = 0; rr < nrows; ++rr) {
                  const int r = rows[rr];
                  const T* xr = xb.data() + (ci * NR + r) * P.ldi;
                  for (int kw = kw_lo; kw < kw_hi; ++kw) {
                    br[nb] = xr + kw * pad;
                    orow[nb] = aw + ((g * C + ci) * K + r * 3 + kw) * Mp;
                    if (++nb == 4) flush();
                  }
                }
              if (nb) flush();
            }
            // grad x: for each source row, gxr[ci][t - t_lo] = sum_kw sum_co W[co][ci][r][kw] gz[co][t - kw pad]
            // for the columns t (x column w0 - pad + t) inside the image.
            const int64_t lead = 2 * pad;
            for (int64_t co = 0; co < Cp; ++co) {
              T* dst = gzp.data() + co * ldg;
              std::fill(dst, dst + lead, T(0));
              std::memcpy(dst + lead, gz.data() + co * ldz, sizeof(T) * Lp);
              std::fill(dst + lead + Lp, dst + ldg, T(0));
            }
            const int64_t t_lo = std::max<int64_t>(0, pad - w0), t_hi = std::min<int64_t>(L + 2 * pad, P.Wd - w0 + pad);
            const int64_t n = t_hi - t_lo, npos = round_up(n, KT::PB);
            for (int rr = 0; rr < nrows; ++rr) {
              const int r = rows[rr];
              std::fill(gxr.begin(), gxr.begin() + Cp * ldx, T(0));
              KT::conv_tile(gxr.data(), ldx, npos, Cp, gzp.data(), Cp, 1, ldg, zero_row, 1,
                            wt.data() + (g * NR + r) * Cp * Cp * 3, kw_lo, kw_hi, pad, t_lo);
              for (int64_t ci = 0; ci < C; ++ci) {
                T* dst = gxg + ci * N + src[r] * P.Wd + (w0 - pad + t_lo);
                const T* s = gxr.data() + ci * ldx;
                for (int64_t t = 0; t < n; ++t) dst[t] += s[t];
              }
            }
          }
        }
    }
  });
  // Reduce the chunks in order (deterministic for a given thread count).
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
        for (int64_t k = 0; k < K; ++k) gw[((g * C + co) * C + ci) * K + k] = T(tw[((g * C + ci) * K + k) * Mp + co]);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t c2 = 0; c2 < C; ++c2) grw[(g * C + co) * D * C + d * C + c2] = T(trw[((g * D + d) * C + c2) * Mp + co]);
    }
  for (int64_t i = 0; i < nb; ++i) gb[i] = T(tb[i]);
  for (int64_t i = 0; i < nb; ++i) grb[i] = T(trb[i]);
}

}  // namespace

void forward(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b, const void* rw,
             const void* rb, void* y, int threads) {
  if (dtype == 0)
    forward<float>(a, static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
                   static_cast<const float*>(rw), static_cast<const float*>(rb), static_cast<float*>(y), threads);
  else
    forward<double>(a, static_cast<const double*>(x), static_cast<const double*>(w), static_cast<const double*>(b),
                    static_cast<const double*>(rw), static_cast<const double*>(rb), static_cast<double*>(y),
                    threads);
}

void backward(const SsdcArgs& a, int dtype, const void* x, const void* w, const void* b, const void* rw,
              const void* gy, void* gx, void* gw, void* gb, void* grw, void* grb, int threads) {
  if (dtype == 0)
    backward<float>(a, static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
                    static_cast<const float*>(rw), static_cast<const float*>(gy), static_cast<float*>(gx),
                    static_cast<float*>(gw), static_cast<float*>(gb), static_cast<float*>(grw),
                    static_cast<float*>(grb), threads);
  else
    backward<double>(a, static_cast<const double*>(x), static_cast<const double*>(w), static_cast<const double*>(b),
                     static_cast<const double*>(rw), static_cast<const double*>(gy), static_cast<double*>(gx),
                     static_cast<double*>(gw), static_cast<double*>(gb), static_cast<double*>(grw),
                     static_cast<double*>(grb), threads);
}

}  // namespace RDC_SSDC_NS
}  // namespace rdc
