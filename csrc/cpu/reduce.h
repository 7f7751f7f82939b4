// A deterministic parallel sum for the CPU kernels: fixed-size chunks, each
// summed in the accumulation type, then combined in chunk order.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ssdh {
namespace cpu {

constexpr int64_t kReduceChunk = 32768;

// Sum of term(i) for i in [0, n). Chunks are fixed by n alone, so the result
// does not depend on the number of threads.
template <typename acc_t, typename Term>
acc_t parallel_sum(int64_t n, const Term& term) {
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<acc_t> partial(chunks, acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const int64_t begin = c * kReduceChunk;
      const int64_t end = std::min(n, begin + kReduceChunk);
      // Eight running sums let the compiler vectorise without reassociating.
      acc_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = begin;
      for (; i + 8 <= end; i += 8) {
        for (int j = 0; j < 8; ++j) {
          lane[j] += term(i + j);
        }
      }
      acc_t s = 0;
      for (; i < end; ++i) {
        s += term(i);
      }
      for (int j = 0; j < 8; ++j) {
        s += lane[j];
      }
      partial[c] = s;
    }
  });
  acc_t total = 0;
  for (const acc_t v : partial) {
    total += v;
  }
  return total;
}

}  // namespace cpu
}  // namespace ssdh
