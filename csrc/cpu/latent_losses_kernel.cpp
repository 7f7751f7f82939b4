// CPU kernels of E2 (forcing-binary, K1_EuclideanLoss) and E3 (50%-fire-rate,
// K2_EuclideanLoss on the per-sample mean).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include "../loss_math.h"
#include "reduce.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int64_t kElementGrain = 16384;

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

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("forcing_binary_loss", &forcing_binary_loss_kernel);
  m.impl("_forcing_binary_loss_backward", &forcing_binary_loss_backward_kernel);
  m.impl("fire_rate_loss", &fire_rate_loss_kernel);
  m.impl("_fire_rate_loss_backward", &fire_rate_loss_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
