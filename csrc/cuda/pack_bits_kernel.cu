// CUDA kernels of code binarisation and bit packing, same layout as the CPU
// kernels: bit k in byte k / 8 at bit k % 8, padding bits zero.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "reduce.cuh"

namespace ssdh {
namespace cuda {
namespace {

// One thread per output byte.
template <typename scalar_t>
__global__ void pack_bits_kernel_impl(
    const scalar_t* a, int64_t n, int64_t k, int64_t bytes, double threshold, uint8_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * bytes;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / bytes;
    const int64_t first = (i % bytes) * 8;
    const int bits = static_cast<int>(k - first < 8 ? k - first : 8);
    const scalar_t* x = a + row * k + first;
    uint8_t word = 0;
    for (int bit = 0; bit < bits; ++bit) {
      word |= static_cast<uint8_t>(static_cast<double>(x[bit]) > threshold) << bit;
    }
    out[i] = word;
  }
}

__global__ void unpack_bits_kernel_impl(
    const uint8_t* packed, int64_t n, int64_t k, int64_t bytes, uint8_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * k;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / k;
    const int64_t j = i % k;
    out[i] = (packed[row * bytes + j / 8] >> (j % 8)) & 1;
  }
}

at::Tensor pack_bits_kernel(const at::Tensor& a_in, double threshold) {
  TORCH_CHECK(
      a_in.dim() == 2, "pack_bits: a must be a 2-D N x K tensor, got ", a_in.dim(),
      "-D with shape ", a_in.sizes());
  TORCH_CHECK(a_in.size(1) > 0, "pack_bits: a must have K >= 1 columns, got ", a_in.sizes());
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  const int64_t bytes = packed_bytes(k);
  at::Tensor packed = at::empty({n, bytes}, a.options().dtype(at::kByte));
  if (n == 0) {
    return packed;
  }
  AT_DISPATCH_ALL_TYPES_AND3(
      at::kHalf, at::kBFloat16, at::kBool, a.scalar_type(), "pack_bits_cuda", [&] {
        pack_bits_kernel_impl<scalar_t>
            <<<blocks_for(n * bytes), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                a.const_data_ptr<scalar_t>(), n, k, bytes, threshold,
                packed.mutable_data_ptr<uint8_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return packed;
}

at::Tensor unpack_bits_kernel(const at::Tensor& packed_in, int64_t k) {
  TORCH_CHECK(
      packed_in.dim() == 2, "unpack_bits: packed must be a 2-D N x B tensor, got ",
      packed_in.dim(), "-D with shape ", packed_in.sizes());
  TORCH_CHECK(
      packed_in.scalar_type() == at::kByte, "unpack_bits: packed must be uint8, got ",
      packed_in.scalar_type());
  TORCH_CHECK(
      k >= 1 && packed_bytes(k) == packed_in.size(1), "unpack_bits: k = ", k,
      " bits need ", packed_bytes(k), " bytes per code, packed has ", packed_in.size(1));
  c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  const int64_t n = packed.size(0);
  at::Tensor bits = at::empty({n, k}, packed.options());
  if (n == 0) {
    return bits;
  }
  unpack_bits_kernel_impl<<<blocks_for(n * k), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      packed.const_data_ptr<uint8_t>(), n, k, packed.size(1), bits.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bits;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CUDA, m) {
  m.impl("pack_bits", &pack_bits_kernel);
  m.impl("unpack_bits", &unpack_bits_kernel);
}

}  // namespace cuda
}  // namespace ssdh
