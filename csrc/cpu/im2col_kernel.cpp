// Caffe's im2col_cpu and col2im_cpu (util/im2col.cpp) for a whole batch, with the
// samples side by side in the columns:
//
//   col[(c * kh + i) * kw + j, n * L + oh * OW + ow] = x[n, c, oh * sh - ph + i * dh, ow * sw - pw + j * dw]
//                                                     (0 outside the map),  L = OH * OW
//
// so that a convolution's weight gradient is one GEMM, grad (O x N*L) . col^T, and its
// input gradient one GEMM, W^T . grad, then col2im: the adjoint, each column entry
// added back at its pixel (rows in Caffe's order: c, i, j, then oh, ow). Rows are
// shared out between threads for im2col; col2im shares out (sample, channel) maps,
// each summed by one thread in Caffe's order, so the result does not depend on the
// thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

namespace ssdh {
namespace cpu {
namespace {

struct Geometry {
  int64_t n, c, h, w, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t rows() const { return c * kh * kw; }
  int64_t cols() const { return n * oh * ow; }
};

Geometry geometry(at::IntArrayRef shape, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef pad,
                  at::IntArrayRef dilation, const char* op) {
  TORCH_CHECK(shape.size() == 4, op, ": expected an N x C x H x W shape, got ", shape);
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && pad.size() == 2 && dilation.size() == 2, op,
              ": kernel, stride, pad and dilation take two values each (height, width)");
  Geometry g{shape[0], shape[1], shape[2], shape[3], 0, 0, kernel[0], kernel[1], stride[0], stride[1],
             pad[0], pad[1], dilation[0], dilation[1]};
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1 && g.sh >= 1 && g.sw >= 1 && g.dh >= 1 && g.dw >= 1 && g.ph >= 0 &&
                  g.pw >= 0, op, ": kernel, stride and dilation must be positive and pad non-negative, got ",
              kernel, ", ", stride, ", ", dilation, ", ", pad);
  g.oh = (g.h + 2 * g.ph - (g.dh * (g.kh - 1) + 1)) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - (g.dw * (g.kw - 1) + 1)) / g.sw + 1;
  TORCH_CHECK(g.oh >= 1 && g.ow >= 1, op, ": the ", kernel, " kernel (dilation ", dilation,
              ") does not fit the padded ", g.h, " x ", g.w, " map");
  return g;
}

// The output columns [first, last) whose input column ow * sw + shift lies in [0, W).
struct Span {
  int64_t first, last;
};

inline Span inside(const Geometry& g, int64_t shift) {
  auto ceil_div = [](int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); };
  const int64_t first = std::clamp<int64_t>(ceil_div(-shift, g.sw), 0, g.ow);
  const int64_t last = std::clamp<int64_t>(ceil_div(g.w - shift, g.sw), first, g.ow);
  return {first, last};
}

// Row r of col (one (c, i, j)) for sample n: OH x OW values, zeros in the padding,
// the columns inside the map copied as one run (a memcpy at stride 1).
template <typename T>
inline void im2col_row(const T* x, const Geometry& g, int64_t r, int64_t n, T* out) {
  const int64_t c = r / (g.kh * g.kw), i = r / g.kw % g.kh, j = r % g.kw;
  const T* map = x + (n * g.c + c) * g.h * g.w;
  const int64_t shift = j * g.dw - g.pw;
  const Span span = inside(g, shift);
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    const int64_t ih = oh * g.sh - g.ph + i * g.dh;
    T* o = out + oh * g.ow;
    if (ih < 0 || ih >= g.h) {
      std::fill(o, o + g.ow, T(0));
      continue;
    }
    const T* src = map + ih * g.w + shift;
    std::fill(o, o + span.first, T(0));
    if (g.sw == 1) {
      std::memcpy(o + span.first, src + span.first, (span.last - span.first) * sizeof(T));
    } else {
      for (int64_t ow = span.first; ow < span.last; ++ow) o[ow] = src[ow * g.sw];
    }
    std::fill(o + span.last, o + g.ow, T(0));
  }
}

at::Tensor im2col_kernel(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef stride,
                         at::IntArrayRef pad, at::IntArrayRef dilation) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "im2col: expected float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 4, "im2col: expected an N x C x H x W tensor, got ", x_in.dim(), " dimensions");
  const Geometry g = geometry(x_in.sizes(), kernel, stride, pad, dilation, "im2col");
  const at::Tensor x = x_in.contiguous();
  at::Tensor col = at::empty({g.rows(), g.cols()}, x.options());
  const int64_t plane = g.oh * g.ow;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "im2col", [&] {
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* cd = col.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.rows() * g.n, std::max<int64_t>(1, 16384 / plane), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r = t / g.n, n = t % g.n;
        im2col_row(xd, g, r, n, cd + r * g.cols() + n * plane);
      }
    });
  });
  return col;
}

at::Tensor col2im_kernel(const at::Tensor& col_in, at::IntArrayRef shape, at::IntArrayRef kernel,
                         at::IntArrayRef stride, at::IntArrayRef pad, at::IntArrayRef dilation) {
  TORCH_CHECK(col_in.scalar_type() == at::kFloat || col_in.scalar_type() == at::kDouble,
              "col2im: expected float32 or float64, got ", col_in.scalar_type());
  const Geometry g = geometry(shape, kernel, stride, pad, dilation, "col2im");
  TORCH_CHECK(col_in.dim() == 2 && col_in.size(0) == g.rows() && col_in.size(1) == g.cols(),
              "col2im: expected a ", g.rows(), " x ", g.cols(), " col for shape ", shape, ", got ",
              col_in.sizes());
  const at::Tensor col = col_in.contiguous();
  at::Tensor x = at::empty({g.n, g.c, g.h, g.w}, col.options());
  const int64_t plane = g.oh * g.ow;
  AT_DISPATCH_FLOATING_TYPES(col.scalar_type(), "col2im", [&] {
    const scalar_t* cd = col.const_data_ptr<scalar_t>();
    scalar_t* xd = x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.n * g.c, std::max<int64_t>(1, 4096 / (g.kh * g.kw * plane)), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / g.c, c = t % g.c;
        scalar_t* map = xd + t * g.h * g.w;
        std::fill(map, map + g.h * g.w, scalar_t(0));
        for (int64_t i = 0; i < g.kh; ++i) {
          for (int64_t j = 0; j < g.kw; ++j) {
            const scalar_t* src = cd + ((c * g.kh + i) * g.kw + j) * g.cols() + n * plane;
            const int64_t shift = j * g.dw - g.pw;
            const Span span = inside(g, shift);
            for (int64_t oh = 0; oh < g.oh; ++oh) {
              const int64_t ih = oh * g.sh - g.ph + i * g.dh;
              if (ih < 0 || ih >= g.h) continue;
              scalar_t* dst = map + ih * g.w + shift;
              const scalar_t* s = src + oh * g.ow;
              if (g.sw == 1) {
                for (int64_t ow = span.first; ow < span.last; ++ow) dst[ow] += s[ow];
              } else {
                for (int64_t ow = span.first; ow < span.last; ++ow) dst[ow * g.sw] += s[ow];
              }
            }
          }
        }
      }
    });
  });
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("im2col", &im2col_kernel);
  m.impl("col2im", &col2im_kernel);
}

}  // namespace cpu
}  // namespace ssdh
