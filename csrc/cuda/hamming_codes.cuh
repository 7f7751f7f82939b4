// Packed codes on the GPU, shared by the Hamming kernels: a code row read as
// little-endian 64-bit words (zero padded past its last byte), the distance of
// a query held as such words to a database row, and the per-warp shared scratch
// of the counting kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace ssdh {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Word w of a code row of `bytes` bytes. Rows start at multiples of `bytes`
// from an 8-byte aligned base, so a row is aligned to the largest power of two
// dividing `bytes`: the widest loads that alignment allows.
__device__ inline unsigned long long code_word(const uint8_t* row, int bytes, int w) {
  const uint8_t* p = row + 8 * w;
  const int len = min(8, bytes - 8 * w);
  if (bytes % 8 == 0) {
    return *reinterpret_cast<const unsigned long long*>(p);
  }
  unsigned long long v = 0;
  if (bytes % 4 == 0) {
    for (int i = 0; i < len; i += 4) {
      v |= static_cast<unsigned long long>(*reinterpret_cast<const unsigned*>(p + i)) << (8 * i);
    }
  } else if (bytes % 2 == 0) {
    for (int i = 0; i < len; i += 2) {
      v |= static_cast<unsigned long long>(*reinterpret_cast<const unsigned short*>(p + i))
           << (8 * i);
    }
  } else {
    for (int i = 0; i < len; ++i) {
      v |= static_cast<unsigned long long>(p[i]) << (8 * i);
    }
  }
  return v;
}

__device__ inline int words_of(int bytes) { return (bytes + 7) / 8; }

// Distance between a query (its words) and database row `row`.
__device__ inline int code_distance(const unsigned long long* query, const uint8_t* row, int bytes) {
  int d = 0;
  for (int w = 0; w < words_of(bytes); ++w) {
    d += __popcll(query[w] ^ code_word(row, bytes, w));
  }
  return d;
}

// Shared memory of one warp: its query's words, then int counters.
struct WarpScratch {
  unsigned long long* query;
  int* slot;
};

inline size_t warp_scratch_bytes(int bytes, int counters) {
  return 8 * (size_t((bytes + 7) / 8) + size_t((counters + 1) / 2));
}

__device__ inline WarpScratch warp_scratch(int bytes, int counters) {
  extern __shared__ unsigned long long shared_words[];
  const int warp = threadIdx.x / 32;
  const int query_words = words_of(bytes);
  unsigned long long* base = shared_words + warp * (query_words + (counters + 1) / 2);
  return {base, reinterpret_cast<int*>(base + query_words)};
}

// The warp copies query q's words into its scratch.
__device__ inline void load_query(const uint8_t* queries, int64_t q, int bytes, WarpScratch s) {
  for (int w = threadIdx.x % 32; w < words_of(bytes); w += 32) {
    s.query[w] = code_word(queries + q * bytes, bytes, w);
  }
  __syncwarp();
}

// Warps per block (at most 8) whose scratch fits in 48 KB of shared memory.
struct WarpLaunch {
  int warps;
  size_t shared_bytes;
};

inline WarpLaunch plan_warps(int bytes, int counters, const char* op) {
  const size_t per_warp = warp_scratch_bytes(bytes, counters);
  TORCH_CHECK(per_warp <= 48 * 1024, op, ": codes of ", 8 * bytes,
              " bits are too long for the CUDA kernel (evaluate on the CPU)");
  const int warps = static_cast<int>(std::min<size_t>(8, (48 * 1024) / per_warp));
  return {warps, warps * per_warp};
}

// code_word's wide loads need an 8-byte aligned base (a view can start anywhere).
inline at::Tensor aligned_codes(const at::Tensor& codes) {
  at::Tensor out = codes.contiguous();
  if (reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 8 != 0) {
    out = out.clone();
  }
  return out;
}

}  // namespace cuda
}  // namespace ssdh
