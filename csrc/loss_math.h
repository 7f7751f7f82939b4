// Per-element arithmetic of the SSDH losses, shared by the CPU and CUDA kernels
// so that both devices compute exactly the same terms (docs/SPEC.md section 1).
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

// How one label entry of the max-margin loss counts: as a positive (wants
// s >= 1), a negative (wants s <= 0), neither (don't care), or not at all
// because it is outside the convention. Computed without branches: labels are
// random, and a mispredicted branch per entry costs more than the arithmetic.
template <typename T>
struct LabelWeights {
  T positive;
  T negative;
  bool bad;
};

// signed_labels: +1 / -1 / 0 (don't care). Otherwise 1 / 0, and mask (1 when
// no mask is given) holds 1 where the label counts and 0 for don't care.
// Bitwise & and | on purpose: short-circuit operators become branches.
// T is the accumulation type, L the stored type of labels and mask.
template <typename T, typename L>
C10_HOST_DEVICE inline LabelWeights<T> label_weights(L y, L mask, bool signed_labels) {
  const bool is_one = y == L(1);
  const bool is_zero = y == L(0);
  if (signed_labels) {
    const bool is_minus_one = y == L(-1);
    return {T(is_one), T(is_minus_one), !(is_one | is_zero | is_minus_one)};
  }
  const bool counts = mask == L(1);
  const bool bad = !((is_one | is_zero) & (counts | (mask == L(0))));
  return {T(is_one & counts), T(is_zero & counts), bad};
}

// Signed distance past the margin (0 inside it and for don't care).
template <typename T>
C10_HOST_DEVICE inline T margin_violation(T s, const LabelWeights<T>& w) {
  const T below_one = s < T(1) ? s - T(1) : T(0);
  const T above_zero = s > T(0) ? s : T(0);
  return w.positive * below_one + w.negative * above_zero;
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
