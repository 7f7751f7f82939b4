// Operator schemas of the ssdh namespace, and the C++ functions that call them
// through the dispatcher. Kernels live in cpu/, cuda/ and autograd/.
#include <Python.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

// Importing ssdh_port._C loads this library, whose static initialisers
// register the operators; the module itself only carries build facts.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "ssdh native operators", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef SSDH_WITH_CUDA
  PyModule_AddIntConstant(module, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(module, "WITH_CUDA", 0);
#endif
  return module;
}

namespace ssdh {

namespace {
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .typed<Signature>();
}
}  // namespace

at::Tensor forcing_binary_loss(const at::Tensor& a, int64_t p) {
  static auto op = find_op<decltype(forcing_binary_loss)>("ssdh::forcing_binary_loss");
  return op.call(a, p);
}

at::Tensor forcing_binary_loss_backward(
    const at::Tensor& grad, const at::Tensor& a, int64_t p) {
  static auto op = find_op<decltype(forcing_binary_loss_backward)>(
      "ssdh::_forcing_binary_loss_backward");
  return op.call(grad, a, p);
}

std::tuple<at::Tensor, at::Tensor> fire_rate_loss(const at::Tensor& a, int64_t p) {
  static auto op = find_op<decltype(fire_rate_loss)>("ssdh::fire_rate_loss");
  return op.call(a, p);
}

at::Tensor fire_rate_loss_backward(
    const at::Tensor& grad, const at::Tensor& row_mean, int64_t k, int64_t p) {
  static auto op = find_op<decltype(fire_rate_loss_backward)>(
      "ssdh::_fire_rate_loss_backward");
  return op.call(grad, row_mean, k, p);
}

std::tuple<at::Tensor, at::Tensor> latent_losses(const at::Tensor& a, int64_t p) {
  static auto op = find_op<decltype(latent_losses)>("ssdh::latent_losses");
  return op.call(a, p);
}

at::Tensor latent_losses_backward(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& row_mean, int64_t p) {
  static auto op = find_op<decltype(latent_losses_backward)>("ssdh::_latent_losses_backward");
  return op.call(grad, a, row_mean, p);
}

at::Tensor max_margin_loss(
    const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels) {
  static auto op = find_op<decltype(max_margin_loss)>("ssdh::max_margin_loss");
  return op.call(scores, labels, mask, p, signed_labels);
}

at::Tensor max_margin_loss_backward(
    const at::Tensor& grad, const at::Tensor& scores, const at::Tensor& labels,
    const std::optional<at::Tensor>& mask, int64_t p, bool signed_labels) {
  static auto op = find_op<decltype(max_margin_loss_backward)>(
      "ssdh::_max_margin_loss_backward");
  return op.call(grad, scores, labels, mask, p, signed_labels);
}

at::Tensor pack_bits(const at::Tensor& a, double threshold) {
  static auto op = find_op<decltype(pack_bits)>("ssdh::pack_bits");
  return op.call(a, threshold);
}

at::Tensor unpack_bits(const at::Tensor& packed, int64_t k) {
  static auto op = find_op<decltype(unpack_bits)>("ssdh::unpack_bits");
  return op.call(packed, k);
}

TORCH_LIBRARY(ssdh, m) {
  m.def("forcing_binary_loss(Tensor a, int p) -> Tensor");
  m.def("_forcing_binary_loss_backward(Tensor grad, Tensor a, int p) -> Tensor");
  m.def("fire_rate_loss(Tensor a, int p) -> (Tensor, Tensor)");
  m.def(
      "_fire_rate_loss_backward(Tensor grad, Tensor row_mean, int k, int p) -> Tensor");
  m.def(
      "latent_losses(Tensor a, int p) -> (Tensor, Tensor)");
  m.def(
      "_latent_losses_backward(Tensor grad, Tensor a, Tensor row_mean, int p) -> Tensor");
  m.def(
      "max_margin_loss(Tensor scores, Tensor labels, Tensor? mask, int p, "
      "bool signed_labels) -> Tensor");
  m.def(
      "_max_margin_loss_backward(Tensor grad, Tensor scores, Tensor labels, "
      "Tensor? mask, int p, bool signed_labels) -> Tensor");
  m.def("pack_bits(Tensor a, float threshold) -> Tensor");
  m.def("unpack_bits(Tensor packed, int k) -> Tensor");
  m.def("hamming_topk(Tensor queries, Tensor database, int k) -> (Tensor, Tensor)");
  m.def("hamming_radius(Tensor queries, Tensor database, int radius) -> (Tensor, Tensor, Tensor)");
  m.def("hamming_distance(Tensor queries, Tensor database) -> Tensor");
  m.def("hamming_set_distance(Tensor queries, Tensor database, Tensor segments) -> Tensor");
  m.def(
      "hamming_rank_stats(Tensor queries, Tensor database, Tensor query_labels, "
      "Tensor database_labels, int k, bool exact) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def("lrn_across_channels(Tensor x, int size, float alpha, float beta, float k) -> (Tensor, Tensor)");
  m.def(
      "_lrn_across_channels_backward(Tensor grad, Tensor x, Tensor top, Tensor scale, int size, "
      "float alpha, float beta) -> Tensor");
  m.def("linear_small_batch(Tensor x, Tensor weight) -> Tensor");
  m.def(
      "max_pool2d_with_mask(Tensor x, int[2] kernel, int[2] stride, int[2] pad, int[2] out_size) -> "
      "(Tensor, Tensor)");
  m.def("_max_pool2d_with_mask_backward(Tensor grad, Tensor mask, int[2] in_size) -> Tensor");
  m.def("channel_scale(Tensor x, Tensor scale, Tensor? bias) -> Tensor");
  m.def("_channel_scale_backward(Tensor grad, Tensor x, Tensor scale) -> (Tensor, Tensor, Tensor)");
  m.def("dropout(Tensor x, float ratio, int seed) -> (Tensor, Tensor)");
  m.def("im2col(Tensor x, int[2] kernel, int[2] stride, int[2] pad, int[2] dilation) -> Tensor");
  m.def(
      "col2im(Tensor col, int[4] shape, int[2] kernel, int[2] stride, int[2] pad, int[2] dilation) -> "
      "Tensor");
  m.def("_dropout_backward(Tensor grad, Tensor mask, float ratio) -> Tensor");
  m.def("conv_weight_grad(Tensor x, Tensor grad, int[2] kernel, int[2] pad) -> Tensor");
  m.def("linear_small_batch_input_grad(Tensor grad, Tensor weight) -> Tensor");
}

}  // namespace ssdh
