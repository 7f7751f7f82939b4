// Hamming scans with AVX2, for CPUs without VPOPCNTQ: the popcount of a byte is a table
// lookup of each of its two nibbles (VPSHUFB, 32 lookups an instruction).
//
// Codes of 128 bits and of a whole number of 32-byte vectors (256 to 4096 bits): a
// database row is split into its nibbles once and compared with every query of the
// block, four queries at a time: the four byte-count vectors are reduced together
// (VPSADBW, then lane sums) into one vector of four distances, which a sink takes:
// the top-k / radius scan compares it with the four bounds (one branch rejects the four
// codes), the distance loop stores it. Codes of up to 64 bits go several to a vector
// (scan_lanes, below), the compares of eight queries ANDed and tested at once.
// Candidates go in database order per query, as the scalar scan adds them. Only built
// into functions compiled for AVX2 and only called when the CPU has it (popcount.cpp
// checks).
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "popcount.h"

#define SSDH_AVX2 __attribute__((target("avx2,popcnt")))

namespace ssdh {
namespace cpu {
namespace {

// Byte counters stay below 256: a vector adds at most 8 per byte (two nibbles of 4).
constexpr int64_t kMaxVectors = 16;

struct Nibbles {
  __m256i lo, hi;
};

struct Bounds {
  __m256i v;
};

// n 32-byte aligned T's, freed at the end of the scope (std::vector does not
// promise the alignment of vector types here).
template <typename T>
struct AlignedArray {
  T* data;
  explicit AlignedArray(size_t n)
      : data(static_cast<T*>(std::aligned_alloc(32, (n * sizeof(T) + 31) / 32 * 32))) {
    if (data == nullptr) {
      throw std::bad_alloc();
    }
  }
  ~AlignedArray() { std::free(data); }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  T& operator[](size_t i) { return data[i]; }
};

// The popcount of each nibble value, in both 128-bit halves (the VPSHUFB table).
SSDH_AVX2 __attribute__((always_inline)) inline __m256i nibble_counts() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                          0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

// A vector's bytes split into their low and high nibbles.
SSDH_AVX2 __attribute__((always_inline)) inline Nibbles split_vector(__m256i x) {
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  return {_mm256_and_si256(x, low4), _mm256_and_si256(_mm256_srli_epi16(x, 4), low4)};
}

SSDH_AVX2 __attribute__((always_inline)) inline Nibbles split(const uint8_t* p) {
  return split_vector(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The popcount of each byte of row ^ query (two lookups and an add).
SSDH_AVX2 __attribute__((always_inline)) inline __m256i nibble_popcounts(const Nibbles& row, const Nibbles& query,
                                                                        __m256i table) {
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_xor_si256(row.lo, query.lo)),
                         _mm256_shuffle_epi8(table, _mm256_xor_si256(row.hi, query.hi)));
}

// Per-byte popcounts of row ^ query, summed over the code's vectors.
template <int kVectors>
SSDH_AVX2 __attribute__((always_inline)) inline __m256i byte_counts(
    const Nibbles* row, const Nibbles* query, int vectors, __m256i table) {
  const int n = kVectors > 0 ? kVectors : vectors;
  __m256i acc = nibble_popcounts(row[0], query[0], table);
  for (int v = 1; v < n; ++v) {
    acc = _mm256_add_epi8(acc, nibble_popcounts(row[v], query[v], table));
  }
  return acc;
}

// [sum of a's bytes, of b's, of c's, of d's] as four 64-bit lanes.
SSDH_AVX2 __attribute__((always_inline)) inline __m256i sum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i zero = _mm256_setzero_si256();
  a = _mm256_sad_epu8(a, zero);  // four partial sums of 8 bytes each
  b = _mm256_sad_epu8(b, zero);
  c = _mm256_sad_epu8(c, zero);
  d = _mm256_sad_epu8(d, zero);
  // [a0+a1, b0+b1 | a2+a3, b2+b3] and the same for c, d.
  const __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
  const __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(c, d), _mm256_unpackhi_epi64(c, d));
  return _mm256_add_epi64(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

// Four queries' distances (q[0..3], each held twice) to rows j and j + 1 (one vector):
// [a, b | c, d] of row j in first, of row j + 1 in second.
struct RowPair {
  __m256i first, second;
};

SSDH_AVX2 __attribute__((always_inline)) inline RowPair pair_distances(const Nibbles& row, const Nibbles* q,
                                                                      __m256i table) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i s[4];
  for (int i = 0; i < 4; ++i) {
    s[i] = _mm256_sad_epu8(byte_counts<1>(&row, q + i, 1, table), zero);  // [r0 lo, r0 hi | r1 lo, r1 hi]
  }
  const __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(s[0], s[1]), _mm256_unpackhi_epi64(s[0], s[1]));
  const __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(s[2], s[3]), _mm256_unpackhi_epi64(s[2], s[3]));
  return {_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31)};
}

// Four queries' distances (their nibbles at q, `vectors` apiece) to one row, as four lanes.
template <int kVectors>
SSDH_AVX2 __attribute__((always_inline)) inline __m256i group_distances(const Nibbles* row, const Nibbles* q,
                                                                       int vectors, __m256i table) {
  return sum4(byte_counts<kVectors>(row, q, vectors, table), byte_counts<kVectors>(row, q + vectors, vectors, table),
              byte_counts<kVectors>(row, q + 2 * vectors, vectors, table),
              byte_counts<kVectors>(row, q + 3 * vectors, vectors, table));
}

// The bounds of queries q0..q0+3 (-1, which every distance exceeds, past the last).
SSDH_AVX2 __attribute__((always_inline)) inline __m256i bounds_of(const Candidates* c, int q0, int n) {
  auto bound = [&](int q) { return q < n ? static_cast<long long>(c[q].bound) : -1LL; };
  return _mm256_setr_epi64x(bound(q0), bound(q0 + 1), bound(q0 + 2), bound(q0 + 3));
}

// Each query's nibbles, vector by vector, for groups of four queries (a last group of
// fewer than four repeats the last query).
SSDH_AVX2 void split_queries(const uint8_t* queries, int n, int64_t bytes, int groups, Nibbles* out) {
  const int vectors = static_cast<int>(bytes / 32);
  for (int q = 0; q < groups * 4; ++q) {
    const uint8_t* code = queries + std::min(q, n - 1) * bytes;
    for (int v = 0; v < vectors; ++v) {
      out[q * vectors + v] = split(code + 32 * v);
    }
  }
}

// The same for 16-byte codes, each held twice in its vector (against two rows at once).
SSDH_AVX2 void split_query_pairs(const uint8_t* queries, int n, int groups, Nibbles* out) {
  for (int q = 0; q < groups * 4; ++q) {
    alignas(32) uint8_t twice[32];
    std::memcpy(twice, queries + std::min(q, n - 1) * 16, 16);
    std::memcpy(twice + 16, twice, 16);
    out[q] = split(twice);
  }
}

// The four 64-bit lanes of d (four queries' distances to row j) into out[q0 + i][j - first].
SSDH_AVX2 __attribute__((always_inline)) inline void store_distances(__m256i d, int q0, int n, int64_t at,
                                                                     uint16_t* const* out) {
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), d);
  for (int i = 0; i < 4 && q0 + i < n; ++i) {
    out[q0 + i][at] = static_cast<uint16_t>(lanes[i]);
  }
}

void add_hits(const long long* dist, int over, int q0, int n, int64_t j, Candidates* c);

// sink(j, g, d) for every row j in [first, last) and group g of four queries, d their
// four distances to the row (codes of whole 32-byte vectors): each row split into
// nibbles once for all the groups.
template <int kVectors, typename Sink>
SSDH_AVX2 __attribute__((always_inline)) inline void each_row_and_group(const uint8_t* queries, int n,
                                                                       const uint8_t* db, int64_t bytes,
                                                                       int64_t first, int64_t last, Sink& sink) {
  const int vectors = static_cast<int>(bytes / 32);
  const int groups = (n + 3) / 4;
  AlignedArray<Nibbles> query(static_cast<size_t>(groups) * 4 * vectors);
  split_queries(queries, n, bytes, groups, query.data);
  const __m256i table = nibble_counts();
  Nibbles row[kMaxVectors];
  for (int64_t j = first; j < last; ++j) {
    const uint8_t* code = db + j * bytes;
    for (int v = 0; v < (kVectors > 0 ? kVectors : vectors); ++v) {
      row[v] = split(code + 32 * v);
    }
    for (int g = 0; g < groups; ++g) {
      sink(j, g, group_distances<kVectors>(row, query.data + static_cast<size_t>(g) * 4 * vectors, vectors, table));
    }
  }
}

// The scan's sink: one compare of the four distances with the four bounds.
struct BoundSink {
  int n;
  Candidates* c;
  AlignedArray<Bounds> bounds;

  SSDH_AVX2 BoundSink(int queries, Candidates* candidates)
      : n(queries), c(candidates), bounds((queries + 3) / 4) {
    for (int g = 0; g < (n + 3) / 4; ++g) {
      bounds[g].v = bounds_of(c, 4 * g, n);
    }
  }

  SSDH_AVX2 __attribute__((always_inline)) inline void operator()(int64_t j, int g, __m256i d) {
    const int over = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(d, bounds[g].v)));
    if (__builtin_expect(over != 0xF, 0)) {
      alignas(32) long long dist[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(dist), d);
      add_hits(dist, over, 4 * g, n, j, c);
      bounds[g].v = bounds_of(c, 4 * g, n);
    }
  }

  // Rows j and j + 1 at once (128-bit codes): one branch for both.
  SSDH_AVX2 __attribute__((always_inline)) inline void pair(int64_t j, int g, RowPair d) {
    const int over0 = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(d.first, bounds[g].v)));
    const int over1 = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(d.second, bounds[g].v)));
    if (__builtin_expect((over0 & over1) != 0xF, 0)) {
      (*this)(j, g, d.first);
      (*this)(j + 1, g, d.second);  // compared again: the bound may have tightened for row j + 1
    }
  }
};

// The distances' sink: the four lanes stored at out[q][j - first].
struct StoreSink {
  int n;
  int64_t first;
  uint16_t* const* out;

  SSDH_AVX2 __attribute__((always_inline)) inline void operator()(int64_t j, int g, __m256i d) {
    store_distances(d, 4 * g, n, j - first, out);
  }

  SSDH_AVX2 __attribute__((always_inline)) inline void pair(int64_t j, int g, RowPair d) {
    store_distances(d.first, 4 * g, n, j - first, out);
    store_distances(d.second, 4 * g, n, j + 1 - first, out);
  }
};

template <int kVectors>
SSDH_AVX2 void scan_vectors(const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                            int64_t last, Candidates* c) {
  BoundSink sink(n, c);
  each_row_and_group<kVectors>(queries, n, db, bytes, first, last, sink);
}

// The lanes of `d` (four queries' distances to one row) within their bounds: add them.
__attribute__((noinline)) void add_hits(const long long* dist, int over, int q0, int n, int64_t j,
                                        Candidates* c) {
  for (int lane = 0; lane < 4; ++lane) {
    const int qi = q0 + lane;
    if (!(over >> lane & 1) && qi < n && dist[lane] <= c[qi].bound) {
      add_candidate(c[qi], j, static_cast<int>(dist[lane]));
    }
  }
}

// 128-bit codes: one vector holds two consecutive rows, compared with a query held
// twice; the reduction of four queries' counts gives each row's four distances
// (sink.pair(j, g, d) for rows j and j + 1 and group g). Returns the row the pairs
// stopped at: last, or an odd last row for the caller's scalar loop.
template <typename Sink>
SSDH_AVX2 __attribute__((always_inline)) inline int64_t each_row_pair_and_group(const uint8_t* queries, int n,
                                                                               const uint8_t* db, int64_t first,
                                                                               int64_t last, Sink& sink) {
  const int groups = (n + 3) / 4;
  AlignedArray<Nibbles> query(static_cast<size_t>(groups) * 4);
  split_query_pairs(queries, n, groups, query.data);
  const __m256i table = nibble_counts();
  int64_t j = first;
  for (; j + 2 <= last; j += 2) {
    const Nibbles row = split(db + j * 16);
    for (int g = 0; g < groups; ++g) {
      sink.pair(j, g, pair_distances(row, query.data + 4 * g, table));
    }
  }
  return j;
}

SSDH_AVX2 void scan_pairs(const uint8_t* queries, int n, const uint8_t* db, int64_t first, int64_t last,
                          Candidates* c) {
  BoundSink sink(n, c);
  const int64_t j = each_row_pair_and_group(queries, n, db, first, last, sink);
  if (j < last) {  // an odd last row, with the scalar loop
    for (int q = 0; q < n; ++q) {
      const int d = code_distance<16>(queries + q * 16, db + j * 16, 16);
      if (d <= c[q].bound) {
        add_candidate(c[q], j, d);
      }
    }
  }
}

// All distances of n queries to rows [first, last) into out[q][j - first], for codes of
// whole 32-byte vectors: the scan_vectors loop with a store in place of the bound.
template <int kVectors>
SSDH_AVX2 void distance_vectors(const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                                int64_t last, uint16_t* const* out) {
  StoreSink sink{n, first, out};
  each_row_and_group<kVectors>(queries, n, db, bytes, first, last, sink);
}

// The same for 128-bit codes, two rows to a vector (scan_pairs' loop).
SSDH_AVX2 void distance_pairs(const uint8_t* queries, int n, const uint8_t* db, int64_t first, int64_t last,
                              uint16_t* const* out) {
  StoreSink sink{n, first, out};
  const int64_t j = each_row_pair_and_group(queries, n, db, first, last, sink);
  if (j < last) {  // an odd last row, with the scalar loop
    for (int q = 0; q < n; ++q) {
      out[q][j - first] = static_cast<uint16_t>(code_distance<16>(queries + q * 16, db + j * 16, 16));
    }
  }
}

// Consecutive codes of up to Lane bytes, each zero-extended into a lane of Lane (8 or
// 4) bytes: the 32 / Lane rows from j on come from two 16-byte loads (rows j.. and
// rows j + 16 / Lane..), spread by a byte shuffle within each 128-bit half; a lane
// of 4 whole bytes is the row as it lies (one 32-byte load).
template <int Lane>
struct LaneCodes {
  static constexpr int kRows = 32 / Lane;   // codes to a vector
  static constexpr int kHalf = 16 / Lane;   // codes to a 128-bit half
  int64_t bytes;
  __m256i spread;

  SSDH_AVX2 explicit LaneCodes(int64_t code_bytes) : bytes(code_bytes) {
    alignas(32) int8_t index[32];
    for (int half = 0; half < 2; ++half) {
      for (int lane = 0; lane < kHalf; ++lane) {
        for (int i = 0; i < Lane; ++i) {
          index[half * 16 + lane * Lane + i] = i < bytes ? static_cast<int8_t>(lane * bytes + i) : int8_t(-128);
        }
      }
    }
    spread = _mm256_load_si256(reinterpret_cast<const __m256i*>(index));
  }

  // Whether the load of rows j on stays within a block ending at row `last`: the rows
  // are there and (j + kHalf) * bytes + 16 <= last * bytes.
  SSDH_AVX2 __attribute__((always_inline)) inline bool fits(int64_t j, int64_t last) const {
    return j + kRows <= last && (j + kHalf) * bytes + 16 <= last * bytes;
  }

  // Reads kHalf * bytes + 16 bytes from `codes` (32 when Lane == bytes == 4).
  SSDH_AVX2 __attribute__((always_inline)) inline __m256i load(const uint8_t* codes) const {
    if (Lane == 4 && bytes == 4) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
    }
    const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + kHalf * bytes));
    return _mm256_shuffle_epi8(_mm256_set_m128i(second, first), spread);
  }

  // The popcount of each lane from its byte counts: VPSADBW for 8-byte lanes, two
  // multiply-adds (VPMADDUBSW, VPMADDWD) for 4-byte ones.
  SSDH_AVX2 __attribute__((always_inline)) static inline __m256i lane_sums(__m256i counts) {
    if (Lane == 8) {
      return _mm256_sad_epu8(counts, _mm256_setzero_si256());
    }
    return _mm256_madd_epi16(_mm256_maddubs_epi16(counts, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
  }

  SSDH_AVX2 __attribute__((always_inline)) static inline __m256i broadcast(int64_t value) {
    return Lane == 8 ? _mm256_set1_epi64x(value) : _mm256_set1_epi32(static_cast<int>(value));
  }

  // All ones in each lane whose distance is above the bound.
  SSDH_AVX2 __attribute__((always_inline)) static inline __m256i over(__m256i d, __m256i bound) {
    return Lane == 8 ? _mm256_cmpgt_epi64(d, bound) : _mm256_cmpgt_epi32(d, bound);
  }
};

// A query's code (a zero-extended word) in every lane of Lane bytes, split into nibbles.
template <int Lane>
SSDH_AVX2 __attribute__((always_inline)) inline Nibbles lane_query(uint64_t code) {
  return split_vector(Lane == 8 ? _mm256_set1_epi64x(static_cast<long long>(code))
                                : _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(code))));
}

// The kRows distances in the lanes of d (from lane_sums) as consecutive uint16 at out.
template <int Lane>
SSDH_AVX2 __attribute__((always_inline)) inline void store_lanes(__m256i d, uint16_t* out) {
  if (Lane == 8) {  // four 64-bit lanes: their low halves together, then narrowed
    const __m128i low = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(d, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi32(low, low));
    return;
  }
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(d, d), 0x08);  // [d0..d3, d4..d7 | ...]
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
}

// Queries whose compares with their bounds are ANDed in scan_lanes: one test and branch
// rejects a vector of rows for all of them, rather than a movemask and a branch for each
// query. The queries are padded to whole groups.
constexpr int kTestedQueries = 8;

// The rare path of scan_lanes: some lane of the group of queries q0 .. q1 - 1 was
// within its bound for the rows from j on (their nibbles lo and hi, passed in
// registers). Each query's distances are taken again, and its rows within its bound
// added in database order.
template <int Lane>
SSDH_AVX2 __attribute__((noinline)) void add_lane_hits(__m256i lo, __m256i hi, const Nibbles* query,
                                                       Bounds* bounds, int q0, int q1, int64_t j,
                                                       Candidates* c) {
  using Codes = LaneCodes<Lane>;
  const __m256i table = nibble_counts();
  for (int q = q0; q < q1; ++q) {
    const __m256i counts = nibble_popcounts({lo, hi}, query[q], table);
    alignas(32) int64_t dist8[4];
    alignas(32) int32_t dist4[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(Lane == 8 ? static_cast<void*>(dist8) : dist4),
                       Codes::lane_sums(counts));
    for (int lane = 0; lane < Codes::kRows; ++lane) {
      const int d = Lane == 8 ? static_cast<int>(dist8[lane]) : dist4[lane];
      if (d <= c[q].bound) {
        add_candidate(c[q], j + lane, d);
      }
    }
    bounds[q].v = Codes::broadcast(c[q].bound);
  }
}

// The scan of codes of up to Lane bytes: kRows database codes to a vector, their
// nibbles split once for every query of the block; a query's kRows distances are two
// lookups, an add and the lane sums, compared with its bound, and the compares of
// kTestedQueries queries ANDed reject all their rows with one test. The queries are padded
// to whole groups with a bound of -1, which every distance exceeds. The last rows
// (whose loads would run past the block) go through the scalar loop.
template <int Lane>
SSDH_AVX2 void scan_lanes(const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                          int64_t last, Candidates* c) {
  using Codes = LaneCodes<Lane>;
  const Codes loader(bytes);
  const __m256i table = nibble_counts();
  const __m256i ones = _mm256_set1_epi8(-1);
  const int padded = (n + kTestedQueries - 1) / kTestedQueries * kTestedQueries;
  AlignedArray<Nibbles> query(padded);
  AlignedArray<Bounds> bounds(padded);
  for (int q = 0; q < padded; ++q) {
    query[q] = lane_query<Lane>(queries[std::min(q, n - 1)]);
    bounds[q].v = Codes::broadcast(q < n ? c[q].bound : -1);
  }
  int64_t j = first;
  for (; loader.fits(j, last); j += Codes::kRows) {
    const Nibbles row = split_vector(loader.load(db + j * bytes));
    for (int q0 = 0; q0 < padded; q0 += kTestedQueries) {
      __m256i over = ones;
      const Nibbles* group = query.data + q0;
      const Bounds* group_bounds = bounds.data + q0;
      for (int i = 0; i < kTestedQueries; ++i) {  // a constant trip count (the build has -fwrapv)
        const __m256i counts = nibble_popcounts(row, group[i], table);
        over = _mm256_and_si256(over, Codes::over(Codes::lane_sums(counts), group_bounds[i].v));
      }
      if (__builtin_expect(!_mm256_testc_si256(over, ones), 0)) {
        add_lane_hits<Lane>(row.lo, row.hi, query.data, bounds.data, q0, std::min(q0 + kTestedQueries, n), j, c);
      }
    }
  }
  for (; j < last; ++j) {
    uint64_t code = 0;
    std::memcpy(&code, db + j * bytes, bytes);
    for (int q = 0; q < n; ++q) {
      const int d = __builtin_popcountll(code ^ queries[q]);
      if (d <= c[q].bound) {
        add_candidate(c[q], j, d);
      }
    }
  }
}

// All distances of n queries (codes of up to Lane bytes, consecutive) to rows [first,
// last) into out[q][j - first]: scan_lanes' loop, each query's kRows distances stored
// as uint16 in place of the bound; the last rows (whose loads would run past the block)
// by the scalar loop.
template <int Lane>
SSDH_AVX2 void distance_lanes(const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                              int64_t last, uint16_t* const* out) {
  using Codes = LaneCodes<Lane>;
  const Codes loader(bytes);
  const __m256i table = nibble_counts();
  std::vector<uint64_t> words(n);
  AlignedArray<Nibbles> query(n);
  for (int q = 0; q < n; ++q) {
    std::memcpy(&words[q], queries + q * bytes, bytes);  // zero-extended (words start at 0)
    query[q] = lane_query<Lane>(words[q]);
  }
  int64_t j = first;
  for (; loader.fits(j, last); j += Codes::kRows) {
    const Nibbles row = split_vector(loader.load(db + j * bytes));
    for (int q = 0; q < n; ++q) {
      store_lanes<Lane>(Codes::lane_sums(nibble_popcounts(row, query[q], table)), out[q] + (j - first));
    }
  }
  for (; j < last; ++j) {
    uint64_t code = 0;
    std::memcpy(&code, db + j * bytes, bytes);
    for (int q = 0; q < n; ++q) {
      out[q][j - first] = static_cast<uint16_t>(__builtin_popcountll(code ^ words[q]));
    }
  }
}

}  // namespace

// Codes of 1 to 8 bytes with AVX2: eight to a vector up to 4 bytes (32 bits), four
// up to 8 (scan_lanes).
SSDH_AVX2 void scan_short_avx2(const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                               int64_t last, Candidates* c) {
  if (bytes <= 4) {
    return scan_lanes<4>(queries, n, db, bytes, first, last, c);
  }
  return scan_lanes<8>(queries, n, db, bytes, first, last, c);
}

bool long_scan_avx2_fits(int64_t bytes) {
  return bytes == 16 || (bytes % 32 == 0 && bytes >= 32 && bytes / 32 <= kMaxVectors);
}

namespace {

// fn.template operator()<k>() with k the number of 32-byte vectors in a code of `bytes`
// bytes, as a compile-time constant for the common lengths (0: any other).
template <typename Fn>
inline void by_vector_count(int64_t bytes, const Fn& fn) {
  switch (bytes / 32) {
    case 1: return fn.template operator()<1>();
    case 2: return fn.template operator()<2>();
    case 4: return fn.template operator()<4>();
    default: return fn.template operator()<0>();
  }
}

}  // namespace

SSDH_AVX2 void distances_short_avx2(const uint8_t* queries, int n, const uint8_t* db, int64_t bytes,
                                    int64_t first, int64_t last, uint16_t* const* out) {
  if (bytes <= 4) {
    return distance_lanes<4>(queries, n, db, bytes, first, last, out);
  }
  return distance_lanes<8>(queries, n, db, bytes, first, last, out);
}

SSDH_AVX2 void distances_long_avx2(const uint8_t* queries, int n, const uint8_t* db, int64_t bytes,
                                   int64_t first, int64_t last, uint16_t* const* out) {
  if (bytes == 16) {
    return distance_pairs(queries, n, db, first, last, out);
  }
  by_vector_count(bytes, [&]<int K>() { distance_vectors<K>(queries, n, db, bytes, first, last, out); });
}

SSDH_AVX2 void scan_long_avx2(const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                              int64_t last, Candidates* c) {
  if (bytes == 16) {
    return scan_pairs(queries, n, db, first, last, c);
  }
  by_vector_count(bytes, [&]<int K>() { scan_vectors<K>(queries, n, db, bytes, first, last, c); });
}

}  // namespace cpu
}  // namespace ssdh
