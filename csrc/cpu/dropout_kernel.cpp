// Caffe's Dropout in the TRAIN phase (DropoutLayer::Forward_cpu / Backward_cpu):
//
//   mask[i] = 1 with probability 1 - ratio, else 0
//   top[i]  = x[i] * mask[i] * scale,          scale = 1 / (1 - ratio)
//   bottom_diff[i] = top_diff[i] * mask[i] * scale
//
// The draws are a counter-based generator: element i keeps its value when the top 24
// bits of one half of splitmix64(seed + (i / 2) * golden ratio) are below
// (1 - ratio) * 2^24. So the mask is a function of (seed, i): the same at any thread
// count and for any split of the work, and each thread draws its own elements without
// a shared state. The seed comes from torch's generator (ops.dropout), so
// torch.manual_seed makes runs repeat. Caffe's own draws (boost's mt19937 through
// caffe_rng_bernoulli) are a different stream; the distribution is the same.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace ssdh {
namespace cpu {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The keep threshold on 24-bit draws: keep when draw < threshold.
uint32_t keep_threshold(double ratio) {
  return static_cast<uint32_t>(std::llround((1.0 - ratio) * 16777216.0));
}

// mask[i] for elements [first, last) (first even).
inline void draw_mask(uint64_t seed, uint32_t threshold, int64_t first, int64_t last, uint8_t* mask) {
  for (int64_t i = first; i < last; i += 2) {
    const uint64_t h = splitmix64(seed + static_cast<uint64_t>(i / 2) * kGolden);
    mask[i] = static_cast<uint32_t>(h >> 40) < threshold;
    if (i + 1 < last) {
      mask[i + 1] = static_cast<uint32_t>((h >> 8) & 0xFFFFFF) < threshold;
    }
  }
}

void check_ratio(double ratio, const char* op) {
  TORCH_CHECK(ratio >= 0.0 && ratio < 1.0, op, ": the dropout ratio must be in [0, 1), got ", ratio);
}

std::tuple<at::Tensor, at::Tensor> dropout_kernel(const at::Tensor& x_in, double ratio, int64_t seed) {
  check_ratio(ratio, "dropout");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "dropout: expected float32 or float64, got ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  at::Tensor top = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mask = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const uint32_t threshold = keep_threshold(ratio);
  const uint64_t key = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dropout", [&] {
    const scalar_t scale = static_cast<scalar_t>(1.0 / (1.0 - ratio));
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* td = top.mutable_data_ptr<scalar_t>();
    uint8_t* md = mask.mutable_data_ptr<uint8_t>();
    // Chunks of an even length, so that each hash's two halves fall in one chunk.
    const int64_t n = x.numel(), chunks = (n + 8191) / 8192;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      const int64_t first = c0 * 8192, last = std::min(n, c1 * 8192);
      draw_mask(key, threshold, first, last, md);
      for (int64_t i = first; i < last; ++i) td[i] = xd[i] * static_cast<scalar_t>(md[i]) * scale;
    });
  });
  return {top, mask};
}

at::Tensor dropout_backward_kernel(const at::Tensor& grad_in, const at::Tensor& mask_in, double ratio) {
  check_ratio(ratio, "dropout_backward");
  TORCH_CHECK(grad_in.sizes() == mask_in.sizes() && mask_in.scalar_type() == at::kByte,
              "dropout_backward: expected a uint8 mask shaped as grad ", grad_in.sizes(), ", got ",
              mask_in.scalar_type(), " ", mask_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat || grad_in.scalar_type() == at::kDouble,
              "dropout_backward: expected a float32 or float64 grad, got ", grad_in.scalar_type());
  const at::Tensor grad = grad_in.contiguous(), mask = mask_in.contiguous();
  at::Tensor out = at::empty_like(grad, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "dropout_backward", [&] {
    const scalar_t scale = static_cast<scalar_t>(1.0 / (1.0 - ratio));
    const scalar_t* gd = grad.const_data_ptr<scalar_t>();
    const uint8_t* md = mask.const_data_ptr<uint8_t>();
    scalar_t* od = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, grad.numel(), 32768, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) od[i] = gd[i] * static_cast<scalar_t>(md[i]) * scale;
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("dropout", &dropout_kernel);
  m.impl("_dropout_backward", &dropout_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
