// The weight gradient of a stride-1 convolution computed directly, without the
// im2col matrix (for the image layers: a few input channels, many pixels):
//
//   dW[o, c, i, j] = sum over n, y < OH, x < OW of grad[n, o, y, x] * x[n, c, y - ph + i, x - pw + j]
//                    (0 outside the map)
//
// One work item is (o, c, i): the kw sums of a kernel row, each an 8-lane partial sum
// that takes a row of grad against the same row of x shifted by j (one load of the
// grad row for the kw products), summed over n and y in that order and then over the
// lanes in lane order. Each item is computed by one thread alone, so the result does
// not depend on the thread count. The input is read through a zero-padded copy when
// pad > 0. The AVX2 + FMA build is for float32; the portable loops take float32 and
// float64 (SSDH_CPU_LAYERS=generic picks them).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu_features.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kMaxKernelWidth = 16;

struct Shape {
  int64_t n, c, h, w;   // the (padded) input
  int64_t o, oh, ow;    // the gradient
  int64_t kh, kw;
};

// Sums of row products for item (o, c, i) into out[0..kw): lane partial sums over the
// whole 8-column chunks, then the remaining columns one by one into lane x % 8.
template <typename T>
void item_generic(const T* x, const T* grad, const Shape& s, int64_t o, int64_t c, int64_t i, T* out) {
  T acc[kMaxKernelWidth][kLanes] = {};
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t y = 0; y < s.oh; ++y) {
      const T* g = grad + ((n * s.o + o) * s.oh + y) * s.ow;
      const T* row = x + ((n * s.c + c) * s.h + y + i) * s.w;
      for (int64_t j = 0; j < s.kw; ++j) {
        for (int64_t col = 0; col < s.ow; ++col) {
          acc[j][col % kLanes] += g[col] * row[col + j];
        }
      }
    }
  }
  for (int64_t j = 0; j < s.kw; ++j) {
    T sum = 0;
    for (int l = 0; l < kLanes; ++l) {
      sum += acc[j][l];
    }
    out[j] = sum;
  }
}

// The same sums with AVX2 + FMA: one vector a lane group, the columns past the last
// whole chunk added by the scalar loop into the lanes they would have had.
template <int KW>
SSDH_TARGET_AVX2_FMA void item_avx2(const float* x, const float* grad, const Shape& s, int64_t o, int64_t c,
                                    int64_t i, float* out) {
  const int64_t kw = KW > 0 ? KW : s.kw;
  __m256 acc[kMaxKernelWidth];
  for (int64_t j = 0; j < kw; ++j) {
    acc[j] = _mm256_setzero_ps();
  }
  alignas(32) float tail[kMaxKernelWidth][kLanes] = {};
  const int64_t whole = s.ow / kLanes * kLanes;
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t y = 0; y < s.oh; ++y) {
      const float* g = grad + ((n * s.o + o) * s.oh + y) * s.ow;
      const float* row = x + ((n * s.c + c) * s.h + y + i) * s.w;
      for (int64_t col = 0; col < whole; col += kLanes) {
        const __m256 gv = _mm256_loadu_ps(g + col);
        for (int64_t j = 0; j < kw; ++j) {
          acc[j] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(row + col + j), acc[j]);
        }
      }
      for (int64_t col = whole; col < s.ow; ++col) {
        for (int64_t j = 0; j < kw; ++j) {
          tail[j][col % kLanes] += g[col] * row[col + j];
        }
      }
    }
  }
  for (int64_t j = 0; j < kw; ++j) {
    alignas(32) float lanes[kLanes];
    _mm256_store_ps(lanes, acc[j]);
    float sum = 0;
    for (int l = 0; l < kLanes; ++l) {
      sum += lanes[l] + tail[j][l];
    }
    out[j] = sum;
  }
}

using FloatItem = void (*)(const float*, const float*, const Shape&, int64_t, int64_t, int64_t, float*);

FloatItem float_item(int64_t kw) {
  if (!layer_kernels_avx2()) {
    return &item_generic<float>;
  }
  switch (kw) {
    case 3: return &item_avx2<3>;
    case 5: return &item_avx2<5>;
    default: return &item_avx2<0>;
  }
}

// Item (o, c, i) by the build for the type: float32 as float_item picks, float64 portable.
void compute_item(const float* x, const float* grad, const Shape& s, int64_t o, int64_t c, int64_t i,
                  float* out) {
  float_item(s.kw)(x, grad, s, o, c, i, out);
}

void compute_item(const double* x, const double* grad, const Shape& s, int64_t o, int64_t c, int64_t i,
                  double* out) {
  item_generic<double>(x, grad, s, o, c, i, out);
}

at::Tensor conv_weight_grad_kernel(const at::Tensor& x_in, const at::Tensor& grad_in, at::IntArrayRef kernel,
                                   at::IntArrayRef pad) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "conv_weight_grad: expected float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type(), "conv_weight_grad: grad is ", grad_in.scalar_type(),
              ", x is ", x_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 4 && grad_in.dim() == 4,
              "conv_weight_grad: x and grad must be N x C x H x W and N x O x OH x OW, got ", x_in.sizes(),
              " and ", grad_in.sizes());
  TORCH_CHECK(kernel.size() == 2 && pad.size() == 2, "conv_weight_grad: kernel and pad take two values each");
  TORCH_CHECK(kernel[0] >= 1 && kernel[1] >= 1 && kernel[1] <= kMaxKernelWidth && pad[0] >= 0 && pad[1] >= 0,
              "conv_weight_grad: kernel sides must be 1 to ", kMaxKernelWidth, " wide and pad non-negative, got ",
              kernel, " and ", pad);
  const int64_t oh = x_in.size(2) + 2 * pad[0] - kernel[0] + 1;
  const int64_t ow = x_in.size(3) + 2 * pad[1] - kernel[1] + 1;
  TORCH_CHECK(grad_in.size(0) == x_in.size(0) && grad_in.size(2) == oh && grad_in.size(3) == ow,
              "conv_weight_grad: a ", kernel, " kernel with pad ", pad, " on x ", x_in.sizes(),
              " gives grad N x O x ", oh, " x ", ow, ", got ", grad_in.sizes());
  const at::Tensor x = (pad[0] || pad[1]) ? at::constant_pad_nd(x_in, {pad[1], pad[1], pad[0], pad[0]}, 0)
                                          : x_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), grad.size(1), oh, ow, kernel[0], kernel[1]};
  at::Tensor out = at::empty({s.o, s.c, s.kh, s.kw}, x.options());
  const int64_t items = s.o * s.c * s.kh;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_weight_grad", [&] {
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    const scalar_t* gd = grad.const_data_ptr<scalar_t>();
    scalar_t* od = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, items, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t o = t / (s.c * s.kh), c = t / s.kh % s.c, i = t % s.kh;
        compute_item(xd, gd, s, o, c, i, od + t * s.kw);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("conv_weight_grad", &conv_weight_grad_kernel);
}

}  // namespace cpu
}  // namespace ssdh
