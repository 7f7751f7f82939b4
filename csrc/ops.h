// C++ entry points of the ssdh operators. Each one goes through the dispatcher,
// so a call picks the CPU, CUDA or Autograd kernel registered for its inputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ssdh {

// E2, the forcing-binary loss (the original K1_EuclideanLoss); a is N x K.
at::Tensor forcing_binary_loss(const at::Tensor& a, int64_t p);
at::Tensor forcing_binary_loss_backward(
    const at::Tensor& grad, const at::Tensor& a, int64_t p);

// E3, the 50%-fire-rate loss (the original K2_EuclideanLoss after the 1 x K
// average pooling); returns (loss, per-sample mean over the K units).
std::tuple<at::Tensor, at::Tensor> fire_rate_loss(const at::Tensor& a, int64_t p);
at::Tensor fire_rate_loss_backward(
    const at::Tensor& grad, const at::Tensor& row_mean, int64_t k, int64_t p);

// E2 and E3 in one pass over a (the two latent-layer terms of every SSDH
// step); returns ([E2, E3], per-sample means). The backward takes the
// gradients of both terms as one 2-element tensor.
std::tuple<at::Tensor, at::Tensor> latent_losses(const at::Tensor& a, int64_t p);
at::Tensor latent_losses_backward(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& row_mean, int64_t p);

// Multi-label max-margin loss. signed_labels: labels are +1/-1/0 (0 = don't
// care) and mask must be absent; otherwise labels are 0/1 and a non-zero mask
// entry marks a label that counts.
at::Tensor max_margin_loss(
    const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels);
at::Tensor max_margin_loss_backward(
    const at::Tensor& grad, const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels);

// N x K values -> N x ceil(K/8) uint8 codes, bit k in byte k/8 at bit k%8.
at::Tensor pack_bits(const at::Tensor& a, double threshold);
at::Tensor unpack_bits(const at::Tensor& packed, int64_t k);

}  // namespace ssdh
