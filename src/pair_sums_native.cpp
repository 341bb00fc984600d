// Native CPU loops for the Gaussian pair sums of src/pair_sums.py: the same quantities as its tiled blocks
// (see that file for the formulas), one pass per pair of components. The D-long inner loops vectorise,
// nothing of size pairs x D is stored, and Σ_d log(v_a + v_b) is taken as the log of a product in double,
// restarted every `chunk` dimensions (the caller picks chunk so that no partial product leaves double's
// range), so a pair costs one log instead of D.
//
// Plain C ABI on raw row-major arrays ([rows, D], D contiguous), no torch headers: it builds in about a
// second with the system compiler (src/pair_sums.py loads it with ctypes and falls back to its own tiles
// when no compiler is there). Outputs marked "accumulated" must be zeroed by the caller.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// Σ_d [log(v_a + v_b) + (m_a − m_b)² / (v_a + v_b)]; fills inv[d] = 1/(v_a+v_b), r[d] = (m_a−m_b)/(v_a+v_b).
template <typename T>
inline double pair_score(const T* __restrict ma, const T* __restrict va, const T* __restrict mb,
                         const T* __restrict vb, int64_t D, int64_t chunk, T* __restrict inv, T* __restrict r) {
  double logs = 0.0, quad = 0.0;
  for (int64_t c0 = 0; c0 < D; c0 += chunk) {
    const int64_t c1 = c0 + chunk < D ? c0 + chunk : D;
    double prod = 1.0, q = 0.0;
#pragma omp simd reduction(* : prod) reduction(+ : q)
    for (int64_t d = c0; d < c1; ++d) {
      const T s = va[d] + vb[d];
      const T iv = T(1) / s;
      const T diff = ma[d] - mb[d];
      const T rr = diff * iv;
      inv[d] = iv;
      r[d] = rr;
      q += static_cast<double>(rr * diff);
      prod *= static_cast<double>(s);
    }
    logs += std::log(prod);
    quad += q;
  }
  return logs + quad;
}

// One pair's gradient terms with weight w: a_r += w r, a_t += w (inv − r²), b_r += sign·w r, b_t += w (inv − r²).
template <typename T>
inline void add_pair_grads(T w, T sign, const T* __restrict inv, const T* __restrict r, int64_t D,
                           T* __restrict a_r, T* __restrict a_t, T* __restrict b_r, T* __restrict b_t) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const T wr = w * r[d];
    const T wt = w * (inv[d] - r[d] * r[d]);
    a_r[d] += wr;
    a_t[d] += wt;
    b_r[d] += sign * wr;
    b_t[d] += wt;
  }
}

// scores[a, b] = pair_score(x_a, xv_a, m_b, v_b) for A rows and K components.
template <typename T>
void row_scores(const T* x, const T* xv, const T* m, const T* v, int64_t A, int64_t K, int64_t D, int64_t chunk,
                T* scores) {
  std::vector<T> inv(D), r(D);
  for (int64_t a = 0; a < A; ++a)
    for (int64_t b = 0; b < K; ++b)
      scores[a * K + b] = static_cast<T>(pair_score(x + a * D, xv + a * D, m + b * D, v + b * D, D, chunk,
                                                    inv.data(), r.data()));
}

// Backward of row_scores under weights w [A, K]: per row Σ_b w r and Σ_b w (inv − r²) (ra, ta [A, D]), per
// component Σ_a of the same (rb, tb [K, D]); all four accumulated.
template <typename T>
void row_grads(const T* x, const T* xv, const T* m, const T* v, const T* w, int64_t A, int64_t K, int64_t D,
               int64_t chunk, T* ra, T* ta, T* rb, T* tb) {
  std::vector<T> inv(D), r(D);
  for (int64_t a = 0; a < A; ++a)
    for (int64_t b = 0; b < K; ++b) {
      const T wab = w[a * K + b];
      if (wab == T(0)) continue;
      pair_score(x + a * D, xv + a * D, m + b * D, v + b * D, D, chunk, inv.data(), r.data());
      add_pair_grads(wab, T(1), inv.data(), r.data(), D, ra + a * D, ta + a * D, rb + b * D, tb + b * D);
    }
}

// The symmetric pair sum Σ_{a<=b} f_ab exp(lw_a + lw_b − ½ pair_score_ab + shift), f = 1 on the diagonal and
// 2 off it, returned. With need_grad, accumulated: g_lw [K] the summed weight of the pairs touching each
// component, g_r [K, D] Σ ±w r (+ on the a side, − on the b side: the sign of m_a − m_b), g_t [K, D] Σ w (inv − r²).
template <typename T>
double pairs(const T* m, const T* v, const T* lw, int64_t K, int64_t D, double shift, int need_grad,
             int64_t chunk, T* g_lw, T* g_r, T* g_t) {
  std::vector<T> inv(D), r(D), row_r(D), row_t(D);
  const double tiny = std::pow(static_cast<double>(std::numeric_limits<T>::min()), 0.8);
  double total = 0.0;
  for (int64_t a = 0; a < K; ++a) {
    T row_lw = T(0);
    std::fill(row_r.begin(), row_r.end(), T(0));
    std::fill(row_t.begin(), row_t.end(), T(0));
    for (int64_t b = a; b < K; ++b) {
      const double score = pair_score(m + a * D, v + a * D, m + b * D, v + b * D, D, chunk, inv.data(), r.data());
      double w = std::exp(static_cast<double>(lw[a]) + static_cast<double>(lw[b]) - 0.5 * score + shift);
      if (b != a) w *= 2.0;
      if (w < tiny) continue;  // changes no sum; as a float it could be subnormal, which is slow
      total += w;
      if (!need_grad) continue;
      const T wt = static_cast<T>(w);
      row_lw += wt;
      g_lw[b] += wt;
      add_pair_grads(wt, T(-1), inv.data(), r.data(), D, row_r.data(), row_t.data(), g_r + b * D, g_t + b * D);
    }
    if (!need_grad) continue;
    g_lw[a] += row_lw;
    for (int64_t d = 0; d < D; ++d) {
      g_r[a * D + d] += row_r[d];
      g_t[a * D + d] += row_t[d];
    }
  }
  return total;
}

}  // namespace

extern "C" {

#define CSRAE_PAIR_SUMS(T, S)                                                                                    \
  void row_scores_##S(const T* x, const T* xv, const T* m, const T* v, int64_t A, int64_t K, int64_t D,        \
                      int64_t chunk, T* scores) {                                                              \
    row_scores<T>(x, xv, m, v, A, K, D, chunk, scores);                                                        \
  }                                                                                                            \
  void row_grads_##S(const T* x, const T* xv, const T* m, const T* v, const T* w, int64_t A, int64_t K,        \
                     int64_t D, int64_t chunk, T* ra, T* ta, T* rb, T* tb) {                                   \
    row_grads<T>(x, xv, m, v, w, A, K, D, chunk, ra, ta, rb, tb);                                              \
  }                                                                                                            \
  double pairs_##S(const T* m, const T* v, const T* lw, int64_t K, int64_t D, double shift, int need_grad,    \
                   int64_t chunk, T* g_lw, T* g_r, T* g_t) {                                                   \
    return pairs<T>(m, v, lw, K, D, shift, need_grad, chunk, g_lw, g_r, g_t);                                  \
  }

CSRAE_PAIR_SUMS(float, f32)
CSRAE_PAIR_SUMS(double, f64)

}  // extern "C"
