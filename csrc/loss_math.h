// Per-element arithmetic of the SSDH losses, shared by the CPU and CUDA kernels
// so that both devices compute exactly the same terms (SPEC.md section 1).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace ssdh {

// E2 and E3 penalise a distance d from 0.5: p = 2 gives d^2 / 2 (the Euclidean
// loss of the original layers), p = 1 gives |d| (paper Eq. 7, no 1/2).
template <typename T>
C10_HOST_DEVICE inline T latent_penalty(T d, int64_t p) {
  return p == 2 ? T(0.5) * d * d : (d < T(0) ? -d : d);
}

// Derivative of latent_penalty; the p = 1 sub-gradient takes sign(0) = 0.
template <typename T>
C10_HOST_DEVICE inline T latent_penalty_grad(T d, int64_t p) {
  return p == 2 ? d : T((d > T(0)) - (d < T(0)));
}

// How one label entry of the max-margin loss counts.
enum LabelKind : int { kDontCare = 0, kPositive = 1, kNegative = 2, kBadLabel = 3 };

// signed_labels: +1 / -1 / 0 (don't care). Otherwise 1 / 0, and with a mask a
// 0 in the mask marks don't care; mask entries must be 0 or 1.
template <typename T>
C10_HOST_DEVICE inline int classify_label(T y, const T* mask_entry, bool signed_labels) {
  if (mask_entry != nullptr) {
    const T m = *mask_entry;
    if (m == T(0)) {
      return (y == T(0) || y == T(1)) ? kDontCare : kBadLabel;
    }
    if (m != T(1)) {
      return kBadLabel;
    }
  }
  if (y == T(1)) {
    return kPositive;
  }
  if (signed_labels) {
    return y == T(-1) ? kNegative : (y == T(0) ? kDontCare : kBadLabel);
  }
  return y == T(0) ? kNegative : kBadLabel;
}

// Signed distance past the margin: positives want s >= 1, negatives s <= 0.
template <typename T>
C10_HOST_DEVICE inline T margin_violation(T s, int kind) {
  if (kind == kPositive) {
    return s < T(1) ? s - T(1) : T(0);
  }
  if (kind == kNegative) {
    return s > T(0) ? s : T(0);
  }
  return T(0);
}

// 0.5 * |d|^p and its derivative (p/2) * sign(d) * |d|^(p-1).
template <typename T>
C10_HOST_DEVICE inline T margin_loss(T d, int64_t p) {
  return p == 2 ? T(0.5) * d * d : T(0.5) * (d < T(0) ? -d : d);
}

template <typename T>
C10_HOST_DEVICE inline T margin_loss_grad(T d, int64_t p) {
  return p == 2 ? d : T(0.5) * T((d > T(0)) - (d < T(0)));
}

}  // namespace ssdh
