// Exact Hamming search on packed codes (CPU).
//
// Distances are small integers (0..8*bytes), so the k nearest codes are a
// counting problem (DESIGN.md): a histogram of one query's distances gives the
// cut-off distance, then one pass in database order places each winner at the
// next free slot of its distance bucket. The result is sorted by distance with
// ties in database order, as the original evaluation's stable sort ranks them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>
#include <mutex>
#include <vector>

#include "../checks.h"
#include "popcount.h"

namespace ssdh {
namespace cpu {
namespace {

// Database rows per distance batch: a few hundred KB of codes stay in cache.
constexpr int64_t kDbBlock = 4096;

struct Codes {
  at::Tensor queries, database;
  int64_t n_queries, n_db, bytes, bits;
};

Codes prepare(const at::Tensor& queries, const at::Tensor& database, const char* op) {
  check_codes(queries, database, op);
  Codes c{queries.contiguous(), database.contiguous(), queries.size(0), database.size(0),
          queries.size(1), 8 * queries.size(1)};
  return c;
}

// Queries that share one pass over the database: each database block is read
// from memory once and used for all of them while it sits in cache.
constexpr int64_t kQueryBlock = 8;

using Distances = std::vector<std::vector<uint16_t>>;

// All distances of queries [q0, q1): dist[q - q0][0..n_db).
void block_distances(const Codes& c, int64_t q0, int64_t q1, Distances& dist) {
  const uint8_t* queries = c.queries.const_data_ptr<uint8_t>();
  const uint8_t* db = c.database.const_data_ptr<uint8_t>();
  const DistanceFn distances = best_distance_fn();
  for (int64_t first = 0; first < c.n_db; first += kDbBlock) {
    const int64_t last = std::min(c.n_db, first + kDbBlock);
    for (int64_t q = q0; q < q1; ++q) {
      distances(queries + q * c.bytes, db, c.bytes, first, last, dist[q - q0].data() + first);
    }
  }
}

// body(q0, q1, dist) for blocks of queries in parallel, with their distances.
template <typename Body>
void for_each_query_block(const Codes& c, const Body& body) {
  const int64_t blocks = (c.n_queries + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    Distances dist(std::min(kQueryBlock, c.n_queries), std::vector<uint16_t>(c.n_db));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t q0 = b * kQueryBlock;
      const int64_t q1 = std::min(c.n_queries, q0 + kQueryBlock);
      block_distances(c, q0, q1, dist);
      body(q0, q1, dist);
    }
  });
}

// body(q0, q1, candidates) for blocks of queries in parallel, each query's
// candidates scanned with the given start bound (and k, 0 for a fixed bound).
template <typename Body>
void scan_query_blocks(const Codes& c, int bound, int64_t k, const Body& body) {
  const int64_t blocks = (c.n_queries + kQueryBlock - 1) / kQueryBlock;
  const uint8_t* queries = c.queries.const_data_ptr<uint8_t>();
  const uint8_t* db = c.database.const_data_ptr<uint8_t>();
  const ScanFn scan = best_scan_fn();
  const Scan64Fn scan64 = best_scan64_fn();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Candidates> found(kQueryBlock);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t q0 = b * kQueryBlock;
      const int64_t q1 = std::min(c.n_queries, q0 + kQueryBlock);
      for (int64_t q = q0; q < q1; ++q) {
        found[q - q0].reset(bound, k, c.bits);
      }
      if (c.bytes == 8) {
        uint64_t words[kQueryBlock];
        for (int64_t q = q0; q < q1; ++q) {
          std::memcpy(&words[q - q0], queries + q * 8, 8);
        }
        for (int64_t first = 0; first < c.n_db; first += kDbBlock) {
          const int64_t last = std::min(c.n_db, first + kDbBlock);
          scan64(words, static_cast<int>(q1 - q0), db, first, last, found.data());
        }
      } else {
        for (int64_t first = 0; first < c.n_db; first += kDbBlock) {
          const int64_t last = std::min(c.n_db, first + kDbBlock);
          for (int64_t q = q0; q < q1; ++q) {
            scan(queries + q * c.bytes, db, c.bytes, first, last, found[q - q0]);
          }
        }
      }
      body(q0, q1, found);
    }
  });
}

// Place candidates with distance <= cutoff at slot[d]++ (positions < end kept).
void place(const Candidates& cand, int64_t cutoff, std::vector<int64_t>& slot, int64_t end,
           int32_t* dist_out, int64_t* idx_out) {
  for (size_t i = 0; i < cand.index.size(); ++i) {
    const int64_t d = cand.distance[i];
    if (d > cutoff) {
      continue;
    }
    const int64_t position = slot[d]++;
    if (position < end) {
      dist_out[position] = static_cast<int32_t>(d);
      idx_out[position] = cand.index[i];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_kernel(
    const at::Tensor& queries, const at::Tensor& database, int64_t k) {
  const Codes c = prepare(queries, database, "hamming_topk");
  TORCH_CHECK(
      k >= 1 && k <= c.n_db, "hamming_topk: k must be between 1 and the database size ",
      c.n_db, ", got ", k);
  at::Tensor out_dist = at::empty({c.n_queries, k}, queries.options().dtype(at::kInt));
  at::Tensor out_idx = at::empty({c.n_queries, k}, queries.options().dtype(at::kLong));
  int32_t* dist_out = out_dist.mutable_data_ptr<int32_t>();
  int64_t* idx_out = out_idx.mutable_data_ptr<int64_t>();
  scan_query_blocks(c, static_cast<int>(c.bits), k, [&](int64_t q0, int64_t q1,
                                                       const std::vector<Candidates>& found) {
    std::vector<int64_t> slot(c.bits + 2);
    for (int64_t q = q0; q < q1; ++q) {
      const Candidates& cand = found[q - q0];
      // slot[d] = candidates closer than d, over the distances the scan kept whole.
      slot[0] = 0;
      int64_t cutoff = 0;
      for (int64_t d = 1; d <= cand.bound + 1; ++d) {
        slot[d] = slot[d - 1] + cand.count[d - 1];
        if (slot[d] < k) {
          cutoff = d;
        }
      }
      place(cand, std::min<int64_t>(cutoff, cand.bound), slot, k, dist_out + q * k, idx_out + q * k);
    }
  });
  return {out_dist, out_idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hamming_radius_kernel(
    const at::Tensor& queries, const at::Tensor& database, int64_t radius) {
  const Codes c = prepare(queries, database, "hamming_radius");
  TORCH_CHECK(radius >= 0, "hamming_radius: radius must be >= 0, got ", radius);
  const int64_t r = std::min(radius, c.bits);
  // One scan per query with the fixed bound r; each query's codes are kept
  // until the output can be sized.
  std::vector<Candidates> results(c.n_queries);
  scan_query_blocks(c, static_cast<int>(r), 0, [&](int64_t q0, int64_t q1,
                                                   const std::vector<Candidates>& found) {
    for (int64_t q = q0; q < q1; ++q) {
      results[q].index = found[q - q0].index;
      results[q].distance = found[q - q0].distance;
    }
  });
  at::Tensor lims = at::zeros({c.n_queries + 1}, queries.options().dtype(at::kLong));
  int64_t* offsets = lims.mutable_data_ptr<int64_t>();
  for (int64_t q = 0; q < c.n_queries; ++q) {
    offsets[q + 1] = offsets[q] + static_cast<int64_t>(results[q].index.size());
  }
  const int64_t total = offsets[c.n_queries];
  at::Tensor out_dist = at::empty({total}, queries.options().dtype(at::kInt));
  at::Tensor out_idx = at::empty({total}, queries.options().dtype(at::kLong));
  int32_t* dist_out = out_dist.mutable_data_ptr<int32_t>();
  int64_t* idx_out = out_idx.mutable_data_ptr<int64_t>();
  // Each query's results sorted by distance, ties in database order.
  at::parallel_for(0, c.n_queries, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> slot(r + 2);
    for (int64_t q = begin; q < end; ++q) {
      std::fill(slot.begin(), slot.end(), 0);
      for (const uint16_t d : results[q].distance) {
        ++slot[d + 1];
      }
      slot[0] = offsets[q];
      for (int64_t d = 1; d <= r + 1; ++d) {
        slot[d] += slot[d - 1];
      }
      place(results[q], r, slot, offsets[q + 1], dist_out, idx_out);
    }
  });
  return {lims, out_dist, out_idx};
}

// One pass per query for the retrieval metrics (SPEC.md section 2): the
// ranking's first k positions (counting placement, ties in database order)
// with their relevance give AP@k and the hits at each rank; the distance
// histograms of all and of relevant codes give precision within a radius and
// the precision-recall curve over radii.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamming_rank_stats_kernel(
    const at::Tensor& queries, const at::Tensor& database, const at::Tensor& relevant_in,
    int64_t k) {
  const Codes c = prepare(queries, database, "hamming_rank_stats");
  TORCH_CHECK(
      k >= 1 && k <= c.n_db, "hamming_rank_stats: k must be between 1 and the database size ",
      c.n_db, ", got ", k);
  TORCH_CHECK(
      relevant_in.dim() == 2 && relevant_in.size(0) == c.n_queries && relevant_in.size(1) == c.n_db &&
          relevant_in.scalar_type() == at::kBool,
      "hamming_rank_stats: relevant must be a bool Q x N matrix (", c.n_queries, " x ", c.n_db,
      "), got ", relevant_in.scalar_type(), " ", relevant_in.sizes());
  const at::Tensor relevant = relevant_in.contiguous();
  const bool* rel = relevant.const_data_ptr<bool>();
  const int64_t buckets = c.bits + 1;
  auto opts = queries.options();
  at::Tensor ap = at::empty({c.n_queries}, opts.dtype(at::kDouble));
  at::Tensor hist_all = at::zeros({c.n_queries, buckets}, opts.dtype(at::kLong));
  at::Tensor hist_rel = at::zeros({c.n_queries, buckets}, opts.dtype(at::kLong));
  at::Tensor hits_at_rank = at::zeros({k}, opts.dtype(at::kLong));
  double* ap_out = ap.mutable_data_ptr<double>();
  int64_t* all_out = hist_all.mutable_data_ptr<int64_t>();
  int64_t* rel_out = hist_rel.mutable_data_ptr<int64_t>();
  std::mutex merge;
  int64_t* hits_out = hits_at_rank.mutable_data_ptr<int64_t>();
  for_each_query_block(c, [&](int64_t q0, int64_t q1, const Distances& block) {
    std::vector<int64_t> slot(c.bits + 2);
    std::vector<uint8_t> hit(k);
    std::vector<int64_t> hits_local(k, 0);
    for (int64_t q = q0; q < q1; ++q) {
      const uint16_t* dist = block[q - q0].data();
      const bool* rel_row = rel + q * c.n_db;
      int64_t* all_row = all_out + q * buckets;
      int64_t* rel_hist = rel_out + q * buckets;
      for (int64_t j = 0; j < c.n_db; ++j) {
        ++all_row[dist[j]];
        rel_hist[dist[j]] += rel_row[j];
      }
      slot[0] = 0;
      int64_t cutoff = 0;
      for (int64_t d = 1; d <= c.bits + 1; ++d) {
        slot[d] = slot[d - 1] + all_row[d - 1];
        if (slot[d] < k) {
          cutoff = d;
        }
      }
      for (int64_t j = 0; j < c.n_db; ++j) {
        const int64_t d = dist[j];
        if (d <= cutoff) {
          const int64_t position = slot[d]++;
          if (position < k) {
            hit[position] = rel_row[j];
          }
        }
      }
      int64_t found = 0;
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        if (hit[p]) {
          ++found;
          sum += static_cast<double>(found) / static_cast<double>(p + 1);
        }
        hits_local[p] += found;  // cumulative hits of this query at rank p + 1
      }
      ap_out[q] = found ? sum / static_cast<double>(found) : 0.0;
    }
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t p = 0; p < k; ++p) {
      hits_out[p] += hits_local[p];
    }
  });
  return {ap, hits_at_rank, hist_all, hist_rel};
}

at::Tensor hamming_distance_kernel(const at::Tensor& queries, const at::Tensor& database) {
  const Codes c = prepare(queries, database, "hamming_distance");
  at::Tensor out = at::empty({c.n_queries, c.n_db}, queries.options().dtype(at::kInt));
  int32_t* data = out.mutable_data_ptr<int32_t>();
  for_each_query_block(c, [&](int64_t q0, int64_t q1, const Distances& block) {
    for (int64_t q = q0; q < q1; ++q) {
      std::copy(block[q - q0].begin(), block[q - q0].end(), data + q * c.n_db);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("hamming_topk", &hamming_topk_kernel);
  m.impl("hamming_radius", &hamming_radius_kernel);
  m.impl("hamming_distance", &hamming_distance_kernel);
  m.impl("hamming_rank_stats", &hamming_rank_stats_kernel);
}

}  // namespace cpu
}  // namespace ssdh
