// Codes of at most 64 bits with AVX-512: eight database codes per vector
// register, VPOPCNTQ counts all eight distances in one instruction and one
// compare against the query's bound rejects the eight at once. Codes shorter
// than 8 bytes (48 bits: 6 bytes) are loaded eight at a time and spread into
// the eight 64-bit lanes with one byte permutation (VBMI). Only built into
// functions compiled for those extensions and only called when the CPU has
// them (popcount.cpp checks).
#include <immintrin.h>

#include <algorithm>

#include "popcount.h"

#define SSDH_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vpopcntdq,popcnt")))

namespace ssdh {
namespace cpu {
namespace {

// Loads up to eight consecutive codes of `bytes` (1..8) bytes, each
// zero-extended into its own 64-bit lane.
struct ShortCodeLoader {
  int64_t bytes;
  __m512i spread;  // byte i of lane l <- byte l * bytes + i of the loaded run
  __mmask64 keep;  // the code's own bytes in each lane (the rest are zeroed)

  SSDH_AVX512 explicit ShortCodeLoader(int64_t code_bytes) : bytes(code_bytes), keep(0) {
    alignas(64) uint8_t index[64];
    for (int lane = 0; lane < 8; ++lane) {
      for (int i = 0; i < 8; ++i) {
        const bool own = i < bytes;
        index[lane * 8 + i] = own ? static_cast<uint8_t>(lane * bytes + i) : 0;
        keep |= static_cast<__mmask64>(own) << (lane * 8 + i);
      }
    }
    spread = _mm512_load_si512(index);
  }

  // Codes [0, count) of the run starting at `codes`; lanes >= count are zero.
  SSDH_AVX512 __attribute__((always_inline)) inline __m512i load(
      const uint8_t* codes, int64_t count) const {
    const int64_t run = count * bytes;
    const __mmask64 bytes_in = run >= 64 ? ~__mmask64(0) : (__mmask64(1) << run) - 1;
    const __m512i raw = _mm512_maskz_loadu_epi8(bytes_in, codes);
    return bytes == 8 ? raw : _mm512_maskz_permutexvar_epi8(keep, spread, raw);
  }
};

SSDH_AVX512 __attribute__((always_inline)) inline __mmask8 lanes_of(int64_t count) {
  return count >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << count) - 1);
}

// The rare path: some of the eight codes at database rows j.. are within the
// bound; add them in database order (the bound may tighten in between).
SSDH_AVX512 __attribute__((noinline)) void add_lanes(
    __m512i distances, __mmask8 hits, int64_t j, Candidates& c) {
  alignas(64) uint64_t d[8];
  _mm512_store_si512(d, distances);
  for (unsigned m = hits; m != 0; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    if (static_cast<int>(d[lane]) <= c.bound) {
      add_candidate(c, j + lane, static_cast<int>(d[lane]));
    }
  }
}

// kQueries queries against rows [first, last): their words and bounds stay in
// registers while each group of eight database codes is loaded once.
template <int kQueries>
SSDH_AVX512 __attribute__((always_inline)) inline void scan_fixed(
    const ShortCodeLoader& loader, const uint64_t* queries, const uint8_t* db, int64_t first,
    int64_t last, Candidates* c) {
  __m512i query[kQueries], bound[kQueries];
  for (int q = 0; q < kQueries; ++q) {
    query[q] = _mm512_set1_epi64(static_cast<long long>(queries[q]));
    bound[q] = _mm512_set1_epi64(c[q].bound);
  }
  for (int64_t j = first; j < last; j += 8) {
    const __mmask8 lanes = lanes_of(last - j);
    const __m512i codes = loader.load(db + j * loader.bytes, last - j);
    for (int q = 0; q < kQueries; ++q) {
      const __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(codes, query[q]));
      const __mmask8 hits = _mm512_mask_cmple_epu64_mask(lanes, d, bound[q]);
      if (__builtin_expect(hits != 0, 0)) {
        add_lanes(d, hits, j, c[q]);
        bound[q] = _mm512_set1_epi64(c[q].bound);
      }
    }
  }
}

}  // namespace

SSDH_AVX512 void scan_short_avx512(
    const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
    int64_t last, Candidates* c) {
  const ShortCodeLoader loader(bytes);
  int q = 0;
  for (; q + 8 <= n; q += 8) {
    scan_fixed<8>(loader, queries + q, db, first, last, c + q);
  }
  for (; q + 4 <= n; q += 4) {
    scan_fixed<4>(loader, queries + q, db, first, last, c + q);
  }
  for (; q < n; ++q) {
    scan_fixed<1>(loader, queries + q, db, first, last, c + q);
  }
}

SSDH_AVX512 void distances_short_avx512(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  const ShortCodeLoader loader(bytes);
  uint64_t word = 0;
  std::memcpy(&word, query, bytes);
  const __m512i q = _mm512_set1_epi64(static_cast<long long>(word));
  for (int64_t j = first; j < last; j += 8) {
    const __m512i codes = loader.load(db + j * bytes, last - j);
    const __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(codes, q));
    _mm512_mask_cvtepi64_storeu_epi16(out + (j - first), lanes_of(last - j), d);
  }
}

}  // namespace cpu
}  // namespace ssdh
