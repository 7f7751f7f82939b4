// Caffe's MAX pooling (PoolingLayer, PoolingParameter MAX: Forward_cpu and
// Backward_cpu) for N x C x H x W blobs, with its mask:
//
//   window (ph, pw): rows [hs, he), hs = ph * stride_h - pad_h, he = min(hs + kernel_h, H),
//                    hs = max(hs, 0); columns alike
//   top[ph, pw]  = the window's maximum, scanned row by row with a strict > from the
//                  lowest finite value: on ties the first in row-major order wins, NaN
//                  and -inf never win
//   mask[ph, pw] = its index h * W + w in the map (int32), -1 where nothing beat the
//                  lowest value (a window of NaN, or one that starts past the map, as
//                  Caffe's ceil rounding makes where the stride exceeds the kernel: top
//                  = the lowest value)
//   bottom_diff[mask] += top_diff, in top order, zeros elsewhere
//
// Separable forward, per map: every input row's window maxima along W first (value
// and column, the first column on ties), then the maxima of those over each window's
// rows (the first row on ties). Rows second keeps Caffe's tie order: the first row
// that holds the maximum, and its first column holding it. Both passes run along
// contiguous outputs with branch-free selects, which the compiler vectorises (eight
// floats a step in the AVX2 build); 3 x 3 and 2 x 2 windows at strides 1 and 2 are
// built with their sizes known. Maps are shared out between threads; each output is
// written by one thread in a fixed order, so results do not depend on the thread
// count. SSDH_CPU_LAYERS=generic|avx2 picks the build (cpu_features.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_features.h"

namespace ssdh {
namespace cpu {
namespace {

struct Geometry {
  int64_t h, w, oh, ow;  // input and output map sizes
  int64_t kh, kw, sh, sw, ph, pw;
};

// Each row's window maxima along W: value[j] and its column (-1: none beat the lowest).
template <typename T, int KW, int SW>
__attribute__((always_inline)) inline void row_maxima(const T* row, const Geometry& g, T* value,
                                                      int32_t* column) {
  const int64_t kw = KW > 0 ? KW : g.kw, sw = SW > 0 ? SW : g.sw;
  const T lowest = std::numeric_limits<T>::lowest();
  auto clipped = [&](int64_t j) {
    int64_t s = j * sw - g.pw;
    const int64_t e = std::min(s + kw, g.w);
    s = std::max<int64_t>(s, 0);
    T best = lowest;
    int32_t at = -1;
    for (int64_t c = s; c < e; ++c) {
      if (row[c] > best) {
        best = row[c];
        at = static_cast<int32_t>(c);
      }
    }
    value[j] = best;
    column[j] = at;
  };
  // Windows wholly inside the row: j * sw - pw >= 0 and j * sw - pw + kw <= W.
  const int64_t first = std::min(g.ow, (g.pw + sw - 1) / sw);
  const int64_t last = std::max(first, std::min(g.ow, g.w - kw + g.pw >= 0 ? (g.w - kw + g.pw) / sw + 1 : 0));
  for (int64_t j = 0; j < first; ++j) clipped(j);
  for (int64_t j = first; j < last; ++j) {
    const int64_t s = j * sw - g.pw;
    T best = lowest;
    int32_t at = -1;
    for (int64_t c = 0; c < kw; ++c) {
      const T v = row[s + c];
      const bool greater = v > best;
      best = greater ? v : best;
      at = greater ? static_cast<int32_t>(s + c) : at;
    }
    value[j] = best;
    column[j] = at;
  }
  for (int64_t j = last; j < g.ow; ++j) clipped(j);
}

// One map: x (H x W) -> top, mask (OH x OW); value / column: H x OW scratch.
template <typename T, int KW, int SW>
__attribute__((always_inline)) inline void pool_map(const T* x, const Geometry& g, T* top, int32_t* mask,
                                                    T* value, int32_t* column) {
  for (int64_t r = 0; r < g.h; ++r) {
    row_maxima<T, KW, SW>(x + r * g.w, g, value + r * g.ow, column + r * g.ow);
  }
  const int32_t width = static_cast<int32_t>(g.w);
  for (int64_t i = 0; i < g.oh; ++i) {
    int64_t hs = i * g.sh - g.ph;
    const int64_t he = std::min(hs + g.kh, g.h);
    hs = std::max<int64_t>(hs, 0);
    T* out = top + i * g.ow;
    int32_t* at = mask + i * g.ow;
    if (hs >= he) {  // a window past the map's last row (a stride above the kernel)
      std::fill(out, out + g.ow, std::numeric_limits<T>::lowest());
      std::fill(at, at + g.ow, -1);
      continue;
    }
    const T* v = value + hs * g.ow;
    const int32_t* c = column + hs * g.ow;
    const int32_t base = static_cast<int32_t>(hs) * width;
    for (int64_t j = 0; j < g.ow; ++j) {
      out[j] = v[j];
      at[j] = c[j] < 0 ? -1 : base + c[j];
    }
    for (int64_t r = hs + 1; r < he; ++r) {
      const T* vr = value + r * g.ow;
      const int32_t* cr = column + r * g.ow;
      const int32_t row_base = static_cast<int32_t>(r) * width;
      for (int64_t j = 0; j < g.ow; ++j) {
        const bool greater = vr[j] > out[j];
        out[j] = greater ? vr[j] : out[j];
        at[j] = greater ? row_base + cr[j] : at[j];
      }
    }
  }
}

template <typename T, int KW, int SW>
__attribute__((always_inline)) inline void pool_maps(const T* x, const Geometry& g, int64_t first, int64_t last,
                                                     T* top, int32_t* mask) {
  std::vector<T> value(g.h * g.ow);
  std::vector<int32_t> column(g.h * g.ow);
  for (int64_t m = first; m < last; ++m) {
    pool_map<T, KW, SW>(x + m * g.h * g.w, g, top + m * g.oh * g.ow, mask + m * g.oh * g.ow, value.data(),
                        column.data());
  }
}

template <typename T, int KW, int SW>
SSDH_TARGET_AVX2_FMA void pool_maps_avx2(const T* x, const Geometry& g, int64_t first, int64_t last, T* top,
                              int32_t* mask) {
  pool_maps<T, KW, SW>(x, g, first, last, top, mask);
}

template <typename T, int KW, int SW>
void pool_maps_generic(const T* x, const Geometry& g, int64_t first, int64_t last, T* top, int32_t* mask) {
  pool_maps<T, KW, SW>(x, g, first, last, top, mask);
}

template <typename T>
using PoolMaps = void (*)(const T*, const Geometry&, int64_t, int64_t, T*, int32_t*);

template <typename T, int KW, int SW>
PoolMaps<T> build() {
  return layer_kernels_avx2() ? &pool_maps_avx2<T, KW, SW> : &pool_maps_generic<T, KW, SW>;
}

// The build for this window: sizes known at compile time for the common ones.
template <typename T>
PoolMaps<T> pick(const Geometry& g) {
  if (g.kw == 3 && g.sw == 2) return build<T, 3, 2>();
  if (g.kw == 3 && g.sw == 1) return build<T, 3, 1>();
  if (g.kw == 2 && g.sw == 2) return build<T, 2, 2>();
  return build<T, 0, 0>();
}

int64_t maps_per_task(int64_t map_size) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, map_size));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_mask_kernel(const at::Tensor& x_in, at::IntArrayRef kernel,
                                                               at::IntArrayRef stride, at::IntArrayRef pad,
                                                               at::IntArrayRef out_size) {
  const char* op = "max_pool2d_with_mask";
  TORCH_CHECK(x_in.dim() == 4, op, ": expected an N x C x H x W tensor, got ", x_in.dim(), " dimensions");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
              ": expected float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && pad.size() == 2 && out_size.size() == 2, op,
              ": kernel, stride, pad and out_size take two values each (height, width)");
  const Geometry g{x_in.size(2), x_in.size(3), out_size[0], out_size[1],
                   kernel[0],    kernel[1],    stride[0],   stride[1], pad[0], pad[1]};
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1 && g.sh >= 1 && g.sw >= 1, op, ": kernel and stride must be positive, got ",
              kernel, " and ", stride);
  TORCH_CHECK(g.ph >= 0 && g.pw >= 0 && g.ph < g.kh && g.pw < g.kw, op, ": pad ", pad,
              " must be non-negative and smaller than the kernel ", kernel);
  TORCH_CHECK(g.h * g.w <= std::numeric_limits<int32_t>::max(), op, ": a ", g.h, " x ", g.w,
              " map is too large for an int32 mask");
  TORCH_CHECK(g.oh >= 1 && g.ow >= 1, op, ": out_size must be positive, got ", out_size);
  const at::Tensor x = x_in.contiguous();
  const int64_t maps = x.size(0) * x.size(1);
  at::Tensor top = at::empty({x.size(0), x.size(1), g.oh, g.ow}, x.options());
  at::Tensor mask = at::empty({x.size(0), x.size(1), g.oh, g.ow}, x.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2d_with_mask", [&] {
    const PoolMaps<scalar_t> pool = pick<scalar_t>(g);
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* td = top.mutable_data_ptr<scalar_t>();
    int32_t* md = mask.mutable_data_ptr<int32_t>();
    at::parallel_for(0, maps, maps_per_task(g.h * g.w),
                     [&](int64_t first, int64_t last) { pool(xd, g, first, last, td, md); });
  });
  return {top, mask};
}

at::Tensor max_pool2d_with_mask_backward_kernel(const at::Tensor& grad_in, const at::Tensor& mask_in,
                                                at::IntArrayRef in_size) {
  const char* op = "max_pool2d_with_mask_backward";
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.sizes() == mask_in.sizes(), op,
              ": grad and mask must be N x C x OH x OW of one shape, got ", grad_in.sizes(), " and ",
              mask_in.sizes());
  TORCH_CHECK(mask_in.scalar_type() == at::kInt, op, ": the mask must be int32, got ", mask_in.scalar_type());
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat || grad_in.scalar_type() == at::kDouble, op,
              ": expected a float32 or float64 grad, got ", grad_in.scalar_type());
  TORCH_CHECK(in_size.size() == 2 && in_size[0] >= 1 && in_size[1] >= 1, op,
              ": in_size takes two positive values, got ", in_size);
  const at::Tensor grad = grad_in.contiguous(), mask = mask_in.contiguous();
  const int64_t map = in_size[0] * in_size[1], out_map = grad.size(2) * grad.size(3);
  const int64_t maps = grad.size(0) * grad.size(1);
  at::Tensor out = at::empty({grad.size(0), grad.size(1), in_size[0], in_size[1]}, grad.options());
  std::atomic<bool> outside{false};
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "max_pool2d_with_mask_backward", [&] {
    const scalar_t* gd = grad.const_data_ptr<scalar_t>();
    const int32_t* md = mask.const_data_ptr<int32_t>();
    scalar_t* od = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, maps, maps_per_task(map), [&](int64_t first, int64_t last) {
      std::fill(od + first * map, od + last * map, scalar_t(0));
      for (int64_t m = first; m < last; ++m) {
        scalar_t* o = od + m * map;
        const scalar_t* g = gd + m * out_map;
        const int32_t* at = md + m * out_map;
        for (int64_t i = 0; i < out_map; ++i) {
          const int32_t index = at[i];
          if (index >= 0 && index < map) {
            o[index] += g[i];
          } else if (index != -1) {
            outside.store(true, std::memory_order_relaxed);
          }
        }
      }
    });
  });
  TORCH_CHECK(!outside.load(), op, ": the mask holds indices outside the ", in_size[0], " x ", in_size[1],
              " map (expected -1 or 0 .. ", map - 1, ")");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("max_pool2d_with_mask", &max_pool2d_with_mask_kernel);
  m.impl("_max_pool2d_with_mask_backward", &max_pool2d_with_mask_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
