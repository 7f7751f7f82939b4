// Caffe's local response normalisation across channels (LRNLayer's
// CrossChannelForward_cpu and CrossChannelBackward_cpu), for N x C x H x W blobs:
//
//   scale = k + alpha / size * (sum of x^2 over the `size` channels centred on c)
//   top = x * scale^-beta
//   bottom_diff = top_diff * scale^-beta
//                 - 2 alpha beta / size * x * (sum over the same window of top_diff * top / scale)
//
// The window sums are running sums over channels, as Caffe keeps them (the channel
// entering the window added, the one leaving it subtracted), over runs of pixels
// that stay in cache; samples and runs are shared out between threads. beta = 0.75
// (AlexNet's, GoogLeNet's) takes two square roots instead of a pow.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace ssdh {
namespace cpu {
namespace {

constexpr int64_t kPixelRun = 512;

struct Shape {
  int64_t n, c, hw, runs;
};

Shape check(const at::Tensor& x, int64_t size, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected an N x C x H x W tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(size >= 1 && size % 2 == 1, op, ": size must be odd and positive, got ", size);
  const int64_t hw = x.size(2) * x.size(3);
  return {x.size(0), x.size(1), hw, std::max<int64_t>(1, (hw + kPixelRun - 1) / kPixelRun)};
}

template <typename T>
inline T negative_power(T s, double beta) {
  if (beta == 0.75) {
    return T(1) / std::sqrt(s * std::sqrt(s));
  }
  return std::pow(s, static_cast<T>(-beta));
}

// body(n, first pixel, pixels) for every run of every sample, in parallel.
template <typename Body>
void for_each_run(const Shape& s, const Body& body) {
  at::parallel_for(0, s.n * s.runs, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / s.runs;
      const int64_t p0 = (t % s.runs) * kPixelRun;
      body(n, p0, std::min(kPixelRun, s.hw - p0));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> lrn_across_channels_kernel(
    const at::Tensor& x_in, int64_t size, double alpha, double beta, double k) {
  const Shape s = check(x_in, size, "lrn_across_channels");
  const at::Tensor x = x_in.contiguous();
  at::Tensor top = at::empty_like(x);
  at::Tensor scale = at::empty_like(x);
  const int64_t pre = (size - 1) / 2;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrn_across_channels", [&] {
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* td = top.mutable_data_ptr<scalar_t>();
    scalar_t* sd = scale.mutable_data_ptr<scalar_t>();
    const scalar_t over = static_cast<scalar_t>(alpha / size);
    const scalar_t kk = static_cast<scalar_t>(k);
    for_each_run(s, [&](int64_t n, int64_t p0, int64_t len) {
      std::vector<scalar_t> window(len, scalar_t(0));
      const int64_t base = n * s.c * s.hw + p0;
      auto channel = [&](int64_t c) { return xd + base + c * s.hw; };
      for (int64_t c = 0; c < std::min(pre, s.c); ++c) {
        const scalar_t* xc = channel(c);
        for (int64_t i = 0; i < len; ++i) window[i] += xc[i] * xc[i];
      }
      for (int64_t c = 0; c < s.c; ++c) {
        if (c + pre < s.c) {
          const scalar_t* xe = channel(c + pre);
          for (int64_t i = 0; i < len; ++i) window[i] += xe[i] * xe[i];
        }
        const scalar_t* xc = channel(c);
        scalar_t* tc = td + base + c * s.hw;
        scalar_t* sc = sd + base + c * s.hw;
        for (int64_t i = 0; i < len; ++i) {
          const scalar_t sv = kk + over * window[i];
          sc[i] = sv;
          tc[i] = xc[i] * negative_power(sv, beta);
        }
        if (c - pre >= 0) {
          const scalar_t* xl = channel(c - pre);
          for (int64_t i = 0; i < len; ++i) window[i] -= xl[i] * xl[i];
        }
      }
    });
  });
  return {top, scale};
}

at::Tensor lrn_across_channels_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& top_in, const at::Tensor& scale_in,
    int64_t size, double alpha, double beta) {
  const Shape s = check(x_in, size, "lrn_across_channels_backward");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes() && top_in.sizes() == x_in.sizes() &&
                  scale_in.sizes() == x_in.sizes(),
              "lrn_across_channels_backward: grad, x, top and scale must have one shape");
  const at::Tensor grad = grad_in.contiguous().to(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), top = top_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t pre = (size - 1) / 2;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrn_across_channels_backward", [&] {
    const scalar_t* gd = grad.const_data_ptr<scalar_t>();
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    const scalar_t* td = top.const_data_ptr<scalar_t>();
    const scalar_t* sd = scale.const_data_ptr<scalar_t>();
    scalar_t* od = out.mutable_data_ptr<scalar_t>();
    const scalar_t cache = static_cast<scalar_t>(2.0 * alpha * beta / size);
    for_each_run(s, [&](int64_t n, int64_t p0, int64_t len) {
      std::vector<scalar_t> window(len, scalar_t(0));
      const int64_t base = n * s.c * s.hw + p0;
      auto add_ratio = [&](int64_t c, scalar_t sign) {
        const int64_t at = base + c * s.hw;
        for (int64_t i = 0; i < len; ++i) window[i] += sign * gd[at + i] * td[at + i] / sd[at + i];
      };
      for (int64_t c = 0; c < std::min(pre, s.c); ++c) add_ratio(c, scalar_t(1));
      for (int64_t c = 0; c < s.c; ++c) {
        if (c + pre < s.c) add_ratio(c + pre, scalar_t(1));
        const int64_t at = base + c * s.hw;
        for (int64_t i = 0; i < len; ++i) {
          od[at + i] = gd[at + i] * negative_power(sd[at + i], beta) - cache * xd[at + i] * window[i];
        }
        if (c - pre >= 0) add_ratio(c - pre, scalar_t(-1));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("lrn_across_channels", &lrn_across_channels_kernel);
  m.impl("_lrn_across_channels_backward", &lrn_across_channels_backward_kernel);
}

}  // namespace cpu
}  // namespace ssdh
