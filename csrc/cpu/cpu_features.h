// Which build of a kernel runs: the AVX2 (+ FMA) one where the CPU has those
// instructions, the portable one otherwise. An environment variable can pick
// either (to test both builds or compare them): generic, or avx2 (refused on a
// CPU without it). Read once per variable, at the first call.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

// Functions built for AVX2 + FMA (called only where avx2_wanted says so).
#define SSDH_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))

namespace ssdh {
namespace cpu {

inline bool cpu_has_avx2_fma() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// Whether to run the AVX2 build, as `variable` (e.g. "SSDH_CPU_LINEAR") asks.
inline bool avx2_wanted(const char* variable) {
  const bool has = cpu_has_avx2_fma();
  const char* wanted = std::getenv(variable);
  if (wanted == nullptr || *wanted == '\0') return has;
  TORCH_CHECK(std::strcmp(wanted, "generic") == 0 || std::strcmp(wanted, "avx2") == 0, variable,
              " must be generic or avx2, got '", wanted, "'");
  TORCH_CHECK(std::strcmp(wanted, "generic") == 0 || has, variable,
              "=avx2: this CPU lacks AVX2 or FMA");
  return std::strcmp(wanted, "avx2") == 0;
}

// The Caffe layers' kernels (pooling, Scale): SSDH_CPU_LAYERS, read once.
inline bool layer_kernels_avx2() {
  static const bool avx2 = avx2_wanted("SSDH_CPU_LAYERS");
  return avx2;
}

}  // namespace cpu
}  // namespace ssdh
