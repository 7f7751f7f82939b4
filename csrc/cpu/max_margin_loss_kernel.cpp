// CPU kernels of the multi-label max-margin loss (paper Eq. 4-6) with
// don't-care labels (paper section 4.11).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "../checks.h"
#include "../loss_math.h"
#include "reduce.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int64_t kElementGrain = 16384;

// Index of the first label entry outside the convention, or -1.
template <typename scalar_t>
int64_t first_bad_label(
    const scalar_t* labels, const scalar_t* mask, int64_t count, bool signed_labels) {
  for (int64_t i = 0; i < count; ++i) {
    if (label_weights<double>(labels[i], mask ? mask[i] : scalar_t(1), signed_labels).bad) {
      return i;
    }
  }
  return -1;
}

// Calls body(is_signed, has_mask, p) with compile-time constants, so that the
// per-element loops carry no run-time switches and vectorise.
template <typename Body>
void dispatch_label_form(bool signed_labels, bool has_mask, int64_t p, const Body& body) {
  const auto with_p = [&](auto is_signed, auto with_mask) {
    if (p == 2) {
      body(is_signed, with_mask, std::integral_constant<int64_t, 2>{});
    } else {
      body(is_signed, with_mask, std::integral_constant<int64_t, 1>{});
    }
  };
  if (signed_labels) {
    with_p(std::true_type{}, std::false_type{});
  } else if (has_mask) {
    with_p(std::false_type{}, std::true_type{});
  } else {
    with_p(std::false_type{}, std::false_type{});
  }
}

at::Tensor max_margin_loss_kernel(
    const at::Tensor& scores_in, const at::Tensor& labels_in,
    const std::optional<at::Tensor>& mask_in, int64_t p, bool signed_labels) {
  check_p(p, "max_margin_loss");
  check_max_margin_args(scores_in, labels_in, mask_in, signed_labels, "max_margin_loss");
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const int64_t n = scores.size(0);
  const int64_t m = scores.size(1);
  at::Tensor loss = at::empty({}, scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "max_margin_loss", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const scalar_t* s = scores.const_data_ptr<scalar_t>();
        const scalar_t* y = labels.const_data_ptr<scalar_t>();
        const scalar_t* w = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
        acc_t sum = 0;
        dispatch_label_form(signed_labels, w != nullptr, p, [&](auto is_signed, auto with_mask, auto power) {
          sum = parallel_sum<acc_t>(n * m, [&](int64_t i) {
            const auto weights = label_weights<acc_t>(
                y[i], with_mask.value ? w[i] : scalar_t(1), is_signed.value);
            const acc_t loss =
                margin_loss<acc_t>(margin_violation<acc_t>(acc_t(s[i]), weights), power.value);
            return weights.bad ? std::numeric_limits<acc_t>::quiet_NaN() : loss;
          });
        });
        // A bad label turns the sum into NaN; only then is it worth a scan to
        // name the entry (NaN scores alone give a NaN loss, as they should).
        if (std::isnan(sum)) {
          const int64_t bad = first_bad_label(y, w, n * m, signed_labels);
          if (bad >= 0) {
            const std::string where = c10::str(
                "label [", bad / m, ", ", bad % m, "] = ", acc_t(y[bad]),
                w ? c10::str(" with mask ", acc_t(w[bad])) : std::string());
            TORCH_CHECK(
                false, "max_margin_loss: ", where, " is outside the convention: ",
                signed_labels ? "signed labels must be +1, -1 or 0 (don't care)"
                              : "labels must be 0 or 1 and mask entries 0 or 1");
          }
        }
        loss.fill_(sum / acc_t(n));
      });
  return loss;
}

at::Tensor max_margin_loss_backward_kernel(
    const at::Tensor& grad, const at::Tensor& scores_in, const at::Tensor& labels_in,
    const std::optional<at::Tensor>& mask_in, int64_t p, bool signed_labels) {
  check_p(p, "max_margin_loss_backward");
  check_max_margin_args(
      scores_in, labels_in, mask_in, signed_labels, "max_margin_loss_backward");
  check_scalar_grad(grad, scores_in, "max_margin_loss_backward");
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  at::Tensor grad_scores = at::empty(scores.sizes(), scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "max_margin_loss_backward", [&] {
        using acc_t = at::acc_type<scalar_t, false>;
        const acc_t scale = grad.item<acc_t>() / acc_t(scores.size(0));
        const scalar_t* s = scores.const_data_ptr<scalar_t>();
        const scalar_t* y = labels.const_data_ptr<scalar_t>();
        const scalar_t* w = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
        scalar_t* out = grad_scores.mutable_data_ptr<scalar_t>();
        dispatch_label_form(signed_labels, w != nullptr, p, [&](auto is_signed, auto with_mask, auto power) {
          at::parallel_for(0, scores.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
              const auto weights = label_weights<acc_t>(
                  y[i], with_mask.value ? w[i] : scalar_t(1), is_signed.value);
              const acc_t d = margin_violation<acc_t>(acc_t(s[i]), weights);
              out[i] = scalar_t(scale * margin_loss_grad<acc_t>(d, power.value));
            }
          });
        });
      });
  return grad_scores;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("max_margin_loss", &max_margin_loss_kernel);
  m.impl("_max_margin_loss_backward", &max_margin_loss_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
