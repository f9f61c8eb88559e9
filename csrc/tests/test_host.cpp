// Host-side checks of the native library that need no GPU: Philox known answers, tile arithmetic, argument
// validation. Run by CTest (`ctest --test-dir build`); exits non-zero on the first failure.
#include <cstdio>
#include <cstring>

#include "fastgrpo_cuda.h"
#include "fastgrpo_philox.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

void test_philox_known_answers() {
  // Philox4x32-10 known-answer vectors (Random123): counter 0 / key 0, and counter all-ones / key all-ones.
  const uint32_t zero_c[4] = {0, 0, 0, 0}, zero_k[2] = {0, 0};
  const uint32_t want0[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  uint32_t out[4];
  fg_philox_host(zero_c, zero_k, out);
  expect(std::memcmp(out, want0, sizeof out) == 0, "philox counter 0 / key 0");
  const uint32_t ones_c[4] = {~0u, ~0u, ~0u, ~0u}, ones_k[2] = {~0u, ~0u};
  const uint32_t want1[4] = {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu};
  fg_philox_host(ones_c, ones_k, out);
  expect(std::memcmp(out, want1, sizeof out) == 0, "philox counter ~0 / key ~0");
}

void test_uniform() {
  expect(fastgrpo::word_to_uniform(0u) == 0.5f * 5.9604644775390625e-08f, "uniform of word 0 is 2^-25");
  // (2^24 - 0.5) is not a float32: the largest word rounds to exactly 1 (log 1 = 0, a finite normal), as in
  // fastgrpo.kernels.sde.philox.words_to_uniform.
  expect(fastgrpo::word_to_uniform(0xFFFFFFFFu) == 1.0f, "uniform of the largest word rounds to 1");
  expect(fastgrpo::word_to_uniform(0xFFFFFEFFu) < 1.0f, "uniform of the next word is below 1");
  expect(fastgrpo::word_to_uniform(0x80000000u) == 0.5f + 0.5f * 5.9604644775390625e-08f, "uniform midpoint");
}

void test_tiles() {
  expect(FG_TILE == 4096 && FG_QUARTER == 1024, "tile is four quarters of 1024");
  expect(fg_tiles(1) == 1 && fg_tiles(4096) == 1 && fg_tiles(4097) == 2 && fg_tiles(0) == 0, "fg_tiles");
  expect(fg_tiles(4096 * 64) == 64, "fg_tiles of a FLUX 1024^2 latent");
  expect(fg_backward_blocks(2048) == 1 && fg_backward_blocks(2049) == 2, "fg_backward_blocks");
  expect(fg_abi_version() == FG_ABI_VERSION, "abi version");
}

float g_times[2] = {0.8f, 0.75f};
float g_buffer[16];

fg_args valid_step() {
  fg_args a;
  std::memset(&a, 0, sizeof a);
  a.batch = 2;
  a.numel = 5;
  a.x = {g_buffer, 5, FG_BFLOAT16, 0};
  a.v = {g_buffer, 8, FG_FLOAT32, 0};
  a.x_next = {g_buffer, 5, FG_BFLOAT16, 0};
  a.t = g_times;
  a.t_next = g_times + 1;
  a.noise_level = 0.7f;
  a.t_cap = 0.96f;
  a.mean = 1;
  a.kl_exact = 1;
  a.partial_lp = g_buffer;
  a.logp = g_buffer;
  return a;
}

void test_validation() {
  fg_args a = valid_step();
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_OK, "a valid step");
  expect(fg_validate(nullptr, FG_OP_SDE_STEP) == FG_E_MISSING, "null args");
  expect(fg_validate(&a, 42) == FG_E_OPERATION, "unknown operation");
  a.v.dtype = 7;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_DTYPE, "bad dtype code");
  a = valid_step();
  a.v.row_stride = 4;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_SHAPE, "row stride below numel");
  a = valid_step();
  a.x_next.dtype = FG_FLOAT32;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_SHAPE, "x_next dtype differs from x");
  a = valid_step();
  a.t_stride = 2;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_SHAPE, "t_stride 2");
  a = valid_step();
  a.batch = 70000;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_SHAPE, "batch over the grid limit");
  a = valid_step();
  a.t_cap = 1.0f;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_PARAMS, "t_cap = 1");
  a = valid_step();
  a.logp = nullptr;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_E_MISSING, "noisy step without logp");
  a.noise_level = 0.0f;
  expect(fg_validate(&a, FG_OP_SDE_STEP) == FG_OK, "ODE step needs no logp");
  expect(fg_validate(&a, FG_OP_LOGPROB_KL) == FG_E_MISSING, "log-prob/KL with neither output");
  a = valid_step();
  a.kl = g_buffer;
  expect(fg_validate(&a, FG_OP_LOGPROB_KL) == FG_E_MISSING, "KL without v_ref");
  a.v_ref = {g_buffer, 5, FG_FLOAT16, 0};
  expect(fg_validate(&a, FG_OP_LOGPROB_KL) == FG_E_MISSING, "KL without its workspace");
  a.partial_kl = g_buffer;
  expect(fg_validate(&a, FG_OP_LOGPROB_KL) == FG_OK, "log-prob and KL");
  a.noise_level = 0.0f;
  expect(fg_validate(&a, FG_OP_LOGPROB_KL) == FG_E_PARAMS, "log-prob at noise_level 0");
  a = valid_step();
  a.grad_logp = g_times;
  expect(fg_validate(&a, FG_OP_LOGPROB_KL_BACKWARD) == FG_E_MISSING, "backward without grad_v");
  a.grad_v = {g_buffer, 5, FG_BFLOAT16, 0};
  expect(fg_validate(&a, FG_OP_LOGPROB_KL_BACKWARD) == FG_E_SHAPE, "grad_v dtype differs from v");
  a.grad_v.dtype = FG_FLOAT32;
  expect(fg_validate(&a, FG_OP_LOGPROB_KL_BACKWARD) == FG_OK, "a valid backward");
  expect(std::strlen(fg_error_string(FG_E_SHAPE)) > 0 && std::strlen(fg_error_string(99)) > 0, "error strings");
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_uniform();
  test_tiles();
  test_validation();
  if (failures == 0) std::printf("fastgrpo host tests passed\n");
  return failures == 0 ? 0 : 1;
}
