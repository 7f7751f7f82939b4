// The two builds of the distance loop (portable and POPCNT) and the run-time choice.
#include "popcount.h"

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
      const int d = code_distance<kBytes>(query, db + j * bytes, bytes);
      if (d <= c.bound) {
        add_candidate(c, j, d);
      }
    }
  }
};

template <int kQueries>
__attribute__((always_inline)) inline void scan64_fixed(
    const uint64_t* queries, const uint8_t* db, int64_t first, int64_t last, Candidates* c) {
  int bound[kQueries];
  for (int q = 0; q < kQueries; ++q) {
    bound[q] = c[q].bound;
  }
  for (int64_t j = first; j < last; ++j) {
    uint64_t code;
    std::memcpy(&code, db + j * 8, 8);
    for (int q = 0; q < kQueries; ++q) {
      const int d = __builtin_popcountll(code ^ queries[q]);
      if (__builtin_expect(d <= bound[q], 0)) {
        add_candidate(c[q], j, d);
        bound[q] = c[q].bound;
      }
    }
  }
}

__attribute__((always_inline)) inline void scan64_any(
    const uint64_t* queries, int n, const uint8_t* db, int64_t first, int64_t last, Candidates* c) {
  switch (n) {
    case 8: return scan64_fixed<8>(queries, db, first, last, c);
    case 4: return scan64_fixed<4>(queries, db, first, last, c);
    default:
      for (int q = 0; q < n; ++q) {
        scan64_fixed<1>(queries + q, db, first, last, c + q);
      }
  }
}

void scan64_generic(const uint64_t* queries, int n, const uint8_t* db, int64_t first,
                    int64_t last, Candidates* c) {
  scan64_any(queries, n, db, first, last, c);
}

__attribute__((target("popcnt"))) void scan64_popcnt(
    const uint64_t* queries, int n, const uint8_t* db, int64_t first, int64_t last, Candidates* c) {
  scan64_any(queries, n, db, first, last, c);
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

}  // namespace

Scan64Fn best_scan64_fn() {
  static const Scan64Fn chosen =
      __builtin_cpu_supports("popcnt") ? &scan64_popcnt : &scan64_generic;
  return chosen;
}

ScanFn best_scan_fn() {
  static const ScanFn chosen = __builtin_cpu_supports("popcnt") ? &scan_popcnt : &scan_generic;
  return chosen;
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

DistanceFn best_distance_fn() {
  static const DistanceFn chosen =
      __builtin_cpu_supports("popcnt") ? &distances_popcnt : &distances_generic;
  return chosen;
}

}  // namespace cpu
}  // namespace ssdh
