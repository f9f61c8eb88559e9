/* fastgrpo native CUDA kernels: a plain C ABI called from Python (ctypes) with raw tensor pointers.
 *
 * Contract (identical to the Triton kernels of fastgrpo/kernels/sde): every latent is a batch of rows [B, N]
 * whose elements are contiguous (row stride given in elements); math is float32 whatever the storage dtype;
 * times are float32, one per sample (t_stride 1) or one for the batch (t_stride 0); a program owns one tile of
 * FG_TILE elements of one sample as four quarters of FG_QUARTER; reductions are two-stage and deterministic
 * (per-tile partials, then a fixed-order finalize). Noise is Philox4x32-10 (fastgrpo_philox.h), bit-identical to
 * fastgrpo.kernels.sde.philox.philox_normal.
 *
 * Every entry point returns 0 on success or an FG_E* code (fg_error_string names it); launches go to `stream`
 * (a cudaStream_t as an integer, 0 = the legacy default stream). Nothing allocates: the caller passes the
 * workspace (partials [B, fg_tiles(N)] float32), so calls are CUDA-graph capturable.
 */
#ifndef FASTGRPO_CUDA_H
#define FASTGRPO_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FG_ABI_VERSION 1
#define FG_QUARTER 1024
#define FG_TILE (4 * FG_QUARTER)
#define FG_BACKWARD_BLOCK 2048

enum fg_dtype { FG_FLOAT32 = 0, FG_BFLOAT16 = 1, FG_FLOAT16 = 2 };

enum fg_status {
  FG_OK = 0,
  FG_E_DTYPE = 1,        /* a dtype code outside fg_dtype */
  FG_E_MISSING = 2,      /* a tensor the operation needs is NULL */
  FG_E_SHAPE = 3,        /* batch < 1, numel < 1, a row stride < numel, or t_stride not 0/1 */
  FG_E_PARAMS = 4,       /* noise_level < 0 (or 0 where a density is needed), t_cap outside [0, 1), bad flags */
  FG_E_LAUNCH = 5,       /* the CUDA launch failed (cudaGetLastError) */
  FG_E_OPERATION = 6     /* an unknown operation code passed to fg_validate */
};

enum fg_operation { FG_OP_SDE_STEP = 0, FG_OP_LOGPROB_KL = 1, FG_OP_LOGPROB_KL_BACKWARD = 2 };

/* One batch of rows: data == NULL means "absent". */
typedef struct fg_rows {
  void* data;
  int64_t row_stride; /* elements between the starts of consecutive rows (>= numel) */
  int32_t dtype;      /* enum fg_dtype */
  int32_t reserved;
} fg_rows;

/* Arguments of all three operations; fields an operation does not use are ignored. */
typedef struct fg_args {
  int64_t batch; /* B */
  int64_t numel; /* N, elements per sample */
  fg_rows x;      /* x_t (sde_step, log-prob) */
  fg_rows v;      /* policy velocity (all) */
  fg_rows noise;  /* sde_step: standard normal noise, or absent for in-kernel Philox */
  fg_rows x_next; /* sde_step: output (dtype of x, row stride numel); log-prob: input */
  fg_rows v_ref;  /* KL: reference velocity, absent for no KL */
  fg_rows grad_v; /* backward: output (dtype of v, row stride numel) */
  const float* t;      /* float32 times */
  const float* t_next; /* float32 next times */
  int64_t t_stride;    /* 1: [B] per-sample times; 0: one time for the batch */
  const int64_t* seed_state; /* sde_step: device int64 [2] (seed, offset), or NULL to use seed/offset */
  uint64_t seed;
  uint64_t offset;
  float noise_level; /* a of sigma_t = a sqrt(t / (1 - min(t, t_cap))) */
  float t_cap;
  int32_t mean;     /* reduce per sample by mean (1) or sum (0) */
  int32_t kl_exact; /* KL variance sigma^2 |dt| (1) or flow_grpo's sigma^2 (0) */
  float* partial_lp;      /* workspace [B, fg_tiles(N)] float32 */
  float* partial_kl;      /* workspace [B, fg_tiles(N)] float32 */
  float* logp;            /* out [B] float32 (NULL: no log-prob) */
  float* kl;              /* out [B] float32 (NULL: no KL) */
  const float* grad_logp; /* backward: upstream gradient [B] of logp, or NULL */
  const float* grad_kl;   /* backward: upstream gradient [B] of kl, or NULL */
} fg_args;

int fg_abi_version(void);
int64_t fg_args_size(void);                    /* sizeof(fg_args): lets a binding check its struct layout */
int64_t fg_tiles(int64_t numel);               /* tiles of FG_TILE elements per sample */
int64_t fg_backward_blocks(int64_t numel);     /* backward blocks of FG_BACKWARD_BLOCK elements per sample */
const char* fg_error_string(int status);
int fg_validate(const fg_args* args, int operation); /* host-only argument checks, FG_OK or an FG_E* code */
/* The four Philox4x32-10 words of counter (c0..c3) and key (k0, k1), computed on the host (for tests). */
void fg_philox_host(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* sde_step: x_next (and, when noise_level > 0, logp [B]) from x, v and noise or Philox. */
int fg_sde_step(const fg_args* args, uintptr_t stream);
/* log-prob (when x_next, x and logp are given) and KL (when v_ref and kl are given) from one pass over v. */
int fg_logprob_kl(const fg_args* args, uintptr_t stream);
/* grad_v of sum(grad_logp * logp) + sum(grad_kl * kl). */
int fg_logprob_kl_backward(const fg_args* args, uintptr_t stream);

#ifdef __cplusplus
}
#endif
#endif
