// Exact Hamming search on packed codes (CUDA); ties stay in database order.
//
// Two top-k paths:
// * the counting path (any code length, any k): one warp per query builds the
//   histogram of its distances in shared memory, finds the cut-off, then walks
//   the database in order, 32 codes at a time; lanes holding the same distance
//   rank themselves with __match_any_sync, so each bucket fills in database
//   order. Every query reads the whole database twice.
// * the filtering path (codes of at most 1,024 bits, k <= kMaxTiledK), for large
//   databases: a strided sample of the database gives each query a distance
//   bound expected to keep about kTargetFactor * k codes; one tiled pass
//   compares blocks of queries (held in registers) with every code and appends
//   the codes within the bound to the query's candidate list; a block per query
//   sorts its candidates by (distance, index) and keeps k. A query whose list
//   holds fewer than k codes or overflowed falls back to the counting path, so
//   the result is exact whatever the data.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_radix_sort.cuh>

#include <algorithm>

#include "../checks.h"
#include "hamming_codes.cuh"
#include "reduce.cuh"

namespace ssdh {
namespace cuda {
namespace {

constexpr int kSkip = 0xffff;  // a distance no bucket holds

// ---------------------------------------------------------------- counting path

// Each warp: slot[d] = number of codes with distance <= limit closer than d,
// plus `start`, over the codes at rows 0, stride, 2 * stride, ... (count of them).
__device__ inline void bucket_offsets(
    const uint8_t* db, int64_t count, int64_t stride, int bytes, int limit, int64_t start,
    WarpScratch s) {
  const int lane = threadIdx.x % 32;
  for (int b = lane; b <= limit + 1; b += 32) {
    s.slot[b] = 0;
  }
  __syncwarp();
  for (int64_t i = lane; i < count; i += 32) {
    const int d = code_distance(s.query, db + i * stride * bytes, bytes);
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
}

// The cut-off of a top-k: the largest distance whose bucket starts before k
// (slot as bucket_offsets leaves it, start 0). All lanes get it.
__device__ inline int topk_cutoff(const WarpScratch& s, int bits, int64_t k) {
  int cutoff = 0;
  if (threadIdx.x % 32 == 0) {
    for (int d = 1; d <= bits; ++d) {
      if (s.slot[d] < k) {
        cutoff = d;
      }
    }
  }
  return __shfl_sync(kFullMask, cutoff, 0);
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

// One warp per query. With `fits` given (the filtering path's candidate
// counts), only the queries whose candidate list cannot give the answer run.
__global__ void topk_counting_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes, int64_t k,
    const int* candidate_count, int capacity, int32_t* out_dist, int64_t* out_idx) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  if (candidate_count != nullptr && candidate_count[q] >= k && candidate_count[q] <= capacity) {
    return;
  }
  const int bits = 8 * bytes;
  WarpScratch s = warp_scratch(bytes, bits + 2);
  load_query(queries, q, bytes, s);
  bucket_offsets(db, n, 1, bytes, bits, 0, s);
  const int cutoff = topk_cutoff(s, bits, k);
  place_in_order(db, n, bytes, cutoff, k, s, out_dist + q * k, out_idx + q * k);
}

// ---------------------------------------------------------------- filtering path

// The bound aims at about kTargetFactor * k candidates; one distance more
// multiplies the count by a few for codes of 32-256 bits (by less for longer
// codes, whose distances spread wider), so k <= kMaxTiledK keeps the list within
// kCapacity (the sort block's size) in most queries.
constexpr int kMaxTiledWords = 16;      // codes of up to 1,024 bits
constexpr int kMaxTiledK = 256;
constexpr int kTargetFactor = 3;
constexpr int kSortThreads = 256;
constexpr int kSortItems = 16;
constexpr int kCapacity = kSortThreads * kSortItems;
constexpr int64_t kSampleSize = 32768;  // sampled codes per query for its bound
constexpr int kFilterThreads = 256;
constexpr int kSlabRows = 65536;        // database rows per filtering block

// Each query's bound from a strided sample: the smallest distance whose sample
// count, scaled to the database, reaches kTargetFactor * k (the whole-database
// count is checked later). With the whole database as the sample, the exact
// cut-off.
__global__ void bound_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes, int64_t k,
    int64_t sample, int* bound) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  const int bits = 8 * bytes;
  WarpScratch s = warp_scratch(bytes, bits + 2);
  load_query(queries, q, bytes, s);
  const int64_t stride = n / sample;
  bucket_offsets(db, sample, stride, bytes, bits, 0, s);
  if (threadIdx.x % 32 == 0) {
    // slot[d + 1] = sampled codes at distance <= d.
    const double want = sample == n ? double(k) : double(kTargetFactor * k) * sample / n;
    int d = 0;
    while (d < bits && s.slot[d + 1] < want) {
      ++d;
    }
    bound[q] = d;
  }
}

// Blocks of QT queries (their words in registers) against one slab of the
// database; every code within a query's bound is appended to its list as the
// key (distance << 32) | row. Warps append with one atomic per hit group.
template <int WORDS, int QT>
__global__ void filter_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes,
    const int* bound, int* count, unsigned long long* candidates) {
  const int64_t q0 = int64_t(blockIdx.x) * QT;
  unsigned long long query[QT][WORDS];
  int limit[QT];
#pragma unroll
  for (int t = 0; t < QT; ++t) {
    const bool real = q0 + t < n_queries;
    limit[t] = real ? bound[q0 + t] : -1;
#pragma unroll
    for (int w = 0; w < WORDS; ++w) {
      query[t][w] = real && w < words_of(bytes) ? code_word(queries + (q0 + t) * bytes, bytes, w) : 0;
    }
  }
  const int lane = threadIdx.x % 32;
  const unsigned lower_lanes = (1u << lane) - 1;
  const int64_t slab_begin = int64_t(blockIdx.y) * kSlabRows;
  const int64_t slab_end = min(n, slab_begin + kSlabRows);
  for (int64_t base = slab_begin + (threadIdx.x / 32) * 32; base < slab_end;
       base += kFilterThreads) {
    const int64_t j = base + lane;
    const bool valid = j < slab_end;
    unsigned long long code[WORDS];
#pragma unroll
    for (int w = 0; w < WORDS; ++w) {
      code[w] = valid && w < words_of(bytes) ? code_word(db + j * bytes, bytes, w) : 0;
    }
#pragma unroll
    for (int t = 0; t < QT; ++t) {
      int d = 0;
#pragma unroll
      for (int w = 0; w < WORDS; ++w) {
        d += __popcll(query[t][w] ^ code[w]);
      }
      const bool hit = valid && d <= limit[t];
      const unsigned hits = __ballot_sync(kFullMask, hit);
      if (hits != 0) {  // warp-uniform
        const int leader = __ffs(hits) - 1;
        int first = 0;
        if (lane == leader) {
          first = atomicAdd(&count[q0 + t], __popc(hits));
        }
        first = __shfl_sync(kFullMask, first, leader);
        const int slot = first + __popc(hits & lower_lanes);
        if (hit && slot < kCapacity) {
          candidates[(q0 + t) * kCapacity + slot] =
              (static_cast<unsigned long long>(d) << 32) | static_cast<unsigned long long>(j);
        }
      }
    }
  }
}

// A block per query: sort its candidates by (distance, row) and keep k. Queries
// whose list cannot give the answer are left to the counting path.
__global__ void select_kernel(
    const int* count, const unsigned long long* candidates, int64_t k, int key_bits,
    int32_t* out_dist, int64_t* out_idx) {
  using Sort = cub::BlockRadixSort<unsigned long long, kSortThreads, kSortItems>;
  __shared__ typename Sort::TempStorage scratch;
  const int64_t q = blockIdx.x;
  const int total = count[q];
  if (total < k || total > kCapacity) {
    return;  // block-uniform
  }
  unsigned long long keys[kSortItems];
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {
    const int at = threadIdx.x * kSortItems + i;
    keys[i] = at < total ? candidates[q * kCapacity + at] : ~0ull;
  }
  Sort(scratch).Sort(keys, 0, key_bits);
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {
    const int64_t position = int64_t(threadIdx.x) * kSortItems + i;  // blocked arrangement
    if (position < k) {
      out_dist[q * k + position] = static_cast<int32_t>(keys[i] >> 32);
      out_idx[q * k + position] = static_cast<int64_t>(keys[i] & 0xffffffffull);
    }
  }
}

bool use_filtering(int bytes, int64_t n, int64_t k) {
  // Small databases: two in-order passes are cheap and need no candidate lists.
  // Rows and candidate counts must fit the 32-bit fields of the keys and counters.
  return bytes <= 8 * kMaxTiledWords && k <= kMaxTiledK && n >= 4 * kSampleSize &&
         n < (int64_t(1) << 31);
}

template <int WORDS, int QT>
void launch_filter(const at::Tensor& queries, const at::Tensor& database, const at::Tensor& bound,
                   at::Tensor& count, at::Tensor& candidates, cudaStream_t stream) {
  const int64_t nq = queries.size(0);
  const int64_t n = database.size(0);
  const dim3 grid(static_cast<unsigned>((nq + QT - 1) / QT),
                  static_cast<unsigned>((n + kSlabRows - 1) / kSlabRows));
  filter_kernel<WORDS, QT><<<grid, kFilterThreads, 0, stream>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, n,
      static_cast<int>(queries.size(1)), bound.const_data_ptr<int>(), count.mutable_data_ptr<int>(),
      reinterpret_cast<unsigned long long*>(candidates.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Fills what it can of (dist, idx) and the candidate counts the counting path reads.
at::Tensor filter_and_select(const at::Tensor& queries, const at::Tensor& database, int64_t k,
                             at::Tensor& dist, at::Tensor& idx) {
  const int64_t nq = queries.size(0);
  const int64_t n = database.size(0);
  const int bytes = static_cast<int>(queries.size(1));
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor bound = at::empty({nq}, queries.options().dtype(at::kInt));
  const WarpLaunch warps = plan_warps(bytes, 8 * bytes + 2, "hamming_topk");
  const int64_t sample = std::min<int64_t>(n, kSampleSize);
  bound_kernel<<<(nq + warps.warps - 1) / warps.warps, warps.warps * 32, warps.shared_bytes,
                 stream>>>(queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(),
                           nq, n, bytes, k, sample, bound.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor count = at::zeros({nq}, queries.options().dtype(at::kInt));
  at::Tensor candidates = at::empty({nq, kCapacity}, queries.options().dtype(at::kLong));
  // Queries to a block times words to a code stays 16: the registers a thread holds
  // for its queries are the same at every length.
  const int words = (bytes + 7) / 8;
  if (words == 1) {
    launch_filter<1, 16>(queries, database, bound, count, candidates, stream);
  } else if (words == 2) {
    launch_filter<2, 8>(queries, database, bound, count, candidates, stream);
  } else if (words <= 4) {
    launch_filter<4, 4>(queries, database, bound, count, candidates, stream);
  } else if (words <= 8) {
    launch_filter<8, 2>(queries, database, bound, count, candidates, stream);
  } else {
    launch_filter<16, 1>(queries, database, bound, count, candidates, stream);
  }
  int key_bits = 32;
  while ((1 << (key_bits - 32)) <= 8 * bytes) {
    ++key_bits;
  }
  select_kernel<<<nq, kSortThreads, 0, stream>>>(
      count.const_data_ptr<int>(),
      reinterpret_cast<const unsigned long long*>(candidates.const_data_ptr<int64_t>()), k,
      key_bits, dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return count;
}

// ---------------------------------------------------------------- radius, distances

__global__ void radius_count_kernel(
    const uint8_t* queries, const uint8_t* db, int64_t n_queries, int64_t n, int bytes, int radius,
    int64_t* counts) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  WarpScratch s = warp_scratch(bytes, radius + 2);
  load_query(queries, q, bytes, s);
  const int lane = threadIdx.x % 32;
  int64_t count = 0;
  for (int64_t j = lane; j < n; j += 32) {
    count += code_distance(s.query, db + j * bytes, bytes) <= radius;
  }
  count = warp_sum(count);
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
  load_query(queries, q, bytes, s);
  bucket_offsets(db, n, 1, bytes, radius, lims[q], s);
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
    for (int w = 0; w < words_of(bytes); ++w) {
      d += __popcll(code_word(queries + q * bytes, bytes, w) ^ code_word(db + j * bytes, bytes, w));
    }
    out[i] = d;
  }
}

// Set distances (see the CPU kernel): one thread per (query row, image), the
// minimum over the image's rows, added into the image's sum.
__global__ void set_distance_kernel(
    const uint8_t* queries, const uint8_t* db, const int64_t* segments, int64_t n_queries,
    int64_t images, int bytes, unsigned long long* out) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n_queries * images;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = t / images;
    const int64_t i = t % images;
    int best = 1 << 30;
    for (int64_t j = segments[i]; j < segments[i + 1]; ++j) {
      int d = 0;
      for (int w = 0; w < words_of(bytes); ++w) {
        d += __popcll(code_word(queries + q * bytes, bytes, w) ^ code_word(db + j * bytes, bytes, w));
      }
      best = min(best, d);
    }
    atomicAdd(out + i, static_cast<unsigned long long>(best));
  }
}

// ---------------------------------------------------------------- host side

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(
    const at::Tensor& queries_in, const at::Tensor& database_in, int64_t k) {
  check_codes(queries_in, database_in, "hamming_topk");
  TORCH_CHECK(k >= 1 && k <= database_in.size(0),
              "hamming_topk: k must be between 1 and the database size ", database_in.size(0),
              ", got ", k);
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = aligned_codes(queries_in);
  const at::Tensor database = aligned_codes(database_in);
  const int64_t nq = queries.size(0);
  const int64_t n = database.size(0);
  const int bytes = static_cast<int>(queries.size(1));
  at::Tensor dist = at::empty({nq, k}, queries.options().dtype(at::kInt));
  at::Tensor idx = at::empty({nq, k}, queries.options().dtype(at::kLong));
  if (nq == 0) {
    return {dist, idx};
  }
  at::Tensor count;
  if (use_filtering(bytes, n, k)) {
    count = filter_and_select(queries, database, k, dist, idx);
  }
  const WarpLaunch launch = plan_warps(bytes, 8 * bytes + 2, "hamming_topk");
  topk_counting_kernel<<<(nq + launch.warps - 1) / launch.warps, launch.warps * 32,
                         launch.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, n, bytes, k,
      count.defined() ? count.const_data_ptr<int>() : nullptr, kCapacity,
      dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hamming_radius_cuda(
    const at::Tensor& queries_in, const at::Tensor& database_in, int64_t radius) {
  check_codes(queries_in, database_in, "hamming_radius");
  TORCH_CHECK(radius >= 0, "hamming_radius: radius must be >= 0, got ", radius);
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = aligned_codes(queries_in);
  const at::Tensor database = aligned_codes(database_in);
  const int64_t nq = queries.size(0);
  const int bytes = static_cast<int>(queries.size(1));
  const int r = static_cast<int>(std::min<int64_t>(radius, 8 * bytes));
  at::Tensor lims = at::zeros({nq + 1}, queries.options().dtype(at::kLong));
  if (nq == 0) {
    return {lims, at::empty({0}, queries.options().dtype(at::kInt)),
            at::empty({0}, queries.options().dtype(at::kLong))};
  }
  const WarpLaunch launch = plan_warps(bytes, r + 2, "hamming_radius");
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
  const at::Tensor queries = aligned_codes(queries_in);
  const at::Tensor database = aligned_codes(database_in);
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

at::Tensor hamming_set_distance_cuda(
    const at::Tensor& queries_in, const at::Tensor& database_in, const at::Tensor& segments_in) {
  check_codes(queries_in, database_in, "hamming_set_distance");
  TORCH_CHECK(segments_in.dim() == 1 && segments_in.scalar_type() == at::kLong && segments_in.size(0) >= 1,
              "hamming_set_distance: segments must be a 1-D int64 tensor of image offsets");
  TORCH_CHECK(segments_in.device() == queries_in.device(),
              "hamming_set_distance: segments must be on the codes' device");
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = aligned_codes(queries_in);
  const at::Tensor database = aligned_codes(database_in);
  const at::Tensor segments = segments_in.contiguous();
  const int64_t images = segments.size(0) - 1;
  const int64_t nq = queries.size(0);
  at::Tensor out = at::zeros({images}, queries.options().dtype(at::kLong));
  if (images == 0 || nq == 0) {
    return out;
  }
  set_distance_kernel<<<blocks_for(nq * images), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(),
      segments.const_data_ptr<int64_t>(), nq, images, static_cast<int>(queries.size(1)),
      reinterpret_cast<unsigned long long*>(out.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CUDA, m) {
  m.impl("hamming_set_distance", &hamming_set_distance_cuda);
  m.impl("hamming_topk", &hamming_topk_cuda);
  m.impl("hamming_radius", &hamming_radius_cuda);
  m.impl("hamming_distance", &hamming_distance_cuda);
}

}  // namespace cuda
}  // namespace ssdh
