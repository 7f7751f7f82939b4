// Hamming distance of packed codes on the CPU: 8 bytes at a time as uint64
// words, then the remaining bytes. Builds of the same loops for several
// instruction sets (portable, POPCNT, AVX-512 VPOPCNTQ for codes of up to 64
// bits), picked once at run time: one implementation per instruction set
// behind one interface.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace ssdh {
namespace cpu {

// The n bytes at p (1 to 7), little-endian, zero-extended into a word: built in
// registers from 4-, 2- and 1-byte loads. (A memcpy into a zeroed stack word
// compiles to partial stores and a wide load, whose failed store forwarding cost
// the 48-bit distance loop 7x.)
__attribute__((always_inline)) inline uint64_t load_partial_word(const uint8_t* p, int64_t n) {
  uint64_t x = 0;
  int shift = 0;
  if (n & 4) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    x = v;
    shift = 32;
  }
  if (n & 2) {
    uint16_t v;
    std::memcpy(&v, p + shift / 8, 2);
    x |= static_cast<uint64_t>(v) << shift;
    shift += 16;
  }
  if (n & 1) {
    x |= static_cast<uint64_t>(p[shift / 8]) << shift;
  }
  return x;
}

// Distance between two codes of `bytes` bytes (kBytes > 0: known at compile
// time, so the loop unrolls). Always inlined, so that __builtin_popcountll
// becomes the POPCNT instruction inside a caller compiled for it and a
// portable bit count elsewhere.
template <int kBytes>
__attribute__((always_inline)) inline int code_distance(
    const uint8_t* a, const uint8_t* b, int64_t runtime_bytes) {
  const int64_t bytes = kBytes > 0 ? kBytes : runtime_bytes;
  int d = 0;
  int64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    d += __builtin_popcountll(x ^ y);
  }
  if (i < bytes) {  // the last 1..7 bytes as one zero-padded word
    d += __builtin_popcountll(load_partial_word(a + i, bytes - i) ^ load_partial_word(b + i, bytes - i));
  }
  return d;
}

// Popcount of a ^ b over bytes [from, to), both multiples of 8 (whole words).
__attribute__((always_inline)) inline int words_distance(
    const uint8_t* a, const uint8_t* b, int64_t from, int64_t to) {
  int d = 0;
  for (int64_t i = from; i < to; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    d += __builtin_popcountll(x ^ y);
  }
  return d;
}

// The distance when it is at most `bound`; otherwise some value above the bound,
// possibly before the whole code is read ("early abandon", exact for a scan
// that keeps codes within the bound): codes of 32 bytes and more are checked
// after their first 16 bytes, codes of 64 and more again after 32. A code far
// from the query (another cluster of a trained code space) costs a quarter of
// its popcounts once the bound has tightened.
template <int kBytes>
__attribute__((always_inline)) inline int code_distance_within(
    const uint8_t* a, const uint8_t* b, int64_t runtime_bytes, int bound) {
  const int64_t bytes = kBytes > 0 ? kBytes : runtime_bytes;
  if (bytes < 32) {
    return code_distance<kBytes>(a, b, bytes);
  }
  int d = words_distance(a, b, 0, 16);
  if (d > bound) {
    return d;
  }
  int64_t done = 16;
  if (bytes >= 64) {
    d += words_distance(a, b, 16, 32);
    if (d > bound) {
      return d;
    }
    done = 32;
  }
  return d + code_distance<0>(a + done, b + done, bytes - done);
}

// The instruction sets with a build of the loops, in increasing order. The
// level used is the best the CPU has, capped by the environment variable
// SSDH_CPU_POPCOUNT=generic|popcnt|avx2|avx512 (to test or compare the builds).
enum class PopcountLevel { kGeneric = 0, kPopcnt = 1, kAvx2 = 2, kAvx512 = 3 };
PopcountLevel popcount_level();

// Distances from one query to database rows [first, last) into out[].
using DistanceFn = void (*)(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, uint16_t*);

// The fastest implementation for codes of `bytes` bytes on this CPU.
DistanceFn best_distance_fn(int64_t bytes);

// The codes of one query within a distance bound, in database order. With k > 0
// the bound tightens as the scan goes: once at least k codes lie below it, no
// code at the bound can be among the k nearest, so the bound drops by one.
// Every code at a distance <= the final bound is kept, which is all that the k
// nearest (and their ties) need; nothing else is stored.
struct Candidates {
  std::vector<int64_t> index;
  std::vector<uint16_t> distance;
  std::vector<int64_t> count;  // candidates per distance (when k > 0)
  int64_t below = 0;           // candidates closer than the bound
  int64_t k = 0;               // 0: a fixed bound (radius search)
  int bound = 0;

  void reset(int start_bound, int64_t nearest, int64_t bits) {
    index.clear();
    distance.clear();
    count.assign(bits + 1, 0);
    below = 0;
    k = nearest;
    bound = start_bound;
  }
};

using ScanFn = void (*)(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, Candidates&);

// Scan database rows [first, last) for one query into its candidates.
ScanFn best_scan_fn();

// Codes of at most 8 bytes, n queries at once (each given as its code in a
// zero-extended word): each database code is loaded once and compared with
// every query while the queries sit in registers.
using ShortScanFn =
    void (*)(const uint64_t*, int, const uint8_t*, int64_t, int64_t, int64_t, Candidates*);

// The block scan for codes of `bytes` bytes, or nullptr where this CPU has
// none (then scan each query with best_scan_fn).
ShortScanFn best_short_scan_fn(int64_t bytes);

// Codes of whole 32-byte vectors, n queries at once (their codes consecutive): each
// database code is read and split once for all of them.
using LongScanFn =
    void (*)(const uint8_t*, int, const uint8_t*, int64_t, int64_t, int64_t, Candidates*);

// The block scan for codes of `bytes` bytes, or nullptr (then scan each query with
// best_scan_fn).
LongScanFn best_long_scan_fn(int64_t bytes);

// The AVX2 builds (popcount_avx2.cpp): codes of 1 to 8 bytes, four to a vector; codes
// of 16 bytes and of 32 to 512 bytes in whole vectors.
void scan_short_avx2(
    const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
    int64_t last, Candidates* c);
bool long_scan_avx2_fits(int64_t bytes);
void scan_long_avx2(
    const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates* c);

// All distances of n queries (their codes consecutive) to rows [first, last) into
// out[q][j - first], each database code read and split once for all of them.
using BlockDistanceFn =
    void (*)(const uint8_t*, int, const uint8_t*, int64_t, int64_t, int64_t, uint16_t* const*);

// The block distances for codes of `bytes` bytes, or nullptr (then each query with
// best_distance_fn).
BlockDistanceFn best_block_distance_fn(int64_t bytes);

// The AVX2 builds of the block distances: codes of 1 to 8 bytes (several to a vector),
// and the codes long_scan_avx2_fits takes.
void distances_short_avx2(
    const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* const* out);
void distances_long_avx2(
    const uint8_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* const* out);

// The AVX-512 builds (popcount_avx512.cpp), for codes of 1 to 8 bytes.
void scan_short_avx512(
    const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
    int64_t last, Candidates* c);
void distances_short_avx512(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out);

// Append code j at distance d to c, tightening the bound (the rare path of a scan).
inline void add_candidate(Candidates& c, int64_t j, int d) {
  c.index.push_back(j);
  c.distance.push_back(static_cast<uint16_t>(d));
  if (c.k > 0) {
    ++c.count[d];
    if (d < c.bound && ++c.below >= c.k) {
      while (c.bound > 0 && c.below >= c.k) {
        --c.bound;
        c.below -= c.count[c.bound];
      }
    }
  }
}

}  // namespace cpu
}  // namespace ssdh
