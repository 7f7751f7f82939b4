// Deterministic sums for the CUDA kernels: each block reduces a grid-stride
// slice to one partial, then a single block adds the partials in order.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

namespace ssdh {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;

inline int blocks_for(int64_t n, int threads = kThreads, int64_t cap = 65535) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(cap, (n + threads - 1) / threads)));
}

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a
// multiple of 32, and every thread of the block must call it.
template <typename acc_t>
__device__ inline acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) {
    warp_sums[warp] = v;
  }
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = (threadIdx.x < warps) ? warp_sums[lane] : acc_t(0);
  // Every read done before a next call may overwrite warp_sums.
  __syncthreads();
  if (warp == 0) {
    v = warp_sum(v);
  }
  return v;
}

template <typename acc_t, typename Term>
__global__ void partial_sum_kernel(int64_t n, Term term, acc_t* partial) {
  acc_t s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    s += term(i);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = s;
  }
}

// Block b adds the count partials starting at partial[b * count] in order and
// writes scale times their sum to out[b] (one block: one sum).
template <typename scalar_t, typename acc_t>
__global__ void finish_sum_kernel(const acc_t* partial, int count, acc_t scale, scalar_t* out) {
  partial += int64_t(blockIdx.x) * count;
  acc_t s = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    s += partial[i];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) {
    out[blockIdx.x] = static_cast<scalar_t>(scale * s);
  }
}

// out (a 0-d tensor of scalar_t) = scale * sum of term(i) for i in [0, n).
template <typename scalar_t, typename acc_t, typename Term>
void launch_scaled_sum(int64_t n, const Term& term, acc_t scale, at::Tensor& out) {
  const int blocks = blocks_for(n, kThreads, kMaxPartials);
  at::Tensor partial = at::empty(
      {blocks}, out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  auto stream = c10::cuda::getCurrentCUDAStream();
  partial_sum_kernel<acc_t><<<blocks, kThreads, 0, stream>>>(
      n, term, partial.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_sum_kernel<scalar_t, acc_t><<<1, kMaxPartials, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), blocks, scale, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace ssdh
