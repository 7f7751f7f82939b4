// CPU kernels of E2 (forcing-binary, K1_EuclideanLoss) and E3 (50%-fire-rate,
// K2_EuclideanLoss on the per-sample mean), apart and fused.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../loss_math.h"
#include "reduce.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int64_t kElementGrain = 16384;

// (sum, sum of penalties) of one row of k values, in four running lanes.
template <typename scalar_t, typename acc_t>
std::pair<acc_t, acc_t> row_sums(const scalar_t* x, int64_t k, int64_t p) {
  acc_t sum[4] = {0, 0, 0, 0}, penalty[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= k; j += 4) {
    for (int l = 0; l < 4; ++l) {
      const acc_t v = acc_t(x[j + l]);
      sum[l] += v;
      penalty[l] += latent_penalty<acc_t>(v - acc_t(0.5), p);
    }
  }
  acc_t s = (sum[0] + sum[1]) + (sum[2] + sum[3]);
  acc_t e = (penalty[0] + penalty[1]) + (penalty[2] + penalty[3]);
  for (; j < k; ++j) {
    s += acc_t(x[j]);
    e += latent_penalty<acc_t>(acc_t(x[j]) - acc_t(0.5), p);
  }
  return {s, e};
}

at::Tensor forcing_binary_loss_kernel(const at::Tensor& a_in, int64_t p) {
  check_p(p, "forcing_binary_loss");
  check_matrix(a_in, "forcing_binary_loss", "a");
  const at::Tensor a = a_in.contiguous();
  at::Tensor loss = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "forcing_binary_loss", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const scalar_t* data = a.const_data_ptr<scalar_t>();
        const acc_t sum = parallel_sum<acc_t>(a.numel(), [&](int64_t i) {
          return latent_penalty<acc_t>(acc_t(data[i]) - acc_t(0.5), p);
        });
        // The original reports the negated Euclidean loss: minimising it pushes
        // the activations away from 0.5.
        loss.fill_(-sum / acc_t(a.numel()));
      });
  return loss;
}

at::Tensor forcing_binary_loss_backward_kernel(
    const at::Tensor& grad, const at::Tensor& a_in, int64_t p) {
  check_p(p, "forcing_binary_loss_backward");
  check_matrix(a_in, "forcing_binary_loss_backward", "a");
  check_scalar_grad(grad, a_in, "forcing_binary_loss_backward");
  const at::Tensor a = a_in.contiguous();
  at::Tensor grad_a = at::empty(a.sizes(), a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "forcing_binary_loss_backward", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const acc_t scale = -grad.item<acc_t>() / acc_t(a.numel());
        const scalar_t* in = a.const_data_ptr<scalar_t>();
        scalar_t* out = grad_a.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, a.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            out[i] = scalar_t(scale * latent_penalty_grad<acc_t>(acc_t(in[i]) - acc_t(0.5), p));
          }
        });
      });
  return grad_a;
}

std::tuple<at::Tensor, at::Tensor> fire_rate_loss_kernel(const at::Tensor& a_in, int64_t p) {
  check_p(p, "fire_rate_loss");
  check_matrix(a_in, "fire_rate_loss", "a");
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  at::Tensor loss = at::empty({}, a.options());
  at::Tensor row_mean = at::empty({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "fire_rate_loss", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const scalar_t* data = a.const_data_ptr<scalar_t>();
        scalar_t* mean = row_mean.mutable_data_ptr<scalar_t>();
        // The per-row means are what the original's 1 x K AVE pooling makes.
        at::parallel_for(0, n, std::max<int64_t>(1, kElementGrain / k), [&](int64_t b, int64_t e) {
          for (int64_t row = b; row < e; ++row) {
            const scalar_t* x = data + row * k;
            acc_t lane[4] = {0, 0, 0, 0};
            int64_t j = 0;
            for (; j + 4 <= k; j += 4) {
              for (int l = 0; l < 4; ++l) {
                lane[l] += acc_t(x[j + l]);
              }
            }
            acc_t s = (lane[0] + lane[1]) + (lane[2] + lane[3]);
            for (; j < k; ++j) {
              s += acc_t(x[j]);
            }
            mean[row] = scalar_t(s / acc_t(k));
          }
        });
        const acc_t sum = parallel_sum<acc_t>(n, [&](int64_t row) {
          return latent_penalty<acc_t>(acc_t(mean[row]) - acc_t(0.5), p);
        });
        loss.fill_(sum / acc_t(n));
      });
  return {loss, row_mean};
}

at::Tensor fire_rate_loss_backward_kernel(
    const at::Tensor& grad, const at::Tensor& row_mean_in, int64_t k, int64_t p) {
  check_p(p, "fire_rate_loss_backward");
  TORCH_CHECK(
      row_mean_in.dim() == 1 && row_mean_in.numel() > 0,
      "fire_rate_loss_backward: row_mean must be a non-empty 1-D tensor, got shape ",
      row_mean_in.sizes());
  TORCH_CHECK(k > 0, "fire_rate_loss_backward: k must be positive, got ", k);
  check_scalar_grad(grad, row_mean_in, "fire_rate_loss_backward");
  const at::Tensor row_mean = row_mean_in.contiguous();
  const int64_t n = row_mean.size(0);
  at::Tensor grad_a = at::empty({n, k}, row_mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, row_mean.scalar_type(), "fire_rate_loss_backward", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        // d loss / d a_nk = g * penalty'(m_n - 0.5) / (N * K): constant per row.
        const acc_t scale = grad.item<acc_t>() / (acc_t(n) * acc_t(k));
        const scalar_t* mean = row_mean.const_data_ptr<scalar_t>();
        scalar_t* out = grad_a.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, n, std::max<int64_t>(1, kElementGrain / k), [&](int64_t b, int64_t e) {
          for (int64_t row = b; row < e; ++row) {
            const scalar_t value =
                scalar_t(scale * latent_penalty_grad<acc_t>(acc_t(mean[row]) - acc_t(0.5), p));
            std::fill(out + row * k, out + (row + 1) * k, value);
          }
        });
      });
  return grad_a;
}

// E2 and E3 from one pass over a: each row's sum (its mean, E3) and its sum
// of penalties (E2). Rows go in chunks fixed by the shape alone, so the sums
// do not depend on the thread count.
std::tuple<at::Tensor, at::Tensor> latent_losses_kernel(const at::Tensor& a_in, int64_t p) {
  check_p(p, "latent_losses");
  check_matrix(a_in, "latent_losses", "a");
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  at::Tensor terms = at::empty({2}, a.options());
  at::Tensor row_mean = at::empty({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "latent_losses", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const scalar_t* data = a.const_data_ptr<scalar_t>();
        scalar_t* mean = row_mean.mutable_data_ptr<scalar_t>();
        const int64_t rows_per_chunk = std::max<int64_t>(1, kReduceChunk / k);
        const int64_t chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
        std::vector<acc_t> penalties(chunks, acc_t(0)), row_terms(chunks, acc_t(0));
        at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
          for (int64_t c = first; c < last; ++c) {
            const int64_t end = std::min(n, (c + 1) * rows_per_chunk);
            for (int64_t row = c * rows_per_chunk; row < end; ++row) {
              const auto [s, e] = row_sums<scalar_t, acc_t>(data + row * k, k, p);
              mean[row] = scalar_t(s / acc_t(k));
              penalties[c] += e;
              row_terms[c] += latent_penalty<acc_t>(acc_t(mean[row]) - acc_t(0.5), p);
            }
          }
        });
        acc_t e2 = 0, e3 = 0;
        for (int64_t c = 0; c < chunks; ++c) {
          e2 += penalties[c];
          e3 += row_terms[c];
        }
        // E2 is negated as the original reports it (see forcing_binary_loss_kernel).
        scalar_t* out = terms.mutable_data_ptr<scalar_t>();
        out[0] = scalar_t(-e2 / (acc_t(n) * acc_t(k)));
        out[1] = scalar_t(e3 / acc_t(n));
      });
  return {terms, row_mean};
}

// grad holds the gradients of E2 and E3 (two values).
at::Tensor latent_losses_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& row_mean_in, int64_t p) {
  check_latent_backward_args(grad_in, a_in, row_mean_in, p, "latent_losses_backward");
  const at::Tensor a = a_in.contiguous();
  const at::Tensor row_mean = row_mean_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  at::Tensor grad_a = at::empty(a.sizes(), a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "latent_losses_backward", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const at::Tensor grad = grad_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        const acc_t* g = grad.const_data_ptr<acc_t>();
        const acc_t element_scale = -g[0] / (acc_t(n) * acc_t(k));
        const acc_t row_scale = g[1] / (acc_t(n) * acc_t(k));
        const scalar_t* in = a.const_data_ptr<scalar_t>();
        const scalar_t* mean = row_mean.const_data_ptr<scalar_t>();
        scalar_t* out = grad_a.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, n, std::max<int64_t>(1, kElementGrain / k), [&](int64_t b, int64_t e) {
          for (int64_t row = b; row < e; ++row) {
            const acc_t row_term =
                row_scale * latent_penalty_grad<acc_t>(acc_t(mean[row]) - acc_t(0.5), p);
            for (int64_t j = row * k; j < (row + 1) * k; ++j) {
              out[j] = scalar_t(
                  element_scale * latent_penalty_grad<acc_t>(acc_t(in[j]) - acc_t(0.5), p) + row_term);
            }
          }
        });
      });
  return grad_a;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("forcing_binary_loss", &forcing_binary_loss_kernel);
  m.impl("_forcing_binary_loss_backward", &forcing_binary_loss_backward_kernel);
  m.impl("fire_rate_loss", &fire_rate_loss_kernel);
  m.impl("_fire_rate_loss_backward", &fire_rate_loss_backward_kernel);
  m.impl("latent_losses", &latent_losses_kernel);
  m.impl("_latent_losses_backward", &latent_losses_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
