// Fully connected layers at small batch (Caffe's InnerProduct with M = batch rows of
// K inputs, N outputs): a few rows against a weight matrix of many megabytes, so the
// time is the reading of the weight, once per pass. Two float32 kernels, each reading
// every weight value from memory once and using it for all M rows while it is in a
// register or in L1:
//
//   linear_small_batch             y[M, N] = x[M, K] . w[N, K]^T   (row-major all)
//     the K columns are taken in chunks that keep the M input rows in L1 (16 KB);
//     blocks of 3 weight rows meet blocks of 4 input rows in 12 running vector sums
//     (FMA), so that 7 loads feed 12 FMAs; the rows of N are shared out between
//     threads.
//   linear_small_batch_input_grad  dx[M, K] = g[M, N] . w[N, K]     (row-major all)
//     the K columns are cut into chunks of 512 (shared out between threads); in a
//     chunk, 8 weight rows at a time (16 KB, in L1) are added into each of the M rows
//     of dx with their 8 coefficients of g held in registers.
//
// Each output is summed by one thread in a fixed order (the same at any thread
// count). AVX2 + FMA where the CPU has them (__builtin_cpu_supports), portable loops
// otherwise; SSDH_CPU_LINEAR=generic forces the portable ones (tests run both).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "cpu_features.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 8;     // input rows held at once (forward) / weight rows (input grad)
constexpr int64_t kColumnChunk = 512;  // input-grad columns per task: 8 weight rows x 2 KB in L1

// AVX2 + FMA when the CPU has them; SSDH_CPU_LINEAR=generic|avx2 picks one.
bool use_avx2() {
  static const bool avx2 = avx2_wanted("SSDH_CPU_LINEAR");
  return avx2;
}

void check(const at::Tensor& a, const at::Tensor& w, int64_t a_cols, const char* op, const char* a_name) {
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2, op, ": expected 2-D ", a_name, " and weight, got ", a.dim(),
              " and ", w.dim(), " dimensions");
  TORCH_CHECK(a.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, op,
              ": expected float32 tensors, got ", a.scalar_type(), " and ", w.scalar_type());
  TORCH_CHECK(a.size(1) == a_cols, op, ": ", a_name, " has ", a.size(1), " columns, the weight takes ",
              a_cols);
}

// ---------------------------------------------------------------- forward

// y[m * ldy + j] (+)= dot(x row m, w row j) over k_len values, for m < MB, j < NB
// (add: onto y): MB x NB running vector sums, so that each step's NB + MB loads
// feed MB x NB FMAs.
template <int MB, int NB>
SSDH_TARGET_AVX2_FMA void dot_block_avx2(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k_len,
                                  float* y, int64_t ldy, bool add, const float* next) {
  __m256 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= k_len; k += 8) {
    __m256 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm256_loadu_ps(w + j * ldw + k);
    if (next != nullptr && (k & 15) == 0) {
      for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(next + j * ldw + k), _MM_HINT_T0);
    }
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
      for (int j = 0; j < NB; ++j) acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int j = 0; j < NB; ++j) {
      const __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc[m][j]), _mm256_extractf128_ps(acc[m][j], 1));
      const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
      float sum = _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
      for (int64_t t = k; t < k_len; ++t) sum += x[m * ldx + t] * w[j * ldw + t];
      float& out = y[m * ldy + j];
      out = add ? out + sum : sum;
    }
  }
}

template <int MB, int NB>
void dot_block_generic(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k_len, float* y,
                       int64_t ldy, bool add, const float*) {
  for (int m = 0; m < MB; ++m) {
    for (int j = 0; j < NB; ++j) {
      float sum = 0.f;
      for (int64_t t = 0; t < k_len; ++t) sum += x[m * ldx + t] * w[j * ldw + t];
      float& out = y[m * ldy + j];
      out = add ? out + sum : sum;
    }
  }
}

// next: the weight rows of the following block (prefetched while this one runs), or null.
using DotBlock = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, bool,
                          const float*);

constexpr int kDotRows = 4;     // input rows per block (forward)
constexpr int kDotWeights = 3;  // weight rows per block: 4 x 3 sums + 3 weights + 1 input = 16 registers

// The block kernel for mb x nb (1..kDotRows x 1..kDotWeights).
template <int... I>
DotBlock pick_dot_block(int64_t mb, int64_t nb, bool avx2, std::integer_sequence<int, I...>) {
  DotBlock out = nullptr;
  ((mb == I / kDotWeights + 1 && nb == I % kDotWeights + 1
        ? (out = avx2 ? &dot_block_avx2<I / kDotWeights + 1, I % kDotWeights + 1>
                      : &dot_block_generic<I / kDotWeights + 1, I % kDotWeights + 1>)
        : out),
   ...);
  return out;
}

// Columns per pass over the rows of w: the M rows of x over that many columns
// (at most 16 KB) stay in L1 while the weight streams past them.
int64_t forward_chunk(int64_t m_rows) {
  return std::max<int64_t>(64, (4096 / std::max<int64_t>(m_rows, 1)) / 8 * 8);
}

at::Tensor linear_small_batch_kernel(const at::Tensor& x_in, const at::Tensor& w_in) {
  check(x_in, w_in, w_in.size(1), "linear_small_batch", "x");
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t m_rows = x.size(0), k_len = x.size(1), n_out = w.size(0);
  at::Tensor y = at::zeros({m_rows, n_out}, x.options());
  if (m_rows == 0 || n_out == 0 || k_len == 0) return y;
  const float* xd = x.const_data_ptr<float>();
  const float* wd = w.const_data_ptr<float>();
  float* yd = y.mutable_data_ptr<float>();
  const bool avx2 = use_avx2();
  const auto blocks = std::make_integer_sequence<int, kDotRows * kDotWeights>();
  const int64_t chunk = forward_chunk(m_rows);
  at::parallel_for(0, (n_out + kDotWeights - 1) / kDotWeights, 4, [&](int64_t b0, int64_t b1) {
    const int64_t n_end = std::min(n_out, b1 * kDotWeights);
    for (int64_t k0 = 0; k0 < k_len; k0 += chunk) {
      const int64_t len = std::min(chunk, k_len - k0);
      for (int64_t n = b0 * kDotWeights; n < n_end; n += kDotWeights) {
        const int64_t nb = std::min<int64_t>(kDotWeights, n_end - n);
        const float* next = n + 2 * kDotWeights <= n_end ? wd + (n + kDotWeights) * k_len + k0 : nullptr;
        for (int64_t m = 0; m < m_rows; m += kDotRows) {
          const int64_t mb = std::min<int64_t>(kDotRows, m_rows - m);
          pick_dot_block(mb, nb, avx2, blocks)(xd + m * k_len + k0, k_len, wd + n * k_len + k0, k_len, len,
                                               yd + m * n_out + n, n_out, k0 > 0, m == 0 ? next : nullptr);
        }
      }
    }
  });
  return y;
}

// ------------------------------------------------------------- input grad

// dx[m, k0:k0+len] += sum over j < rows of g[m, n0 + j] * w[n0 + j, k0:k0+len], for every m.
// next: the first of the next block's weight rows at column k0 (prefetched), or null.
SSDH_TARGET_AVX2_FMA void add_rows_avx2(const float* g, int64_t m_rows, int64_t n_out, int64_t n0, int64_t rows,
                                 const float* w, int64_t k_len, int64_t k0, int64_t len, float* dx,
                                 const float* next) {
  for (int64_t m = 0; m < m_rows; ++m) {
    const float* gm = g + m * n_out + n0;
    float* out = dx + m * k_len + k0;
    if (rows == kRowBlock) {
      __m256 c[kRowBlock];
      const float* wr[kRowBlock];
      for (int j = 0; j < kRowBlock; ++j) {
        c[j] = _mm256_broadcast_ss(gm + j);
        wr[j] = w + (n0 + j) * k_len + k0;
      }
      int64_t k = 0;
      for (; k + 8 <= len; k += 8) {
        if (m == 0 && next != nullptr && (k & 15) == 0) {
          for (int j = 0; j < kRowBlock; ++j) {
            _mm_prefetch(reinterpret_cast<const char*>(next + j * k_len + k), _MM_HINT_T0);
          }
        }
        __m256 even = _mm256_loadu_ps(out + k);
        __m256 odd = _mm256_mul_ps(c[1], _mm256_loadu_ps(wr[1] + k));
        even = _mm256_fmadd_ps(c[0], _mm256_loadu_ps(wr[0] + k), even);
        even = _mm256_fmadd_ps(c[2], _mm256_loadu_ps(wr[2] + k), even);
        odd = _mm256_fmadd_ps(c[3], _mm256_loadu_ps(wr[3] + k), odd);
        even = _mm256_fmadd_ps(c[4], _mm256_loadu_ps(wr[4] + k), even);
        odd = _mm256_fmadd_ps(c[5], _mm256_loadu_ps(wr[5] + k), odd);
        even = _mm256_fmadd_ps(c[6], _mm256_loadu_ps(wr[6] + k), even);
        odd = _mm256_fmadd_ps(c[7], _mm256_loadu_ps(wr[7] + k), odd);
        _mm256_storeu_ps(out + k, _mm256_add_ps(even, odd));
      }
      for (; k < len; ++k) {
        float even = out[k], odd = gm[1] * wr[1][k];
        for (int j = 0; j < kRowBlock; j += 2) even += gm[j] * wr[j][k];
        for (int j = 3; j < kRowBlock; j += 2) odd += gm[j] * wr[j][k];
        out[k] = even + odd;
      }
    } else {
      for (int64_t j = 0; j < rows; ++j) {
        const __m256 c = _mm256_broadcast_ss(gm + j);
        const float* wj = w + (n0 + j) * k_len + k0;
        int64_t k = 0;
        for (; k + 8 <= len; k += 8) {
          _mm256_storeu_ps(out + k, _mm256_fmadd_ps(c, _mm256_loadu_ps(wj + k), _mm256_loadu_ps(out + k)));
        }
        for (; k < len; ++k) out[k] += gm[j] * wj[k];
      }
    }
  }
}

void add_rows_generic(const float* g, int64_t m_rows, int64_t n_out, int64_t n0, int64_t rows, const float* w,
                      int64_t k_len, int64_t k0, int64_t len, float* dx, const float*) {
  for (int64_t m = 0; m < m_rows; ++m) {
    float* out = dx + m * k_len + k0;
    for (int64_t j = 0; j < rows; ++j) {
      const float c = g[m * n_out + n0 + j];
      const float* wj = w + (n0 + j) * k_len + k0;
      for (int64_t k = 0; k < len; ++k) out[k] += c * wj[k];
    }
  }
}

at::Tensor linear_small_batch_input_grad_kernel(const at::Tensor& g_in, const at::Tensor& w_in) {
  check(g_in, w_in, w_in.size(0), "linear_small_batch_input_grad", "grad");
  const at::Tensor g = g_in.contiguous(), w = w_in.contiguous();
  const int64_t m_rows = g.size(0), n_out = w.size(0), k_len = w.size(1);
  at::Tensor dx = at::zeros({m_rows, k_len}, g.options());
  if (m_rows == 0 || k_len == 0) return dx;
  const float* gd = g.const_data_ptr<float>();
  const float* wd = w.const_data_ptr<float>();
  float* dxd = dx.mutable_data_ptr<float>();
  const auto add_rows = use_avx2() ? &add_rows_avx2 : &add_rows_generic;
  const int64_t chunks = (k_len + kColumnChunk - 1) / kColumnChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t k0 = c * kColumnChunk, len = std::min(kColumnChunk, k_len - k0);
      for (int64_t n0 = 0; n0 < n_out; n0 += kRowBlock) {
        const float* next = n0 + 2 * kRowBlock <= n_out ? wd + (n0 + kRowBlock) * k_len + k0 : nullptr;
        add_rows(gd, m_rows, n_out, n0, std::min(kRowBlock, n_out - n0), wd, k_len, k0, len, dxd, next);
      }
    }
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("linear_small_batch", &linear_small_batch_kernel);
  m.impl("linear_small_batch_input_grad", &linear_small_batch_input_grad_kernel);
}

}  // namespace cpu
}  // namespace ssdh
