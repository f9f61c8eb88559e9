// Philox4x32-10 (Salmon et al., SC 2011) and the word -> normal mapping of fastgrpo.kernels.sde.philox, usable on
// the host (tests) and the device (kernels).
#ifndef FASTGRPO_PHILOX_H
#define FASTGRPO_PHILOX_H

#include <stdint.h>

#if defined(__CUDACC__)
#define FG_HD __host__ __device__ __forceinline__
#else
#define FG_HD inline
#endif

namespace fastgrpo {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;

struct Words4 {
  uint32_t w[4];
};

FG_HD void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  *lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
#endif
}

FG_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    uint32_t hi_b, lo_b, hi_a, lo_a;
    mulhilo(kPhiloxRoundB, c2, &hi_b, &lo_b);
    mulhilo(kPhiloxRoundA, c0, &hi_a, &lo_a);
    const uint32_t n0 = hi_b ^ c1 ^ k0;
    const uint32_t n2 = hi_a ^ c3 ^ k1;
    c0 = n0;
    c1 = lo_b;
    c2 = n2;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Words4{{c0, c1, c2, c3}};
}

// uint32 word -> float32 uniform in (0, 1): ((w >> 8) + 0.5) * 2^-24, exact and never 0.
FG_HD float word_to_uniform(uint32_t w) { return (static_cast<float>(w >> 8) + 0.5f) * 5.9604644775390625e-08f; }

}  // namespace fastgrpo

#endif
