// Argument checks shared by the CPU and CUDA kernels, so that a direct
// torch.ops.ssdh call fails with the same message whatever the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace ssdh {

inline void check_p(int64_t p, const char* op) {
  TORCH_CHECK(p == 1 || p == 2, op, ": p must be 1 or 2, got ", p);
}

// A float batch of N x K values with N >= 1 and K >= 1.
inline void check_matrix(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(
      t.dim() == 2, op, ": ", name, " must be a 2-D N x K tensor, got ", t.dim(),
      "-D with shape ", t.sizes());
  TORCH_CHECK(
      at::isFloatingType(t.scalar_type()), op, ": ", name,
      " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(
      t.size(0) > 0 && t.size(1) > 0, op, ": ", name,
      " must not be empty, got shape ", t.sizes());
}

inline void check_like(
    const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
    const char* ref_name) {
  TORCH_CHECK(
      t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name,
      " ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
      ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(
      t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
      " (", ref.device(), "), got ", t.device());
}

inline void check_scalar_grad(
    const at::Tensor& grad, const at::Tensor& ref, const char* op, int64_t values = 1) {
  TORCH_CHECK(
      grad.numel() == values, op, ": grad must hold ", values, " value(s), got shape ",
      grad.sizes());
  TORCH_CHECK(
      grad.device() == ref.device(), op, ": grad must be on ", ref.device(), ", got ",
      grad.device());
}

inline void check_max_margin_args(
    const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, bool signed_labels, const char* op) {
  check_matrix(scores, op, "scores");
  check_like(labels, scores, op, "labels", "scores");
  if (mask.has_value()) {
    TORCH_CHECK(
        !signed_labels, op,
        ": mask is only used with 0/1 labels; signed (+1/-1/0) labels carry "
        "don't-care as 0");
    check_like(*mask, scores, op, "mask", "scores");
  }
}

// Packed codes (pack_bits layout): 2-D uint8, the same byte width for queries
// and database, on one device. Distances are kept in 16 bits.
inline void check_codes(const at::Tensor& queries, const at::Tensor& database, const char* op) {
  for (const auto* t : {&queries, &database}) {
    const char* name = t == &queries ? "queries" : "database";
    TORCH_CHECK(
        t->dim() == 2, op, ": ", name, " must be 2-D packed codes (N x bytes), got shape ",
        t->sizes());
    TORCH_CHECK(
        t->scalar_type() == at::kByte, op, ": ", name,
        " must be uint8 packed codes (ssdh_port.ops.pack_bits), got ", t->scalar_type());
  }
  TORCH_CHECK(
      queries.size(1) == database.size(1), op, ": queries have ", queries.size(1),
      " bytes per code, the database ", database.size(1));
  TORCH_CHECK(
      queries.size(1) >= 1 && queries.size(1) <= 8191, op,
      ": codes must have 1 to 8191 bytes (65,528 bits), got ", queries.size(1));
  TORCH_CHECK(
      queries.device() == database.device(), op, ": queries are on ", queries.device(),
      ", the database on ", database.device());
}

// The per-sample means a forward saved for its backward: one per row of a.
inline void check_row_means(const at::Tensor& row_mean, const at::Tensor& a, const char* op) {
  TORCH_CHECK(
      row_mean.dim() == 1 && row_mean.size(0) == a.size(0), op,
      ": row_mean must be 1-D with one mean per row of a (", a.size(0), "), got shape ",
      row_mean.sizes());
  TORCH_CHECK(
      row_mean.scalar_type() == a.scalar_type() && row_mean.device() == a.device(), op,
      ": row_mean must have a's dtype and device");
}

// The fused E2 + E3 backward: the gradients of both terms (two values), a and
// the row means its forward saved.
inline void check_latent_backward_args(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& row_mean, int64_t p,
    const char* op) {
  check_p(p, op);
  check_matrix(a, op, "a");
  check_row_means(row_mean, a, op);
  check_scalar_grad(grad, a, op, 2);
}

// Label words of the retrieval metrics: int64 rows of the same width, one per
// query and one per database code.
inline void check_label_words(
    const at::Tensor& query_labels, const at::Tensor& db_labels, int64_t n_queries, int64_t n_db,
    const char* op) {
  for (const auto* t : {&query_labels, &db_labels}) {
    const char* name = t == &query_labels ? "query_labels" : "database_labels";
    const int64_t rows = t == &query_labels ? n_queries : n_db;
    TORCH_CHECK(
        t->dim() == 2 && t->size(0) == rows && t->size(1) >= 1, op, ": ", name,
        " must be a 2-D tensor of ", rows, " rows of label words, got shape ", t->sizes());
    TORCH_CHECK(
        t->scalar_type() == at::kLong, op, ": ", name, " must be int64 label words, got ",
        t->scalar_type());
  }
  TORCH_CHECK(
      query_labels.size(1) == db_labels.size(1), op, ": query labels have ", query_labels.size(1),
      " words per row, database labels ", db_labels.size(1));
}

// Byte width of a packed code of k bits.
inline int64_t packed_bytes(int64_t k) {
  return (k + 7) / 8;
}

}  // namespace ssdh
