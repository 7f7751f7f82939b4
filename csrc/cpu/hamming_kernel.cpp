// Exact Hamming search on packed codes (CPU).
//
// Distances are small integers (0..8*bytes), so the k nearest codes are a
// counting problem (docs/DESIGN.md): a histogram of one query's distances gives the
// cut-off distance, then one pass in database order places each winner at the
// next free slot of its distance bucket. The result is sorted by distance with
// ties in database order, as the original evaluation's stable sort ranks them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
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
  const DistanceFn distances = best_distance_fn(c.bytes);
  const BlockDistanceFn block = best_block_distance_fn(c.bytes);
  uint16_t* out[kQueryBlock];
  for (int64_t first = 0; first < c.n_db; first += kDbBlock) {
    const int64_t last = std::min(c.n_db, first + kDbBlock);
    if (block) {  // each database code split once for the block's queries
      for (int64_t q = q0; q < q1; ++q) {
        out[q - q0] = dist[q - q0].data() + first;
      }
      block(queries + q0 * c.bytes, static_cast<int>(q1 - q0), db, c.bytes, first, last, out);
      continue;
    }
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

// Queries per scan block: they share each database block while it sits in
// cache, so larger blocks read the database from memory fewer times; small
// query sets still get a block per thread.
int64_t scan_block_size(int64_t n_queries) {
  const int64_t threads = at::get_num_threads();
  const int64_t per_thread = (n_queries + threads - 1) / threads;
  return std::clamp<int64_t>((per_thread + 7) / 8 * 8, 8, 32);
}

// Fewer query blocks than threads (one query to a server, say): the database
// is also split into segments scanned in parallel, of at least this many rows.
constexpr int64_t kMinSegmentRows = 16384;

// Scan database rows [begin, end) for queries [q0, q1) into found[0..q1-q0),
// each list reset with the start bound first.
void scan_rows(const Codes& c, int64_t q0, int64_t q1, int64_t begin, int64_t end, int bound,
               int64_t k, std::vector<Candidates>& found, std::vector<uint64_t>& words) {
  const uint8_t* queries = c.queries.const_data_ptr<uint8_t>();
  const uint8_t* db = c.database.const_data_ptr<uint8_t>();
  const ScanFn scan = best_scan_fn();
  const ShortScanFn short_scan = best_short_scan_fn(c.bytes);
  const LongScanFn long_scan = short_scan ? nullptr : best_long_scan_fn(c.bytes);
  for (int64_t q = q0; q < q1; ++q) {
    found[q - q0].reset(bound, k, c.bits);
    words[q - q0] = 0;  // short codes zero-extended, as the database's are loaded
    if (short_scan) {
      std::memcpy(&words[q - q0], queries + q * c.bytes, c.bytes);
    }
  }
  for (int64_t first = begin; first < end; first += kDbBlock) {
    const int64_t last = std::min(end, first + kDbBlock);
    if (short_scan) {
      short_scan(words.data(), static_cast<int>(q1 - q0), db, c.bytes, first, last, found.data());
      continue;
    }
    if (long_scan) {
      long_scan(queries + q0 * c.bytes, static_cast<int>(q1 - q0), db, c.bytes, first, last, found.data());
      continue;
    }
    for (int64_t q = q0; q < q1; ++q) {
      scan(queries + q * c.bytes, db, c.bytes, first, last, found[q - q0]);
    }
  }
}

// One query's candidates from consecutive database segments, as one list: in
// database order, counts added, and the smallest of the segments' bounds. Each
// segment kept every code within its final bound, and a bound below the start
// one has at least k codes of its segment within it, so the k nearest overall
// and the counts up to that smallest bound are all there.
void merge_segments(const std::vector<const Candidates*>& parts, Candidates& out) {
  out.index.clear();
  out.distance.clear();
  std::fill(out.count.begin(), out.count.end(), 0);
  out.bound = parts.front()->bound;
  for (const Candidates* part : parts) {
    out.index.insert(out.index.end(), part->index.begin(), part->index.end());
    out.distance.insert(out.distance.end(), part->distance.begin(), part->distance.end());
    for (size_t d = 0; d < out.count.size(); ++d) {
      out.count[d] += part->count[d];
    }
    out.bound = std::min(out.bound, part->bound);
  }
}

// body(q0, q1, candidates) for blocks of queries in parallel, each query's
// candidates scanned with the given start bound (and k, 0 for a fixed bound).
template <typename Body>
void scan_query_blocks(const Codes& c, int bound, int64_t k, const Body& body) {
  const int64_t block = scan_block_size(c.n_queries);
  const int64_t blocks = (c.n_queries + block - 1) / block;
  const int64_t threads = at::get_num_threads();
  const int64_t segments = std::max<int64_t>(
      1, std::min(threads / std::max<int64_t>(1, blocks), c.n_db / kMinSegmentRows));
  if (segments == 1) {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<Candidates> found(block);
      std::vector<uint64_t> words(block);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t q0 = b * block;
        const int64_t q1 = std::min(c.n_queries, q0 + block);
        scan_rows(c, q0, q1, 0, c.n_db, bound, k, found, words);
        body(q0, q1, found);
      }
    });
    return;
  }
  // Every (query block, segment) pair in parallel, then each block's segments merged.
  std::vector<std::vector<Candidates>> parts(blocks * segments, std::vector<Candidates>(block));
  at::parallel_for(0, blocks * segments, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> words(block);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / segments, s = t % segments;
      const int64_t q0 = b * block;
      scan_rows(c, q0, std::min(c.n_queries, q0 + block), s * c.n_db / segments,
                (s + 1) * c.n_db / segments, bound, k, parts[t], words);
    }
  });
  std::vector<Candidates> found(block);
  std::vector<const Candidates*> query_parts(segments);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t q0 = b * block;
    const int64_t q1 = std::min(c.n_queries, q0 + block);
    for (int64_t q = q0; q < q1; ++q) {
      found[q - q0].reset(bound, k, c.bits);
      for (int64_t s = 0; s < segments; ++s) {
        query_parts[s] = &parts[b * segments + s][q - q0];
      }
      merge_segments(query_parts, found[q - q0]);
    }
    body(q0, q1, found);
  }
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

// ---- Retrieval metrics (docs/SPEC.md section 2) --------------------------------
//
// A query's ranking is never materialised. Each database code gets a key
// 2 * distance + relevant; a histogram of the keys gives, for every distance,
// how many codes (and how many relevant ones) rank before it. A second pass in
// database order then knows each code's rank (the next free slot of its
// distance) and, for a relevant code, how many relevant codes rank before it:
// exactly the terms of AP@k and of the hits per rank. Both passes walk
// kSegments contiguous parts of the database side by side, each with its own
// counters (the start slots of a later part follow from the earlier parts'
// histograms), so that consecutive codes at the same distance do not wait on
// each other's counter update.
constexpr int kSegments = 4;

// Relevance from label words: a query's row of `words` int64 values against
// each database row's; relevant when some word shares a bit (any) or when all
// words are equal (exact; class ids are one word compared this way).
struct LabelWords {
  const int64_t* query;
  const int64_t* database;
  int64_t words;
  bool exact;
};

// keys[j] = 2 * keys[j] + (database row j is relevant to query q), rows [0, n).
void add_relevance(const LabelWords& labels, int64_t q, int64_t n, uint16_t* keys) {
  const int64_t w = labels.words;
  const int64_t* mine = labels.query + q * w;
  const int64_t* theirs = labels.database;
  if (w == 1) {  // class ids or up to 64 labels: a loop the compiler vectorises
    const int64_t label = mine[0];
    if (labels.exact) {
      for (int64_t j = 0; j < n; ++j) {
        keys[j] = static_cast<uint16_t>(2 * keys[j] + (theirs[j] == label));
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        keys[j] = static_cast<uint16_t>(2 * keys[j] + ((theirs[j] & label) != 0));
      }
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    bool relevant = labels.exact;
    for (int64_t i = 0; i < w; ++i) {
      const int64_t a = mine[i], b = theirs[j * w + i];
      relevant = labels.exact ? relevant && a == b : relevant || (a & b) != 0;
    }
    keys[j] = static_cast<uint16_t>(2 * keys[j] + relevant);
  }
}

// visit(segment, j) for every database row, the segments side by side, each
// in database order.
template <typename Visit>
__attribute__((always_inline)) inline void walk_segments(int64_t n, const Visit& visit) {
  int64_t begin[kSegments + 1];
  for (int s = 0; s <= kSegments; ++s) {
    begin[s] = s * n / kSegments;
  }
  const int64_t common = n / kSegments;  // the shortest segment's length
  for (int64_t i = 0; i < common; ++i) {
    for (int s = 0; s < kSegments; ++s) {
      visit(s, begin[s] + i);
    }
  }
  for (int s = 0; s < kSegments; ++s) {
    for (int64_t j = begin[s] + common; j < begin[s + 1]; ++j) {
      visit(s, j);
    }
  }
}

// Per-thread buffers of the ranking passes.
struct RankScratch {
  int64_t buckets;
  std::vector<int64_t> count;     // [segment][key]
  std::vector<int64_t> slot;      // [segment][distance]: next rank
  std::vector<int64_t> rel_slot;  // [segment][distance]: relevant codes ranked so far
  std::vector<int64_t> hits;      // [rank]: relevant codes at each rank (over queries); [k + s]: unused
  explicit RankScratch(int64_t bits, int64_t k)
      : buckets(bits + 1),
        count(kSegments * 2 * (bits + 1)),
        slot(kSegments * (bits + 1)),
        rel_slot(kSegments * (bits + 1)),
        hits(k + kSegments, 0) {}
};

// One query: fills its histograms and returns its AP@k; adds its hits per rank.
double rank_one_query(const uint16_t* keys, int64_t n, int64_t k, const double* inv_rank,
                      RankScratch& s, int64_t* hist_all, int64_t* hist_rel) {
  const int64_t buckets = s.buckets, n_keys = 2 * buckets;
  std::fill(s.count.begin(), s.count.end(), 0);
  int64_t* count = s.count.data();
  walk_segments(n, [&](int seg, int64_t j) { ++count[seg * n_keys + keys[j]]; });

  // Codes and relevant codes per distance; the distance holding rank k.
  int64_t cutoff = buckets - 1, ranked = 0, rel_ranked = 0;
  for (int64_t d = buckets - 1; d >= 0; --d) {
    hist_all[d] = hist_rel[d] = 0;
  }
  for (int64_t d = 0; d < buckets; ++d) {
    for (int seg = 0; seg < kSegments; ++seg) {
      const int64_t rel = count[seg * n_keys + 2 * d + 1];
      const int64_t all = count[seg * n_keys + 2 * d] + rel;
      s.slot[seg * buckets + d] = ranked + hist_all[d];
      s.rel_slot[seg * buckets + d] = rel_ranked + hist_rel[d];
      hist_all[d] += all;
      hist_rel[d] += rel;
    }
    if (ranked < k && ranked + hist_all[d] >= k) {
      cutoff = d;
    }
    ranked += hist_all[d];
    rel_ranked += hist_rel[d];
  }

  // Rank of each code at a distance <= cutoff; AP terms of the relevant ones.
  double sum[kSegments] = {};
  int64_t in_top[kSegments] = {};
  int64_t* slot = s.slot.data();
  int64_t* rel_slot = s.rel_slot.data();
  int64_t* hits = s.hits.data();
  walk_segments(n, [&](int seg, int64_t j) {
    const int64_t key = keys[j], d = key >> 1, relevant = key & 1;
    if (d > cutoff) {
      return;
    }
    const int64_t rank = slot[seg * buckets + d]++;  // 0-based
    const int64_t found = (rel_slot[seg * buckets + d] += relevant);
    const int64_t counted = relevant & static_cast<int64_t>(rank < k);
    // A code that counts reads and writes at its rank; any other at its segment's spare
    // entry past k (inv_rank 0 there), which stays in cache: no random access for it.
    const int64_t at = counted ? rank : k + seg;
    sum[seg] += static_cast<double>(found) * inv_rank[at];
    hits[at] += counted;
    in_top[seg] += counted;
  });
  double total = 0.0;
  int64_t relevant_in_top = 0;
  for (int seg = 0; seg < kSegments; ++seg) {
    total += sum[seg];
    relevant_in_top += in_top[seg];
  }
  return relevant_in_top ? total / static_cast<double>(relevant_in_top) : 0.0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamming_rank_stats_kernel(
    const at::Tensor& queries, const at::Tensor& database, const at::Tensor& query_labels_in,
    const at::Tensor& db_labels_in, int64_t k, bool exact) {
  const Codes c = prepare(queries, database, "hamming_rank_stats");
  TORCH_CHECK(
      k >= 1 && k <= c.n_db, "hamming_rank_stats: k must be between 1 and the database size ",
      c.n_db, ", got ", k);
  TORCH_CHECK(
      c.bits <= 32760, "hamming_rank_stats: codes of at most 32,760 bits, got ", c.bits);
  check_label_words(query_labels_in, db_labels_in, c.n_queries, c.n_db, "hamming_rank_stats");
  const at::Tensor query_labels = query_labels_in.contiguous();
  const at::Tensor db_labels = db_labels_in.contiguous();
  const LabelWords labels{query_labels.const_data_ptr<int64_t>(), db_labels.const_data_ptr<int64_t>(),
                          query_labels.size(1), exact};
  const int64_t buckets = c.bits + 1;
  auto opts = queries.options();
  at::Tensor ap = at::empty({c.n_queries}, opts.dtype(at::kDouble));
  at::Tensor hist_all = at::empty({c.n_queries, buckets}, opts.dtype(at::kLong));
  at::Tensor hist_rel = at::empty({c.n_queries, buckets}, opts.dtype(at::kLong));
  at::Tensor hits_at_rank = at::zeros({k}, opts.dtype(at::kLong));
  double* ap_out = ap.mutable_data_ptr<double>();
  int64_t* all_out = hist_all.mutable_data_ptr<int64_t>();
  int64_t* rel_out = hist_rel.mutable_data_ptr<int64_t>();
  int64_t* hits_out = hits_at_rank.mutable_data_ptr<int64_t>();
  std::vector<double> inv_rank(k + kSegments, 0.0);  // 0 past k: the spare entries of rank_one_query
  for (int64_t r = 0; r < k; ++r) {
    inv_rank[r] = 1.0 / static_cast<double>(r + 1);
  }
  std::mutex merge;
  for_each_query_block(c, [&](int64_t q0, int64_t q1, Distances& block) {
    RankScratch scratch(c.bits, k);
    for (int64_t q = q0; q < q1; ++q) {
      uint16_t* keys = block[q - q0].data();
      add_relevance(labels, q, c.n_db, keys);
      ap_out[q] = rank_one_query(keys, c.n_db, k, inv_rank.data(), scratch,
                                 all_out + q * buckets, rel_out + q * buckets);
    }
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t r = 0; r < k; ++r) {
      hits_out[r] += scratch.hits[r];
    }
  });
  // Hits at each rank -> cumulative hits within the first r + 1 ranks.
  for (int64_t r = 1; r < k; ++r) {
    hits_out[r] += hits_out[r - 1];
  }
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

// Set distances for spatial search, layout: database rows grouped by image,
// image i owning rows [segments[i], segments[i+1]). out[i] = sum over the query
// rows of the minimum over image i's rows of their Hamming distance (int64, exact;
// the caller divides by the number of query rows for the mean). Query blocks run
// in parallel, each into its own partial sums, added in block order.
at::Tensor hamming_set_distance_kernel(
    const at::Tensor& queries, const at::Tensor& database, const at::Tensor& segments_in) {
  const Codes c = prepare(queries, database, "hamming_set_distance");
  const at::Tensor segments = segments_in.contiguous();
  TORCH_CHECK(segments.dim() == 1 && segments.scalar_type() == at::kLong && segments.size(0) >= 1,
              "hamming_set_distance: segments must be a 1-D int64 tensor of image offsets");
  const int64_t images = segments.size(0) - 1;
  const int64_t* seg = segments.const_data_ptr<int64_t>();
  TORCH_CHECK(seg[0] == 0 && seg[images] == c.n_db,
              "hamming_set_distance: segments must run from 0 to the database size ", c.n_db);
  for (int64_t i = 0; i < images; ++i) {
    TORCH_CHECK(seg[i + 1] > seg[i], "hamming_set_distance: image ", i, " has no rows");
  }
  at::Tensor out = at::zeros({images}, queries.options().dtype(at::kLong));
  if (images == 0 || c.n_queries == 0) {
    return out;
  }
  const int64_t blocks = (c.n_queries + kQueryBlock - 1) / kQueryBlock;
  std::vector<std::vector<int64_t>> partial(blocks, std::vector<int64_t>(images, 0));
  for_each_query_block(c, [&](int64_t q0, int64_t q1, const Distances& block) {
    std::vector<int64_t>& sums = partial[q0 / kQueryBlock];
    for (int64_t q = q0; q < q1; ++q) {
      const uint16_t* row = block[q - q0].data();
      for (int64_t i = 0; i < images; ++i) {
        sums[i] += *std::min_element(row + seg[i], row + seg[i + 1]);
      }
    }
  });
  int64_t* total = out.mutable_data_ptr<int64_t>();
  for (const auto& sums : partial) {
    for (int64_t i = 0; i < images; ++i) {
      total[i] += sums[i];
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssdh, CPU, m) {
  m.impl("hamming_set_distance", &hamming_set_distance_kernel);
  m.impl("hamming_topk", &hamming_topk_kernel);
  m.impl("hamming_radius", &hamming_radius_kernel);
  m.impl("hamming_distance", &hamming_distance_kernel);
  m.impl("hamming_rank_stats", &hamming_rank_stats_kernel);
}

}  // namespace cpu
}  // namespace ssdh
