// Ranking statistics of the retrieval protocol on the GPU (the CPU kernel's
// counting method, one warp per query). Pass 1 counts the codes and the
// relevant codes at each distance (keys 2 * distance + relevant, warp-aggregated
// shared atomics); pass 2 walks the database in order, 32 codes at a time, and
// gives every code at a distance up to the cut-off its rank: the codes at a
// smaller distance, plus those before it at its own distance (lanes of one
// distance rank themselves with __match_any_sync, so ties keep database order).
// A relevant code within the first k adds (relevant codes so far) / rank to the
// query's AP sum and one hit at its rank.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "hamming_codes.cuh"
#include "reduce.cuh"

namespace ssdh {
namespace cuda {
namespace {

constexpr int kSkip = -1;  // a lane with no code to rank

// Row j of the database is relevant to the query: equal words (exact) or a
// shared bit in some word (any).
__device__ inline bool is_relevant(const int64_t* mine, const int64_t* theirs, int64_t words,
                                   bool exact) {
  bool relevant = exact;
  for (int64_t w = 0; w < words; ++w) {
    relevant = exact ? relevant && mine[w] == theirs[w] : relevant || (mine[w] & theirs[w]) != 0;
  }
  return relevant;
}

struct Labels {
  const int64_t* query;
  const int64_t* database;
  int64_t words;
  bool exact;
};

// Per-warp counters after the query words: count[2 * buckets] by key, then the
// next rank and the relevant codes ranked so far, per distance.
struct RankCounters {
  int* count;
  int* slot;
  int* rel_slot;
};

__device__ inline RankCounters rank_counters(const WarpScratch& s, int buckets) {
  return {s.slot, s.slot + 2 * buckets, s.slot + 3 * buckets};
}

__global__ void rank_stats_kernel(
    const uint8_t* queries, const uint8_t* db, Labels labels, int64_t n_queries, int64_t n,
    int bytes, int64_t k, double* ap, int64_t* hits_at_rank, int64_t* hist_all,
    int64_t* hist_rel) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (q >= n_queries) {
    return;
  }
  const int lane = threadIdx.x % 32;
  const unsigned lower_lanes = (1u << lane) - 1;
  const int buckets = 8 * bytes + 1;
  WarpScratch s = warp_scratch(bytes, 4 * buckets);
  load_query(queries, q, bytes, s);
  const RankCounters c = rank_counters(s, buckets);
  const int64_t* mine = labels.query + q * labels.words;
  auto relevant = [&](int64_t j) {
    return is_relevant(mine, labels.database + j * labels.words, labels.words, labels.exact);
  };

  // Pass 1: codes per key.
  for (int b = lane; b < 2 * buckets; b += 32) {
    c.count[b] = 0;
  }
  __syncwarp();
  for (int64_t base = 0; base < n; base += 32) {
    const int64_t j = base + lane;
    int key = kSkip;
    if (j < n) {
      key = 2 * code_distance(s.query, db + j * bytes, bytes) + relevant(j);
    }
    const unsigned peers = __match_any_sync(kFullMask, key);
    if (key != kSkip && lane == __ffs(peers) - 1) {
      c.count[key] += __popc(peers);
    }
    __syncwarp();
  }

  // Histograms, first ranks per distance and the distance holding rank k.
  int cutoff = 0;
  if (lane == 0) {
    int64_t ranked = 0, rel_ranked = 0;
    for (int d = 0; d < buckets; ++d) {
      const int rel = c.count[2 * d + 1];
      const int all = c.count[2 * d] + rel;
      c.slot[d] = static_cast<int>(ranked);
      c.rel_slot[d] = static_cast<int>(rel_ranked);
      hist_all[q * buckets + d] = all;
      hist_rel[q * buckets + d] = rel;
      if (ranked < k && ranked + all >= k) {
        cutoff = d;
      }
      ranked += all;
      rel_ranked += rel;
    }
  }
  cutoff = __shfl_sync(kFullMask, cutoff, 0);
  __syncwarp();

  // Pass 2: ranks in database order; AP terms and hits of the relevant codes.
  double sum = 0.0;
  int in_top = 0;
  for (int64_t base = 0; base < n; base += 32) {
    const int64_t j = base + lane;
    int d = kSkip;
    bool rel = false;
    if (j < n) {
      d = code_distance(s.query, db + j * bytes, bytes);
      if (d > cutoff) {
        d = kSkip;
      } else {
        rel = relevant(j);
      }
    }
    const unsigned peers = __match_any_sync(kFullMask, d);
    const unsigned rel_peers = peers & __ballot_sync(kFullMask, rel);
    const int leader = __ffs(peers) - 1;
    int first = 0, rel_first = 0;
    if (lane == leader && d != kSkip) {
      first = c.slot[d];
      rel_first = c.rel_slot[d];
      c.slot[d] += __popc(peers);
      c.rel_slot[d] += __popc(rel_peers);
    }
    first = __shfl_sync(kFullMask, first, leader);
    rel_first = __shfl_sync(kFullMask, rel_first, leader);
    if (rel) {
      const int64_t rank = first + __popc(peers & lower_lanes);  // 0-based
      if (rank < k) {
        const int found = rel_first + __popc(rel_peers & lower_lanes) + 1;
        sum += static_cast<double>(found) / static_cast<double>(rank + 1);
        ++in_top;
        atomicAdd(reinterpret_cast<unsigned long long*>(hits_at_rank + rank), 1ull);
      }
    }
    __syncwarp();
  }
  sum = warp_sum(sum);
  in_top = warp_sum(in_top);
  if (lane == 0) {
    ap[q] = in_top ? sum / in_top : 0.0;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamming_rank_stats_cuda(
    const at::Tensor& queries_in, const at::Tensor& database_in, const at::Tensor& query_labels_in,
    const at::Tensor& db_labels_in, int64_t k, bool exact) {
  check_codes(queries_in, database_in, "hamming_rank_stats");
  const int64_t nq = queries_in.size(0);
  const int64_t n = database_in.size(0);
  TORCH_CHECK(k >= 1 && k <= n, "hamming_rank_stats: k must be between 1 and the database size ",
              n, ", got ", k);
  TORCH_CHECK(n < (int64_t(1) << 31), "hamming_rank_stats: the CUDA kernel counts ranks in 32 "
              "bits; a database of ", n, " codes is too large");
  check_label_words(query_labels_in, db_labels_in, nq, n, "hamming_rank_stats");
  for (const auto* t : {&query_labels_in, &db_labels_in}) {
    TORCH_CHECK(t->device() == queries_in.device(), "hamming_rank_stats: the codes are on ",
                queries_in.device(), ", the label words on ", t->device());
  }
  c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = aligned_codes(queries_in);
  const at::Tensor database = aligned_codes(database_in);
  const at::Tensor query_labels = query_labels_in.contiguous();
  const at::Tensor db_labels = db_labels_in.contiguous();
  const int bytes = static_cast<int>(queries.size(1));
  const int buckets = 8 * bytes + 1;
  auto opts = queries.options();
  at::Tensor ap = at::empty({nq}, opts.dtype(at::kDouble));
  at::Tensor hist_all = at::empty({nq, buckets}, opts.dtype(at::kLong));
  at::Tensor hist_rel = at::empty({nq, buckets}, opts.dtype(at::kLong));
  at::Tensor hits_at_rank = at::zeros({k}, opts.dtype(at::kLong));
  if (nq == 0) {
    return {ap, hits_at_rank, hist_all, hist_rel};
  }
  const WarpLaunch launch = plan_warps(bytes, 4 * buckets, "hamming_rank_stats");
  const Labels labels{query_labels.const_data_ptr<int64_t>(), db_labels.const_data_ptr<int64_t>(),
                      query_labels.size(1), exact};
  rank_stats_kernel<<<(nq + launch.warps - 1) / launch.warps, launch.warps * 32,
                      launch.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), labels, nq, n, bytes,
      k, ap.mutable_data_ptr<double>(), hits_at_rank.mutable_data_ptr<int64_t>(),
      hist_all.mutable_data_ptr<int64_t>(), hist_rel.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Hits at each rank -> cumulative hits within the first r + 1 ranks.
  return {ap, at::cumsum(hits_at_rank, 0), hist_all, hist_rel};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CUDA, m) {
  m.impl("hamming_rank_stats", &hamming_rank_stats_cuda);
}

}  // namespace cuda
}  // namespace ssdh
