// CPU kernels of code binarisation and bit packing. Layout (see ssdh_port.ops):
// uint8 words, bit k of a code in byte k / 8 at bit position k % 8 (least
// significant bit first), padding bits of the last byte zero.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"

namespace ssdh {
namespace cpu {
namespace {

constexpr int64_t kRowGrain = 256;

at::Tensor pack_bits_kernel(const at::Tensor& a_in, double threshold) {
  TORCH_CHECK(
      a_in.dim() == 2, "pack_bits: a must be a 2-D N x K tensor, got ", a_in.dim(),
      "-D with shape ", a_in.sizes());
  TORCH_CHECK(a_in.size(1) > 0, "pack_bits: a must have K >= 1 columns, got ", a_in.sizes());
  const at::Tensor a = a_in.contiguous();
  const int64_t n = a.size(0);
  const int64_t k = a.size(1);
  const int64_t bytes = packed_bytes(k);
  at::Tensor packed = at::empty({n, bytes}, a.options().dtype(at::kByte));
  AT_DISPATCH_ALL_TYPES_AND3(
      at::kHalf, at::kBFloat16, at::kBool, a.scalar_type(), "pack_bits", [&] {
        const scalar_t* in = a.const_data_ptr<scalar_t>();
        uint8_t* out = packed.mutable_data_ptr<uint8_t>();
        at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) {
            const scalar_t* x = in + row * k;
            uint8_t* code = out + row * bytes;
            for (int64_t byte = 0; byte < bytes; ++byte) {
              const int64_t first = byte * 8;
              const int bits = static_cast<int>(std::min<int64_t>(8, k - first));
              uint8_t word = 0;
              for (int bit = 0; bit < bits; ++bit) {
                // Strictly greater: a == threshold gives 0, as in the original.
                word |= static_cast<uint8_t>(double(x[first + bit]) > threshold) << bit;
              }
              code[byte] = word;
            }
          }
        });
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
  const at::Tensor packed = packed_in.contiguous();
  const int64_t n = packed.size(0);
  const int64_t bytes = packed.size(1);
  at::Tensor bits = at::empty({n, k}, packed.options());
  const uint8_t* in = packed.const_data_ptr<uint8_t>();
  uint8_t* out = bits.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t j = 0; j < k; ++j) {
        out[row * k + j] = (in[row * bytes + j / 8] >> (j % 8)) & 1;
      }
    }
  });
  return bits;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("pack_bits", &pack_bits_kernel);
  m.impl("unpack_bits", &unpack_bits_kernel);
}

}  // namespace cpu
}  // namespace ssdh
