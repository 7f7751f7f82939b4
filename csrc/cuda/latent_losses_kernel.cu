// CUDA kernels of E2 (forcing-binary) and E3 (50%-fire-rate), apart and fused;
// the arithmetic per element is loss_math.h, shared with the CPU kernels.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../loss_math.h"
#include "reduce.cuh"

namespace ssdh {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t>
struct DistanceTerm {
  const scalar_t* x;
  int64_t p;
  __device__ acc_t operator()(int64_t i) const {
    return latent_penalty<acc_t>(acc_t(x[i]) - acc_t(0.5), p);
  }
};

// One warp per row: the per-sample mean over the K units.
template <typename scalar_t, typename acc_t>
__global__ void row_mean_kernel(const scalar_t* a, int64_t n, int64_t k, scalar_t* mean) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) {
    return;
  }
  acc_t s = 0;
  for (int64_t j = lane; j < k; j += 32) {
    s += acc_t(a[row * k + j]);
  }
  s = warp_sum(s);
  if (lane == 0) {
    mean[row] = scalar_t(s / acc_t(k));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void forcing_binary_backward_kernel(
    const scalar_t* grad, const scalar_t* a, int64_t count, int64_t p, scalar_t* out) {
  const acc_t scale = -acc_t(*grad) / acc_t(count);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = scalar_t(scale * latent_penalty_grad<acc_t>(acc_t(a[i]) - acc_t(0.5), p));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void fire_rate_backward_kernel(
    const scalar_t* grad, const scalar_t* mean, int64_t n, int64_t k, int64_t p,
    scalar_t* out) {
  const acc_t scale = acc_t(*grad) / (acc_t(n) * acc_t(k));
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * k;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = scalar_t(scale * latent_penalty_grad<acc_t>(acc_t(mean[i / k]) - acc_t(0.5), p));
  }
}

// The fused E2 + E3 forward: one warp per row sums the row and its penalties;
// each block adds its rows' E2 and E3 terms into two partials (the grid is
// fixed by the shape, so the sums are deterministic): partial[b] and
// partial[gridDim.x + b], which a two-block finish_sum_kernel adds in order.
template <typename scalar_t, typename acc_t>
__global__ void latent_rows_kernel(
    const scalar_t* a, int64_t n, int64_t k, int64_t p, acc_t element_weight, acc_t row_weight,
    scalar_t* mean, acc_t* partial) {
  const int warps = blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  acc_t e2 = 0, e3 = 0;
  for (int64_t row = blockIdx.x * int64_t(warps) + threadIdx.x / 32; row < n;
       row += int64_t(gridDim.x) * warps) {
    acc_t s = 0, e = 0;
    for (int64_t j = lane; j < k; j += 32) {
      const acc_t v = acc_t(a[row * k + j]);
      s += v;
      e += latent_penalty<acc_t>(v - acc_t(0.5), p);
    }
    s = warp_sum(s);
    e = warp_sum(e);
    if (lane == 0) {
      const scalar_t m = scalar_t(s / acc_t(k));
      mean[row] = m;
      e2 += element_weight * e;
      e3 += row_weight * latent_penalty<acc_t>(acc_t(m) - acc_t(0.5), p);
    }
  }
  e2 = block_sum(e2);
  e3 = block_sum(e3);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = e2;
    partial[gridDim.x + blockIdx.x] = e3;
  }
}

// grad holds the gradients of E2 and E3 (acc_t, on the device: no sync).
template <typename scalar_t, typename acc_t>
__global__ void latent_backward_kernel(
    const acc_t* grad, const scalar_t* a, const scalar_t* mean, int64_t n, int64_t k, int64_t p,
    scalar_t* out) {
  const acc_t element_scale = -grad[0] / (acc_t(n) * acc_t(k));
  const acc_t row_scale = grad[1] / (acc_t(n) * acc_t(k));
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * k;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = scalar_t(element_scale * latent_penalty_grad<acc_t>(acc_t(a[i]) - acc_t(0.5), p) +
                      row_scale * latent_penalty_grad<acc_t>(acc_t(mean[i / k]) - acc_t(0.5), p));
  }
}

at::Tensor forcing_binary_loss_kernel(const at::Tensor& a_in, int64_t p) {
  check_p(p, "forcing_binary_loss");
  check_matrix(a_in, "forcing_binary_loss", "a");
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  at::Tensor loss = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "forcing_binary_loss_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        DistanceTerm<scalar_t, acc_t> term{a.const_data_ptr<scalar_t>(), p};
        launch_scaled_sum<scalar_t, acc_t>(a.numel(), term, -acc_t(1) / acc_t(a.numel()), loss);
      });
  return loss;
}

at::Tensor forcing_binary_loss_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& a_in, int64_t p) {
  check_p(p, "forcing_binary_loss_backward");
  check_matrix(a_in, "forcing_binary_loss_backward", "a");
  check_scalar_grad(grad_in, a_in, "forcing_binary_loss_backward");
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor grad = grad_in.to(a.scalar_type()).contiguous();
  at::Tensor grad_a = at::empty(a.sizes(), a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "forcing_binary_loss_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        forcing_binary_backward_kernel<scalar_t, acc_t>
            <<<blocks_for(a.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                grad.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), a.numel(), p,
                grad_a.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_a;
}

std::tuple<at::Tensor, at::Tensor> fire_rate_loss_kernel(const at::Tensor& a_in, int64_t p) {
  check_p(p, "fire_rate_loss");
  check_matrix(a_in, "fire_rate_loss", "a");
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  at::Tensor loss = at::empty({}, a.options());
  at::Tensor row_mean = at::empty({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "fire_rate_loss_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const int64_t rows_per_block = kThreads / 32;
        const int blocks = static_cast<int>((n + rows_per_block - 1) / rows_per_block);
        row_mean_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            a.const_data_ptr<scalar_t>(), n, k, row_mean.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        DistanceTerm<scalar_t, acc_t> term{row_mean.const_data_ptr<scalar_t>(), p};
        launch_scaled_sum<scalar_t, acc_t>(n, term, acc_t(1) / acc_t(n), loss);
      });
  return {loss, row_mean};
}

at::Tensor fire_rate_loss_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& row_mean_in, int64_t k, int64_t p) {
  check_p(p, "fire_rate_loss_backward");
  TORCH_CHECK(
      row_mean_in.dim() == 1 && row_mean_in.numel() > 0,
      "fire_rate_loss_backward: row_mean must be a non-empty 1-D tensor, got shape ",
      row_mean_in.sizes());
  TORCH_CHECK(k > 0, "fire_rate_loss_backward: k must be positive, got ", k);
  check_scalar_grad(grad_in, row_mean_in, "fire_rate_loss_backward");
  c10::cuda::CUDAGuard guard(row_mean_in.device());
  const at::Tensor row_mean = row_mean_in.contiguous();
  const at::Tensor grad = grad_in.to(row_mean.scalar_type()).contiguous();
  const int64_t n = row_mean.size(0);
  at::Tensor grad_a = at::empty({n, k}, row_mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, row_mean.scalar_type(), "fire_rate_loss_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        fire_rate_backward_kernel<scalar_t, acc_t>
            <<<blocks_for(n * k), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                grad.const_data_ptr<scalar_t>(), row_mean.const_data_ptr<scalar_t>(), n, k, p,
                grad_a.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_a;
}

std::tuple<at::Tensor, at::Tensor> latent_losses_kernel(const at::Tensor& a_in, int64_t p) {
  check_p(p, "latent_losses");
  check_matrix(a_in, "latent_losses", "a");
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  at::Tensor terms = at::empty({2}, a.options());
  at::Tensor row_mean = at::empty({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "latent_losses_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const int blocks = blocks_for(n, kThreads / 32, kMaxPartials);
        at::Tensor partial = at::empty(
            {2, blocks}, a.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        auto stream = c10::cuda::getCurrentCUDAStream();
        // E2 negated as the original reports it; E3 the mean over rows.
        latent_rows_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
            a.const_data_ptr<scalar_t>(), n, k, p, -acc_t(1) / (acc_t(n) * acc_t(k)),
            acc_t(1) / acc_t(n), row_mean.mutable_data_ptr<scalar_t>(),
            partial.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        finish_sum_kernel<scalar_t, acc_t><<<2, kMaxPartials, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), blocks, acc_t(1), terms.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {terms, row_mean};
}

at::Tensor latent_losses_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& row_mean_in, int64_t p) {
  check_latent_backward_args(grad_in, a_in, row_mean_in, p, "latent_losses_backward");
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor row_mean = row_mean_in.contiguous();
  at::Tensor grad_a = at::empty(a.sizes(), a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "latent_losses_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const at::Tensor grad = grad_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        latent_backward_kernel<scalar_t, acc_t>
            <<<blocks_for(a.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                grad.const_data_ptr<acc_t>(), a.const_data_ptr<scalar_t>(),
                row_mean.const_data_ptr<scalar_t>(), a.size(0), a.size(1), p,
                grad_a.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_a;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CUDA, m) {
  m.impl("forcing_binary_loss", &forcing_binary_loss_kernel);
  m.impl("_forcing_binary_loss_backward", &forcing_binary_loss_backward_kernel);
  m.impl("fire_rate_loss", &fire_rate_loss_kernel);
  m.impl("_fire_rate_loss_backward", &fire_rate_loss_backward_kernel);
  m.impl("latent_losses", &latent_losses_kernel);
  m.impl("_latent_losses_backward", &latent_losses_backward_kernel);
}

}  // namespace cuda
}  // namespace ssdh
