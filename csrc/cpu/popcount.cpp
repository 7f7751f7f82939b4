// The two builds of the distance loop (portable and POPCNT) and the run-time choice.
#include "popcount.h"

namespace ssdh {
namespace cpu {
namespace {

template <int kBytes>
__attribute__((always_inline)) inline void distances_fixed(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  for (int64_t j = first; j < last; ++j) {
    out[j - first] = static_cast<uint16_t>(code_distance<kBytes>(query, db + j * bytes, bytes));
  }
}

// Common code lengths get a loop specialised for their byte count.
__attribute__((always_inline)) inline void distances_any(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  switch (bytes) {
    case 2: return distances_fixed<2>(query, db, bytes, first, last, out);
    case 4: return distances_fixed<4>(query, db, bytes, first, last, out);
    case 6: return distances_fixed<6>(query, db, bytes, first, last, out);
    case 8: return distances_fixed<8>(query, db, bytes, first, last, out);
    case 16: return distances_fixed<16>(query, db, bytes, first, last, out);
    case 32: return distances_fixed<32>(query, db, bytes, first, last, out);
    case 64: return distances_fixed<64>(query, db, bytes, first, last, out);
    default: return distances_fixed<0>(query, db, bytes, first, last, out);
  }
}

template <int kBytes>
__attribute__((always_inline)) inline void scan_fixed(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates& c) {
  int bound = c.bound;
  for (int64_t j = first; j < last; ++j) {
    const int d = code_distance<kBytes>(query, db + j * bytes, bytes);
    if (d > bound) {
      continue;
    }
    c.index.push_back(j);
    c.distance.push_back(static_cast<uint16_t>(d));
    if (c.k > 0) {
      ++c.count[d];
      if (d < bound && ++c.below >= c.k) {
        while (bound > 0 && c.below >= c.k) {
          --bound;
          c.below -= c.count[bound];
        }
      }
    }
  }
  c.bound = bound;
}

__attribute__((always_inline)) inline void scan_any(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates& c) {
  switch (bytes) {
    case 2: return scan_fixed<2>(query, db, bytes, first, last, c);
    case 4: return scan_fixed<4>(query, db, bytes, first, last, c);
    case 6: return scan_fixed<6>(query, db, bytes, first, last, c);
    case 8: return scan_fixed<8>(query, db, bytes, first, last, c);
    case 16: return scan_fixed<16>(query, db, bytes, first, last, c);
    case 32: return scan_fixed<32>(query, db, bytes, first, last, c);
    case 64: return scan_fixed<64>(query, db, bytes, first, last, c);
    default: return scan_fixed<0>(query, db, bytes, first, last, c);
  }
}

void scan_generic(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates& c) {
  scan_any(query, db, bytes, first, last, c);
}

__attribute__((target("popcnt"))) void scan_popcnt(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    Candidates& c) {
  scan_any(query, db, bytes, first, last, c);
}

}  // namespace

ScanFn best_scan_fn() {
  static const ScanFn chosen = __builtin_cpu_supports("popcnt") ? &scan_popcnt : &scan_generic;
  return chosen;
}

void distances_generic(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  distances_any(query, db, bytes, first, last, out);
}

__attribute__((target("popcnt"))) void distances_popcnt(
    const uint8_t* query, const uint8_t* db, int64_t bytes, int64_t first, int64_t last,
    uint16_t* out) {
  distances_any(query, db, bytes, first, last, out);
}

DistanceFn best_distance_fn() {
  static const DistanceFn chosen =
      __builtin_cpu_supports("popcnt") ? &distances_popcnt : &distances_generic;
  return chosen;
}

}  // namespace cpu
}  // namespace ssdh
