// The portable and POPCNT builds of the loops and the run-time choice of a build.
#include "popcount.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace ssdh {
namespace cpu {
namespace {

// Common code lengths get a loop specialised for their byte count:
// Loop<kBytes>::run(args...) with kBytes the byte count, or 0 for any other.
template <template <int> class Loop, typename... Args>
__attribute__((always_inline)) inline void by_code_length(int64_t bytes, Args&&... args) {
  switch (bytes) {
    case 2: return Loop<2>::run(args...);
    case 4: return Loop<4>::run(args...);
    case 6: return Loop<6>::run(args...);
    case 8: return Loop<8>::run(args...);
    case 16: return Loop<16>::run(args...);
    case 32: return Loop<32>::run(args...);
    case 64: return Loop<64>::run(args...);
    default: return Loop<0>::run(args...);
  }
}

template <int kBytes>
struct DistanceLoop {
  __attribute__((always_inline)) static inline void run(
      const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
      uint16_t* out) {
    for (int64_t j = first; j < last; ++j) {
      out[j - first] = static_cast<uint16_t>(code_distance<kBytes>(query, db + j * bytes, bytes));
    }
  }
};

template <int kBytes>
struct ScanLoop {
  __attribute__((always_inline)) static inline void run(
      const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
      Candidates& c) {
    for (int64_t j = first; j < last; ++j) {
      const int d = code_distance_within<kBytes>(query, db + j * bytes, bytes, c.bound);
      if (d <= c.bound) {
        add_candidate(c, j, d);
      }
    }
  }
};

// Codes of 1 to 8 bytes, each loaded as one word: 8 bytes read and masked to the
// code's own (the last rows, whose 8 bytes would run past the block, copied byte
// by byte), compared with kQueries queries held in registers.
template <int kQueries>
__attribute__((always_inline)) inline void scan_short_fixed(
    const uint64_t* queries, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates* c) {
  const uint64_t mask = bytes >= 8 ? ~uint64_t(0) : (uint64_t(1) << (8 * bytes)) - 1;
  const int64_t whole = std::max(first, last - 8);  // rows j < whole: j * bytes + 8 <= last * bytes
  int bound[kQueries];
  for (int q = 0; q < kQueries; ++q) {
    bound[q] = c[q].bound;
  }
  for (int64_t j = first; j < last; ++j) {
    uint64_t code = 0;
    if (__builtin_expect(j < whole, 1)) {
      std::memcpy(&code, db + j * bytes, 8);
      code &= mask;
    } else {
      std::memcpy(&code, db + j * bytes, bytes);
    }
    for (int q = 0; q < kQueries; ++q) {
      const int d = __builtin_popcountll(code ^ queries[q]);
      if (__builtin_expect(d <= bound[q], 0)) {
        add_candidate(c[q], j, d);
        bound[q] = c[q].bound;
      }
    }
  }
}

__attribute__((always_inline)) inline void scan_short_any(
    const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates* c) {
  int q = 0;
  for (; q + 8 <= n; q += 8) {
    scan_short_fixed<8>(queries + q, db, bytes, first, last, c + q);
  }
  for (; q + 4 <= n; q += 4) {
    scan_short_fixed<4>(queries + q, db, bytes, first, last, c + q);
  }
  for (; q < n; ++q) {
    scan_short_fixed<1>(queries + q, db, bytes, first, last, c + q);
  }
}

// The block scans of codes of 1 to 8 bytes.
void scan_short_generic(const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first,
                        int64_t last, Candidates* c) {
  scan_short_any(queries, n, db, bytes, first, last, c);
}

__attribute__((target("popcnt"))) void scan_short_popcnt(
    const uint64_t* queries, int n, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates* c) {
  scan_short_any(queries, n, db, bytes, first, last, c);
}

void scan_generic(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates& c) {
  by_code_length<ScanLoop>(bytes, query, db, bytes, first, last, c);
}

__attribute__((target("popcnt"))) void scan_popcnt(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates& c) {
  by_code_length<ScanLoop>(bytes, query, db, bytes, first, last, c);
}

void distances_generic(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  by_code_length<DistanceLoop>(bytes, query, db, bytes, first, last, out);
}

__attribute__((target("popcnt"))) void distances_popcnt(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  by_code_length<DistanceLoop>(bytes, query, db, bytes, first, last, out);
}

PopcountLevel detect_level() {
  PopcountLevel level = PopcountLevel::kGeneric;
  if (__builtin_cpu_supports("popcnt")) {
    level = PopcountLevel::kPopcnt;
    if (__builtin_cpu_supports("avx2")) {
      level = PopcountLevel::kAvx2;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("avx512vpopcntdq")) {
      level = PopcountLevel::kAvx512;
    }
  }
  const char* cap = std::getenv("SSDH_CPU_POPCOUNT");
  if (cap == nullptr || *cap == '\0') {
    return level;
  }
  const std::string name(cap);
  PopcountLevel wanted;
  if (name == "generic") {
    wanted = PopcountLevel::kGeneric;
  } else if (name == "popcnt") {
    wanted = PopcountLevel::kPopcnt;
  } else if (name == "avx2") {
    wanted = PopcountLevel::kAvx2;
  } else if (name == "avx512") {
    wanted = PopcountLevel::kAvx512;
  } else {
    TORCH_CHECK(false, "SSDH_CPU_POPCOUNT must be generic, popcnt, avx2 or avx512, got '", name, "'");
  }
  return std::min(level, wanted);
}

}  // namespace

PopcountLevel popcount_level() {
  static const PopcountLevel level = detect_level();
  return level;
}

ShortScanFn best_short_scan_fn(int64_t bytes) {
  switch (popcount_level()) {
    case PopcountLevel::kAvx512:
      return bytes <= 8 ? &scan_short_avx512 : nullptr;
    case PopcountLevel::kAvx2:
      return bytes <= 8 ? &scan_short_avx2 : nullptr;
    case PopcountLevel::kPopcnt:
      return bytes <= 8 ? &scan_short_popcnt : nullptr;
    default:
      return bytes <= 8 ? &scan_short_generic : nullptr;
  }
}

LongScanFn best_long_scan_fn(int64_t bytes) {
  return popcount_level() >= PopcountLevel::kAvx2 && long_scan_avx2_fits(bytes) ? &scan_long_avx2 : nullptr;
}

BlockDistanceFn best_block_distance_fn(int64_t bytes) {
  const PopcountLevel level = popcount_level();
  if (level >= PopcountLevel::kAvx2 && long_scan_avx2_fits(bytes)) {
    return &distances_long_avx2;
  }
  // Short codes: the AVX-512 build's per-query loop compares eight codes an instruction.
  return level == PopcountLevel::kAvx2 && bytes <= 8 ? &distances_short_avx2 : nullptr;
}

ScanFn best_scan_fn() {
  return popcount_level() >= PopcountLevel::kPopcnt ? &scan_popcnt : &scan_generic;
}

DistanceFn best_distance_fn(int64_t bytes) {
  switch (popcount_level()) {
    case PopcountLevel::kAvx512:
      return bytes <= 8 ? &distances_short_avx512 : &distances_popcnt;
    case PopcountLevel::kAvx2:
    case PopcountLevel::kPopcnt:
      return &distances_popcnt;
    default:
      return &distances_generic;
  }
}

}  // namespace cpu
}  // namespace ssdh
