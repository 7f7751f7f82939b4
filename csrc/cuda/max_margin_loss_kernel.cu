// CUDA kernels of the multi-label max-margin loss. An entry outside the label
// convention makes the loss NaN here (the CPU kernel raises instead): naming
// the entry would need a device-to-host sync on every call.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "../loss_math.h"
#include "reduce.cuh"

namespace ssdh {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t>
struct MarginTerm {
  const scalar_t* scores;
  const scalar_t* labels;
  const scalar_t* mask;  // nullptr without a mask
  int64_t p;
  bool signed_labels;
  __device__ acc_t operator()(int64_t i) const {
    const auto weights = label_weights<acc_t>(labels[i], mask ? mask[i] : scalar_t(1), signed_labels);
    const acc_t loss = margin_loss<acc_t>(margin_violation<acc_t>(acc_t(scores[i]), weights), p);
    return weights.bad ? acc_t(NAN) : loss;
  }
};

template <typename scalar_t, typename acc_t>
__global__ void max_margin_backward_kernel(
    const scalar_t* grad, MarginTerm<scalar_t, acc_t> term, int64_t count, int64_t n,
    scalar_t* out) {
  const acc_t scale = acc_t(*grad) / acc_t(n);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const auto weights = label_weights<acc_t>(
        term.labels[i], term.mask ? term.mask[i] : scalar_t(1), term.signed_labels);
    const acc_t d = margin_violation<acc_t>(acc_t(term.scores[i]), weights);
    out[i] = scalar_t(scale * margin_loss_grad<acc_t>(d, term.p));
  }
}

struct Inputs {
  at::Tensor scores, labels, mask;
};

Inputs contiguous_inputs(
    const at::Tensor& scores, const at::Tensor& labels, const std::optional<at::Tensor>& mask) {
  return {scores.contiguous(), labels.contiguous(),
          mask.has_value() ? mask->contiguous() : at::Tensor()};
}

template <typename scalar_t, typename acc_t>
MarginTerm<scalar_t, acc_t> make_term(const Inputs& in, int64_t p, bool signed_labels) {
  return {in.scores.const_data_ptr<scalar_t>(), in.labels.const_data_ptr<scalar_t>(),
          in.mask.defined() ? in.mask.const_data_ptr<scalar_t>() : nullptr, p, signed_labels};
}

at::Tensor max_margin_loss_kernel(
    const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels) {
  check_p(p, "max_margin_loss");
  check_max_margin_args(scores, labels, mask, signed_labels, "max_margin_loss");
  c10::cuda::CUDAGuard guard(scores.device());
  const Inputs in = contiguous_inputs(scores, labels, mask);
  at::Tensor loss = at::empty({}, in.scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.scores.scalar_type(), "max_margin_loss_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const auto term = make_term<scalar_t, acc_t>(in, p, signed_labels);
        launch_scaled_sum<scalar_t, acc_t>(
            in.scores.numel(), term, acc_t(1) / acc_t(in.scores.size(0)), loss);
      });
  return loss;
}

at::Tensor max_margin_loss_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels) {
  check_p(p, "max_margin_loss_backward");
  check_max_margin_args(scores, labels, mask, signed_labels, "max_margin_loss_backward");
  check_scalar_grad(grad_in, scores, "max_margin_loss_backward");
  c10::cuda::CUDAGuard guard(scores.device());
  const Inputs in = contiguous_inputs(scores, labels, mask);
  const at::Tensor grad = grad_in.to(in.scores.scalar_type()).contiguous();
  at::Tensor grad_scores = at::empty(in.scores.sizes(), in.scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.scores.scalar_type(), "max_margin_loss_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const auto term = make_term<scalar_t, acc_t>(in, p, signed_labels);
        const int64_t count = in.scores.numel();
        max_margin_backward_kernel<scalar_t, acc_t>
            <<<blocks_for(count), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                grad.const_data_ptr<scalar_t>(), term, count, in.scores.size(0),
                grad_scores.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_scores;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CUDA, m) {
  m.impl("max_margin_loss", &max_margin_loss_kernel);
  m.impl("_max_margin_loss_backward", &max_margin_loss_backward_kernel);
}

}  // namespace cuda
}  // namespace ssdh
