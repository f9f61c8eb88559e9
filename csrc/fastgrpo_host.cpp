// Host-only part of the fastgrpo native library: argument validation, tile arithmetic, error strings and the
// host Philox. Built without a CUDA toolkit too, so that CTest checks it on any machine.
#include "fastgrpo_cuda.h"
#include "fastgrpo_philox.h"

namespace {

constexpr int64_t kMaxBatch = 65535;        // grid.y
constexpr int64_t kMaxTiles = 2147483647;   // grid.x

bool valid_dtype(int32_t dtype) { return dtype == FG_FLOAT32 || dtype == FG_BFLOAT16 || dtype == FG_FLOAT16; }

// FG_OK if `rows` is absent and optional, or present with a known dtype and a row stride >= numel.
int check_rows(const fg_rows& rows, int64_t numel, bool required) {
  if (rows.data == nullptr) return required ? FG_E_MISSING : FG_OK;
  if (!valid_dtype(rows.dtype)) return FG_E_DTYPE;
  if (rows.row_stride < numel) return FG_E_SHAPE;
  return FG_OK;
}

int check_common(const fg_args& a) {
  if (a.batch < 1 || a.numel < 1) return FG_E_SHAPE;
  if (a.batch > kMaxBatch || fg_tiles(a.numel) > kMaxTiles) return FG_E_SHAPE;  // CUDA grid limits
  if (a.t_stride != 0 && a.t_stride != 1) return FG_E_SHAPE;
  if (a.t == nullptr || a.t_next == nullptr) return FG_E_MISSING;
  if (!(a.t_cap >= 0.0f && a.t_cap < 1.0f) || !(a.noise_level >= 0.0f)) return FG_E_PARAMS;
  if ((a.mean != 0 && a.mean != 1) || (a.kl_exact != 0 && a.kl_exact != 1)) return FG_E_PARAMS;
  return check_rows(a.v, a.numel, true);
}

int check_sde_step(const fg_args& a) {
  int s = check_rows(a.x, a.numel, true);
  if (s == FG_OK) s = check_rows(a.noise, a.numel, false);
  if (s == FG_OK) s = check_rows(a.x_next, a.numel, true);
  if (s != FG_OK) return s;
  if (a.x_next.dtype != a.x.dtype || a.x_next.row_stride != a.numel) return FG_E_SHAPE;
  if (a.noise_level > 0.0f && (a.partial_lp == nullptr || a.logp == nullptr)) return FG_E_MISSING;
  return FG_OK;
}

int check_logprob_kl(const fg_args& a, bool backward) {
  const bool has_logp = backward ? a.grad_logp != nullptr : a.logp != nullptr;
  const bool has_kl = backward ? a.grad_kl != nullptr : a.kl != nullptr;
  if (!has_logp && !has_kl) return FG_E_MISSING;
  if (!(a.noise_level > 0.0f)) return FG_E_PARAMS;  // a point mass has no density
  int s = FG_OK;
  if (has_logp) {
    s = check_rows(a.x, a.numel, true);
    if (s == FG_OK) s = check_rows(a.x_next, a.numel, true);
    if (s == FG_OK && !backward && a.partial_lp == nullptr) s = FG_E_MISSING;
  }
  if (s == FG_OK && has_kl) {
    s = check_rows(a.v_ref, a.numel, true);
    if (s == FG_OK && !backward && a.partial_kl == nullptr) s = FG_E_MISSING;
  }
  if (s == FG_OK && backward) {
    s = check_rows(a.grad_v, a.numel, true);
    if (s == FG_OK && (a.grad_v.dtype != a.v.dtype || a.grad_v.row_stride != a.numel)) s = FG_E_SHAPE;
  }
  return s;
}

}  // namespace

extern "C" {

int fg_abi_version(void) { return FG_ABI_VERSION; }

int64_t fg_args_size(void) { return static_cast<int64_t>(sizeof(fg_args)); }

int64_t fg_tiles(int64_t numel) { return numel <= 0 ? 0 : (numel + FG_TILE - 1) / FG_TILE; }

int64_t fg_backward_blocks(int64_t numel) {
  return numel <= 0 ? 0 : (numel + FG_BACKWARD_BLOCK - 1) / FG_BACKWARD_BLOCK;
}

const char* fg_error_string(int status) {
  switch (status) {
    case FG_OK: return "ok";
    case FG_E_DTYPE: return "a dtype code is not float32 (0), bfloat16 (1) or float16 (2)";
    case FG_E_MISSING: return "a tensor the operation needs was not passed";
    case FG_E_SHAPE: return "bad sizes: batch in [1, 65535] and numel >= 1, row strides >= numel, t_stride 0 or 1";
    case FG_E_PARAMS: return "bad scalars: noise_level must be >= 0 (> 0 for densities), t_cap in [0, 1)";
    case FG_E_LAUNCH: return "the CUDA kernel launch failed";
    case FG_E_OPERATION: return "unknown operation code";
    default: return "unknown status code";
  }
}

int fg_validate(const fg_args* args, int operation) {
  if (args == nullptr) return FG_E_MISSING;
  const int s = check_common(*args);
  if (s != FG_OK) return s;
  switch (operation) {
    case FG_OP_SDE_STEP: return check_sde_step(*args);
    case FG_OP_LOGPROB_KL: return check_logprob_kl(*args, false);
    case FG_OP_LOGPROB_KL_BACKWARD: return check_logprob_kl(*args, true);
    default: return FG_E_OPERATION;
  }
}

void fg_philox_host(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  const fastgrpo::Words4 w =
      fastgrpo::philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  for (int i = 0; i < 4; ++i) out[i] = w.w[i];
}

}  // extern "C"
