// Exact Hamming search on packed codes (CUDA). The same counting method as the
// CPU kernel: one warp per query builds the histogram of its distances in
// shared memory, finds the cut-off, then walks the database in order, 32 codes
// at a time; lanes holding the same distance rank themselves with
// __match_any_sync, so each bucket fills in database order (ties stay stable).
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "reduce.cuh"

namespace ssdh {
namespace cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kSkip = 0xffff;  // a distance no bucket holds

// Distance between a query (in shared memory) and a database code.
__device__ inline int code_distance(const uint8_t* q, const uint8_t* c, int bytes) {
  int d = 0;
  if (bytes % 8 == 0) {
    const auto* q64 = reinterpret_cast<const unsigned long long*>(q);
    const auto* c64 = reinterpret_cast<const unsigned long long*>(c);
    for (int w = 0; w < bytes / 8; ++w) {
      d += __popcll(q64[w] ^ c64[w]);
    }
  } else if (bytes % 4 == 0) {
    const auto* q32 = reinterpret_cast<const unsigned*>(q);
    const auto* c32 = reinterpret_cast<const unsigned*>(c);
    for (int w = 0; w < bytes / 4; ++w) {
      d += __popc(q32[w] ^ c32[w]);
    }
  } else {
    for (int b = 0; b < bytes; ++b) {
      d += __popc(static_cast<unsigned>(q[b] ^ c[b]));
    }
  }
  return d;
}

// Shared memory of one warp: its query code (8-byte aligned) and bucket counters.
struct WarpScratch {
  uint8_t* query;
  int* slot;
};

__device__ inline WarpScratch warp_scratch(int bytes, int buckets) {
  extern __shared__ unsigned long long shared_words[];
  const int warp = threadIdx.x / 32;
  const int query_words = (bytes + 7) / 8;
  const int slot_words = (buckets + 1) / 2;
  unsigned long long* base = shared_words + warp * (query_words + slot_words);
  return {reinterpret_cast<uint8_t*>(base), reinterpret_cast<int*>(base + query_words)};
}

__device__ inline void load_query(const uint8_t* queries, int64_t q, int bytes, uint8_t* dst) {
  for (int b = threadIdx.x % 32; b < bytes; b += 32) {
    dst[b] = queries[q * bytes + b];
  }
  __syncwarp();
}

// Each warp: slot[d] = number of codes (with distance <= limit) closer than d,
// plus `start`. Returns the total count in lane 0's view (all lanes agree).
__device__ inline int64_t bucket_offsets(
    const uint8_t* db, int64_t n, int bytes, int limit, int64_t start, WarpScratch s) {
  const int lane = threadIdx.x % 32;
  for (int b = lane; b <= limit + 1; b += 32) {
    s.slot[b] = 0;
  }
  __syncwarp();
  for (int64_t j = lane; j < n; j += 32) {
    const int d = code_distance(s.query, db + j * bytes, bytes);
    if (d <= limit) {
      atomicAdd(&s.slot[d + 1], 1);
    }
  }
  __syncwarp();
  if (lane == 0) {
    s.slot[0] = static_cast<int>(start);
    for (int b = 1; b <= limit + 1; ++b) {
      s.slot[b] += s.slot[b - 1];
    }
  }
  __syncwarp();
  return s.slot[limit + 1];
}

// Walk the database in order and place every code with distance <= limit at
// the next slot of its bucket; positions >= end are dropped.
__device__ inline void place_in_order(
    const uint8_t* db, int64_t n, int bytes, int limit, int64_t end, WarpScratch s,
    int32_t* out_dist, int64_t* out_idx) {
  const int lane = threadIdx.x % 32;
  const unsigned lower_lanes = (1u << lane) - 1;
  for (int64_t base = 0; base < n; base += 32) {
    const int64_t j = base + lane;
    int d = kSkip;
    if (j < n) {
      d = code_distance(s.query, db + j * bytes, bytes);
      if (d > limit) {
        d = kSkip;
      }
    }
    const unsigned peers = __match_any_sync(kFullMask, d);
    const int leader = __ffs(peers) - 1;
    int first = 0;
    if (lane == leader && d != kSkip) {
      first = s.slot[d];
      s.slot[d] += __popc(peers);
    }
    first = __shfl_sync(kFullMask, first, leader);
    if (d != kSkip) {
      const int64_t position = first + __popc(peers & lower_lanes);
      if (position < end) {
        out_dist[position] = d;
        out_idx[position] = j;
      }
    }
    __syncwarp();
  }
}

__global__ void topk_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes, int64_t k,
    int32_t* out_dist, int64_t* out_idx) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  const int bits = 8 * bytes;
  WarpScratch s = warp_scratch(bytes, bits + 2);
  load_query(queries, q, bytes, s.query);
  bucket_offsets(db, n, bytes, bits, 0, s);
  // The cut-off: the largest distance whose bucket starts before position k.
  int cutoff = 0;
  if (threadIdx.x % 32 == 0) {
    for (int d = 1; d <= bits; ++d) {
      if (s.slot[d] < k) {
        cutoff = d;
      }
    }
  }
  cutoff = __shfl_sync(kFullMask, cutoff, 0);
  place_in_order(db, n, bytes, cutoff, k, s, out_dist + q * k, out_idx + q * k);
}

__global__ void radius_count_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes, int radius,
    int64_t* counts) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  WarpScratch s = warp_scratch(bytes, radius + 2);
  load_query(queries, q, bytes, s.query);
  const int lane = threadIdx.x % 32;
  int64_t count = 0;
  for (int64_t j = lane; j < n; j += 32) {
    count += code_distance(s.query, db + j * bytes, bytes) <= radius;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    count += __shfl_down_sync(kFullMask, count, offset);
  }
  if (lane == 0) {
    counts[q] = count;
  }
}

__global__ void radius_fill_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes, int radius,
    const int64_t* lims, int32_t* out_dist, int64_t* out_idx) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  WarpScratch s = warp_scratch(bytes, radius + 2);
  load_query(queries, q, bytes, s.query);
  bucket_offsets(db, n, bytes, radius, lims[q], s);
  place_in_order(db, n, bytes, radius, lims[q + 1], s, out_dist, out_idx);
}

__global__ void distance_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes,
    int32_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_queries * n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i / n;
    const int64_t j = i % n;
    int d = 0;
    for (int b = 0; b < bytes; ++b) {
      d += __popc(static_cast<unsigned>(queries[q * bytes + b] ^ db[j * bytes + b]));
    }
    out[i] = d;
  }
}

// Warps per block so that each warp's scratch fits in 48 KB of shared memory.
struct Launch {
  int warps;
  size_t shared_bytes;
};

Launch plan(int bytes, int buckets) {
  const size_t per_warp = 8 * (size_t((bytes + 7) / 8) + size_t((buckets + 1) / 2));
  const int warps = static_cast<int>(std::max<size_t>(1, std::min<size_t>(8, (48 * 1024) / per_warp)));
  TORCH_CHECK(per_warp <= 48 * 1024, "hamming search: codes too long for the CUDA kernel");
  return {warps, warps * per_warp};
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(
    const at::Tensor& queries_in, const at::Tensor& database_in, int64_t k) {
  check_codes(queries_in, database_in, "hamming_topk");
  TORCH_CHECK(k >= 1 && k <= database_in.size(0),
              "hamming_topk: k must be between 1 and the database size ", database_in.size(0),
              ", got ", k);
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor database = database_in.contiguous();
  const int64_t nq = queries.size(0);
  const int bytes = static_cast<int>(queries.size(1));
  at::Tensor dist = at::empty({nq, k}, queries.options().dtype(at::kInt));
  at::Tensor idx = at::empty({nq, k}, queries.options().dtype(at::kLong));
  if (nq == 0) {
    return {dist, idx};
  }
  const Launch launch = plan(bytes, 8 * bytes + 2);
  const int64_t blocks = (nq + launch.warps - 1) / launch.warps;
  topk_kernel<<<blocks, launch.warps * 32, launch.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, database.size(0),
      bytes, k, dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hamming_radius_cuda(
    const at::Tensor& queries_in, const at::Tensor& database_in, int64_t radius) {
  check_codes(queries_in, database_in, "hamming_radius");
  TORCH_CHECK(radius >= 0, "hamming_radius: radius must be >= 0, got ", radius);
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor database = database_in.contiguous();
  const int64_t nq = queries.size(0);
  const int bytes = static_cast<int>(queries.size(1));
  const int r = static_cast<int>(std::min<int64_t>(radius, 8 * bytes));
  at::Tensor lims = at::zeros({nq + 1}, queries.options().dtype(at::kLong));
  if (nq == 0) {
    return {lims, at::empty({0}, queries.options().dtype(at::kInt)),
            at::empty({0}, queries.options().dtype(at::kLong))};
  }
  const Launch launch = plan(bytes, r + 2);
  const int64_t blocks = (nq + launch.warps - 1) / launch.warps;
  auto stream = c10::cuda::getCurrentCUDAStream();
  radius_count_kernel<<<blocks, launch.warps * 32, launch.shared_bytes, stream>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, database.size(0),
      bytes, r, lims.mutable_data_ptr<int64_t>() + 1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  lims = at::cumsum(lims, 0);
  // The output size is data dependent: one device-to-host read.
  const int64_t total = lims[nq].item<int64_t>();
  at::Tensor dist = at::empty({total}, queries.options().dtype(at::kInt));
  at::Tensor idx = at::empty({total}, queries.options().dtype(at::kLong));
  radius_fill_kernel<<<blocks, launch.warps * 32, launch.shared_bytes, stream>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, database.size(0),
      bytes, r, lims.const_data_ptr<int64_t>(), dist.mutable_data_ptr<int32_t>(),
      idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {lims, dist, idx};
}

at::Tensor hamming_distance_cuda(const at::Tensor& queries_in, const at::Tensor& database_in) {
  check_codes(queries_in, database_in, "hamming_distance");
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor database = database_in.contiguous();
  const int64_t nq = queries.size(0);
  const int64_t n = database.size(0);
  at::Tensor out = at::empty({nq, n}, queries.options().dtype(at::kInt));
  if (nq * n == 0) {
    return out;
  }
  distance_kernel<<<blocks_for(nq * n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, n,
      static_cast<int>(queries.size(1)), out.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CUDA, m) {
  m.impl("hamming_topk", &hamming_topk_cuda);
  m.impl("hamming_radius", &hamming_radius_cuda);
  m.impl("hamming_distance", &hamming_distance_cuda);
}

}  // namespace cuda
}  // namespace ssdh
