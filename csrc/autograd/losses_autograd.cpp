// Autograd for the SSDH losses, registered once for every device: the forward
// calls the device kernel below autograd, the backward calls the device's
// backward kernel (first-order gradients only).
#include <torch/autograd.h>
#include <torch/library.h>

#include "../ops.h"

namespace ssdh {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class ForcingBinaryLossFunction : public torch::autograd::Function<ForcingBinaryLossFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& a, int64_t p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({a});
    ctx->saved_data["p"] = p;
    return ssdh::forcing_binary_loss(a, p);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_out) {
    const auto a = ctx->get_saved_variables()[0];
    const int64_t p = ctx->saved_data["p"].toInt();
    return {ssdh::forcing_binary_loss_backward(grad_out[0], a, p), Variable()};
  }
};

class FireRateLossFunction : public torch::autograd::Function<FireRateLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& a, int64_t p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, row_mean] = ssdh::fire_rate_loss(a, p);
    ctx->save_for_backward({row_mean});
    ctx->saved_data["p"] = p;
    ctx->saved_data["k"] = a.size(1);
    // The row means are a by-product kept for the backward, not an output
    // anyone differentiates through.
    ctx->mark_non_differentiable({row_mean});
    return {loss, row_mean};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_out) {
    const auto row_mean = ctx->get_saved_variables()[0];
    const int64_t p = ctx->saved_data["p"].toInt();
    const int64_t k = ctx->saved_data["k"].toInt();
    return {ssdh::fire_rate_loss_backward(grad_out[0], row_mean, k, p), Variable()};
  }
};

class LatentLossesFunction : public torch::autograd::Function<LatentLossesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& a, int64_t p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [terms, row_mean] = ssdh::latent_losses(a, p);
    ctx->save_for_backward({a, row_mean});
    ctx->saved_data["p"] = p;
    ctx->mark_non_differentiable({row_mean});
    return {terms, row_mean};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_out) {
    const auto saved = ctx->get_saved_variables();
    // grad_out[0] holds d objective / d E2 and d objective / d E3 (SSDH's weights).
    return {ssdh::latent_losses_backward(grad_out[0], saved[0], saved[1],
                                         ctx->saved_data["p"].toInt()),
            Variable()};
  }
};

class MaxMarginLossFunction : public torch::autograd::Function<MaxMarginLossFunction> {
 public:
  static Variable forward(
      AutogradContext* ctx, const Variable& scores, const Variable& labels,
      const std::optional<Variable>& mask, int64_t p, bool signed_labels) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({scores, labels, mask.value_or(Variable())});
    ctx->saved_data["p"] = p;
    ctx->saved_data["signed_labels"] = signed_labels;
    return ssdh::max_margin_loss(scores, labels, mask, p, signed_labels);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_out) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> mask =
        saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const int64_t p = ctx->saved_data["p"].toInt();
    const bool signed_labels = ctx->saved_data["signed_labels"].toBool();
    auto grad_scores = ssdh::max_margin_loss_backward(
        grad_out[0], saved[0], saved[1], mask, p, signed_labels);
    // Labels and mask are data, not parameters: they get no gradient.
    return {grad_scores, Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor forcing_binary_loss_autograd(const at::Tensor& a, int64_t p) {
  return ForcingBinaryLossFunction::apply(a, p);
}

std::tuple<at::Tensor, at::Tensor> fire_rate_loss_autograd(const at::Tensor& a, int64_t p) {
  const auto outputs = FireRateLossFunction::apply(a, p);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, at::Tensor> latent_losses_autograd(const at::Tensor& a, int64_t p) {
  const auto outputs = LatentLossesFunction::apply(a, p);
  return {outputs[0], outputs[1]};
}

at::Tensor max_margin_loss_autograd(
    const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels) {
  return MaxMarginLossFunction::apply(scores, labels, mask, p, signed_labels);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, Autograd, m) {
  m.impl("forcing_binary_loss", &forcing_binary_loss_autograd);
  m.impl("fire_rate_loss", &fire_rate_loss_autograd);
  m.impl("latent_losses", &latent_losses_autograd);
  m.impl("max_margin_loss", &max_margin_loss_autograd);
}

}  // namespace ssdh
