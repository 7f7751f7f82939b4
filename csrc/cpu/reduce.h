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
// does not depend on the number of threads. Terms are first written to a small
// buffer and then added: keeping the map and the sum in separate loops lets
// the compiler vectorise both, even for a term full of selects.
template <typename acc_t, typename Term>
acc_t parallel_sum(int64_t n, const Term& term) {
  constexpr int64_t kBlock = 256;
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<acc_t> partial(chunks, acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    acc_t buffer[kBlock];
    for (int64_t c = first; c < last; ++c) {
      const int64_t chunk_end = std::min(n, (c + 1) * kReduceChunk);
      // Eight running sums: vectorised adds without reassociating one sum.
      acc_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t begin = c * kReduceChunk; begin < chunk_end; begin += kBlock) {
        const int64_t len = std::min(kBlock, chunk_end - begin);
        for (int64_t j = 0; j < len; ++j) {
          buffer[j] = term(begin + j);
        }
        for (int64_t j = len; j < ((len + 7) & ~int64_t(7)); ++j) {
          buffer[j] = acc_t(0);
        }
        for (int64_t j = 0; j < len; j += 8) {
          for (int l = 0; l < 8; ++l) {
            lane[l] += buffer[j + l];
          }
        }
      }
      partial[c] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
          ((lane[4] + lane[5]) + (lane[6] + lane[7]));
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
