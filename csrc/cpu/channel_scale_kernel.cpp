// Caffe's Scale layer with its optional bias (ScaleLayer, BiasLayer) on a blob viewed
// as outer x C x inner (the scale covers the C axes in the middle):
//
//   top[o, c, i]   = x[o, c, i] * scale[c] (+ bias[c])
//   bottom_diff    = top_diff * scale[c]
//   scale_diff[c]  = sum over o, i of top_diff * x
//   bias_diff[c]   = sum over o, i of top_diff
//
// The backward is one pass over top_diff and x for all three (torch's autograd of the
// same product makes the product top_diff * x as a tensor, then reduces it and
// top_diff separately). Channels are shared out between threads; each channel's sums
// run over its outer rows in order into a fixed set of partial sums (16 lanes in the
// AVX2 float32 build, 8 otherwise) added in a fixed order at the end, so the result
// does not depend on the thread count.
// SSDH_CPU_LAYERS=generic|avx2 picks the build (cpu_features.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "cpu_features.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int kLanes = 8;

struct Layout {
  int64_t outer, channels, inner;
};

template <typename T>
__attribute__((always_inline)) inline void scale_rows(const T* x, const T* scale, const T* bias, T* y,
                                                      const Layout& l, int64_t first, int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    const int64_t c = r % l.channels;
    const T s = scale[c];
    const T* xr = x + r * l.inner;
    T* yr = y + r * l.inner;
    if (bias != nullptr) {
      const T b = bias[c];
      for (int64_t i = 0; i < l.inner; ++i) yr[i] = xr[i] * s + b;
    } else {
      for (int64_t i = 0; i < l.inner; ++i) yr[i] = xr[i] * s;
    }
  }
}

// Channels [first, last): dx, and each channel's sums of g * x and of g.
template <typename T>
__attribute__((always_inline)) inline void scale_backward_channels(const T* g, const T* x, const T* scale, T* dx,
                                                                   T* dscale, T* dbias, const Layout& l,
                                                                   int64_t first, int64_t last) {
  for (int64_t c = first; c < last; ++c) {
    const T s = scale[c];
    T gx[kLanes] = {}, gs[kLanes] = {};
    for (int64_t o = 0; o < l.outer; ++o) {
      const int64_t at = (o * l.channels + c) * l.inner;
      const T* __restrict__ gr = g + at;
      const T* __restrict__ xr = x + at;
      T* __restrict__ dr = dx + at;
      int64_t i = 0;
      for (; i + kLanes <= l.inner; i += kLanes) {
        for (int k = 0; k < kLanes; ++k) {
          dr[i + k] = gr[i + k] * s;
          gx[k] += gr[i + k] * xr[i + k];
          gs[k] += gr[i + k];
        }
      }
      for (int k = 0; i < l.inner; ++i, ++k) {
        dr[i] = gr[i] * s;
        gx[k] += gr[i] * xr[i];
        gs[k] += gr[i];
      }
    }
    T sum_gx = 0, sum_g = 0;
    for (int k = 0; k < kLanes; ++k) {
      sum_gx += gx[k];
      sum_g += gs[k];
    }
    dscale[c] = sum_gx;
    dbias[c] = sum_g;
  }
}

template <typename T>
SSDH_TARGET_AVX2_FMA void scale_rows_avx2(const T* x, const T* scale, const T* bias, T* y, const Layout& l, int64_t first,
                               int64_t last) {
  scale_rows(x, scale, bias, y, l, first, last);
}

template <typename T>
void scale_rows_generic(const T* x, const T* scale, const T* bias, T* y, const Layout& l, int64_t first,
                        int64_t last) {
  scale_rows(x, scale, bias, y, l, first, last);
}

template <typename T>
SSDH_TARGET_AVX2_FMA void scale_backward_avx2(const T* g, const T* x, const T* scale, T* dx, T* dscale, T* dbias,
                                   const Layout& l, int64_t first, int64_t last) {
  scale_backward_channels(g, x, scale, dx, dscale, dbias, l, first, last);
}

// float32 with AVX2: two vectors of each sum (16 values a step), FMA for g * x.
SSDH_TARGET_AVX2_FMA float sum8(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

template <>
SSDH_TARGET_AVX2_FMA void scale_backward_avx2<float>(const float* g, const float* x, const float* scale, float* dx,
                                          float* dscale, float* dbias, const Layout& l, int64_t first,
                                          int64_t last) {
  for (int64_t c = first; c < last; ++c) {
    const float s = scale[c];
    const __m256 vs = _mm256_set1_ps(s);
    __m256 gx0 = _mm256_setzero_ps(), gx1 = _mm256_setzero_ps();
    __m256 gs0 = _mm256_setzero_ps(), gs1 = _mm256_setzero_ps();
    float gx_tail = 0.f, gs_tail = 0.f;
    for (int64_t o = 0; o < l.outer; ++o) {
      const int64_t at = (o * l.channels + c) * l.inner;
      const float* gr = g + at;
      const float* xr = x + at;
      float* dr = dx + at;
      int64_t i = 0;
      for (; i + 16 <= l.inner; i += 16) {
        const __m256 g0 = _mm256_loadu_ps(gr + i), g1 = _mm256_loadu_ps(gr + i + 8);
        _mm256_storeu_ps(dr + i, _mm256_mul_ps(g0, vs));
        _mm256_storeu_ps(dr + i + 8, _mm256_mul_ps(g1, vs));
        gx0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(xr + i), gx0);
        gx1 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(xr + i + 8), gx1);
        gs0 = _mm256_add_ps(gs0, g0);
        gs1 = _mm256_add_ps(gs1, g1);
      }
      for (; i < l.inner; ++i) {
        dr[i] = gr[i] * s;
        gx_tail += gr[i] * xr[i];
        gs_tail += gr[i];
      }
    }
    dscale[c] = sum8(_mm256_add_ps(gx0, gx1)) + gx_tail;
    dbias[c] = sum8(_mm256_add_ps(gs0, gs1)) + gs_tail;
  }
}

template <typename T>
void scale_backward_generic(const T* g, const T* x, const T* scale, T* dx, T* dscale, T* dbias, const Layout& l,
                            int64_t first, int64_t last) {
  scale_backward_channels(g, x, scale, dx, dscale, dbias, l, first, last);
}

Layout check(const at::Tensor& x, const at::Tensor& scale, const char* op) {
  TORCH_CHECK(x.dim() == 3, op, ": expected x as outer x C x inner (3-D), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == x.size(1) && scale.scalar_type() == x.scalar_type(), op,
              ": the scale must be a vector of the ", x.size(1), " channels in x's dtype, got ", scale.sizes(), " ",
              scale.scalar_type());
  return {x.size(0), x.size(1), x.size(2)};
}

int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

at::Tensor channel_scale_kernel(const at::Tensor& x_in, const at::Tensor& scale_in,
                                const std::optional<at::Tensor>& bias_in) {
  const Layout l = check(x_in, scale_in, "channel_scale");
  if (bias_in.has_value()) {
    TORCH_CHECK(bias_in->sizes() == scale_in.sizes() && bias_in->scalar_type() == x_in.scalar_type(),
                "channel_scale: the bias must be shaped as the scale, ", scale_in.sizes(), ", got ",
                bias_in->sizes());
  }
  const at::Tensor x = x_in.contiguous(), scale = scale_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_scale", [&] {
    const auto rows = layer_kernels_avx2() ? &scale_rows_avx2<scalar_t> : &scale_rows_generic<scalar_t>;
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, l.outer * l.channels, grain(l.inner), [&](int64_t first, int64_t last) {
      rows(x.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(), b, y.mutable_data_ptr<scalar_t>(), l,
           first, last);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_scale_backward_kernel(const at::Tensor& grad_in,
                                                                             const at::Tensor& x_in,
                                                                             const at::Tensor& scale_in) {
  const Layout l = check(x_in, scale_in, "channel_scale_backward");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "channel_scale_backward: grad ", grad_in.sizes(),
              " and x ", x_in.sizes(), " must have one shape");
  const at::Tensor grad = grad_in.contiguous().to(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dscale = at::empty({l.channels}, scale.options());
  at::Tensor dbias = at::empty({l.channels}, scale.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_scale_backward", [&] {
    const auto channels =
        layer_kernels_avx2() ? &scale_backward_avx2<scalar_t> : &scale_backward_generic<scalar_t>;
    at::parallel_for(0, l.channels, grain(l.outer * l.inner), [&](int64_t first, int64_t last) {
      channels(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(),
               dx.mutable_data_ptr<scalar_t>(), dscale.mutable_data_ptr<scalar_t>(),
               dbias.mutable_data_ptr<scalar_t>(), l, first, last);
    });
  });
  return {dx, dscale, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("channel_scale", &channel_scale_kernel);
  m.impl("_channel_scale_backward", &channel_scale_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
