// Native CUDA twins of the fused SDE-step kernels of fastgrpo/kernels/sde/fused.py (same contract, same tiling,
// same noise). A block of kThreads threads owns one tile of FG_TILE elements of one sample; thread i owns the
// 8 elements [8 i, 8 i + 8) of each of the four quarters, loaded with one 128-bit load per quarter for 16-bit
// dtypes (two for float32) when the row is 16-byte aligned, elementwise at a ragged tail. Philox counter j of a
// tile covers element j of all four quarters, so each thread draws its 8 counters once for the whole tile.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastgrpo_cuda.h"
#include "fastgrpo_philox.h"

namespace {

constexpr int kVec = 8;                        // elements per thread per quarter
constexpr int kThreads = FG_QUARTER / kVec;    // 128 threads per tile
constexpr int kFinalizeThreads = 256;
constexpr int kBackwardThreads = FG_BACKWARD_BLOCK / kVec;
constexpr float kHalfLog2Pi = 0.9189385332046727f;

struct Coefficients {
  float sigma, std, cx, cv;
};

// Per-sample step scalars (SPEC S1): mu = cx * x + cv * v expands x + [v + sigma^2/(2t)(x + (1-t) v)] dt.
__device__ __forceinline__ Coefficients coefficients(const float* t_ptr, const float* tn_ptr, int64_t t_stride,
                                                     int64_t b, float noise_level, float t_cap) {
  const float t = t_ptr[b * t_stride];
  const float dt = __fsub_rn(tn_ptr[b * t_stride], t);
  const float sigma = __fmul_rn(noise_level, __fsqrt_rn(__fdiv_rn(t, __fsub_rn(1.0f, fminf(t, t_cap)))));
  const float std = __fmul_rn(sigma, __fsqrt_rn(-dt));
  const float half = __fdiv_rn(__fmul_rn(sigma, sigma), __fmul_rn(2.0f, t));
  const float cx = __fmaf_rn(half, dt, 1.0f);
  const float cv = __fmul_rn(dt, __fmaf_rn(half, __fsub_rn(1.0f, t), 1.0f));
  return {sigma, std, cx, cv};
}

// Explicit roundings so that sde_step and logprob_kl compute mu and the squared residual identically.
__device__ __forceinline__ float step_mean(float cx, float x, float cv, float v) {
  return __fmaf_rn(cx, x, __fmul_rn(cv, v));
}

__device__ __forceinline__ float to_float(const void* p, int64_t i, int32_t dtype) {
  if (dtype == FG_BFLOAT16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  if (dtype == FG_FLOAT16) return __half2float(static_cast<const __half*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void unpack16(uint32_t w, int32_t dtype, float* out) {
  if (dtype == FG_BFLOAT16) {
    out[0] = __uint_as_float(w << 16);
    out[1] = __uint_as_float(w & 0xFFFF0000u);
  } else {
    const __half2 h = *reinterpret_cast<const __half2*>(&w);
    const float2 f = __half22float2(h);
    out[0] = f.x;
    out[1] = f.y;
  }
}

// Load kVec elements [e, e + kVec) of a row as float32; zeros past n. 128-bit loads when aligned and whole.
__device__ __forceinline__ void load_vec(const fg_rows& r, int64_t b, int64_t e, int64_t n, float* out) {
  const int size = r.dtype == FG_FLOAT32 ? 4 : 2;
  const char* row = static_cast<const char*>(r.data) + b * r.row_stride * size;
  const char* p = row + e * size;
  if (e + kVec <= n && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
    if (size == 4) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(p));
      const float4 c = __ldg(reinterpret_cast<const float4*>(p) + 1);
      out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
      out[4] = c.x, out[5] = c.y, out[6] = c.z, out[7] = c.w;
    } else {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(p));
      unpack16(a.x, r.dtype, out + 0);
      unpack16(a.y, r.dtype, out + 2);
      unpack16(a.z, r.dtype, out + 4);
      unpack16(a.w, r.dtype, out + 6);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = e + i < n ? to_float(row, e + i, r.dtype) : 0.0f;
}

// Round to the storage dtype and back (what a later reader of the stored value sees).
__device__ __forceinline__ float round_to(float f, int32_t dtype) {
  if (dtype == FG_BFLOAT16) return __bfloat162float(__float2bfloat16_rn(f));
  if (dtype == FG_FLOAT16) return __half2float(__float2half_rn(f));
  return f;
}

__device__ __forceinline__ uint32_t pack16(float a, float b, int32_t dtype) {
  if (dtype == FG_BFLOAT16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Store kVec float32 values to a contiguous [B, n] array of `dtype` (128-bit stores when aligned and whole).
__device__ __forceinline__ void store_vec(void* base, int32_t dtype, int64_t b, int64_t e, int64_t n,
                                          const float* val) {
  const int size = dtype == FG_FLOAT32 ? 4 : 2;
  char* p = static_cast<char*>(base) + (b * n + e) * size;
  if (e + kVec <= n && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
    if (size == 4) {
      reinterpret_cast<float4*>(p)[0] = make_float4(val[0], val[1], val[2], val[3]);
      reinterpret_cast<float4*>(p)[1] = make_float4(val[4], val[5], val[6], val[7]);
    } else {
      *reinterpret_cast<uint4*>(p) = make_uint4(pack16(val[0], val[1], dtype), pack16(val[2], val[3], dtype),
                                                pack16(val[4], val[5], dtype), pack16(val[6], val[7], dtype));
    }
    return;
  }
  for (int i = 0; i < kVec && e + i < n; ++i) {
    if (dtype == FG_BFLOAT16) {
      reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(val[i]);
    } else if (dtype == FG_FLOAT16) {
      reinterpret_cast<__half*>(p)[i] = __float2half_rn(val[i]);
    } else {
      reinterpret_cast<float*>(p)[i] = val[i];
    }
  }
}

// Deterministic block sum: a fixed shuffle tree per warp, then warp sums in warp order. Result valid in thread 0.
template <int kBlock>
__device__ __forceinline__ float block_sum(float value) {
  __shared__ float warp_sums[kBlock / 32];
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) value += __shfl_xor_sync(0xFFFFFFFFu, value, delta);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kBlock / 32; ++w) total += warp_sums[w];
  }
  return total;
}

// Standard normals of the thread's 8 counters for the four quarters (philox.py): words (0, 1) -> quarters 0 (cos)
// and 1 (sin), words (2, 3) -> quarters 2 and 3.
__device__ __forceinline__ void philox_normals(uint64_t seed, uint64_t offset, int64_t b, int64_t tile,
                                               float (*normal)[kVec]) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t c1 = static_cast<uint32_t>(b);
  const uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  const uint32_t j0 = static_cast<uint32_t>(tile * FG_QUARTER + threadIdx.x * kVec);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const fastgrpo::Words4 w = fastgrpo::philox4x32_10(j0 + i, c1, c2, c3, k0, k1);
    const float r01 = sqrtf(-2.0f * logf(fastgrpo::word_to_uniform(w.w[0])));
    const float r23 = sqrtf(-2.0f * logf(fastgrpo::word_to_uniform(w.w[2])));
    float s01, c01, s23, c23;
    // sincospif(2u) = sincos(2 pi u) without sincosf's large-argument path, which needs a local-memory stack.
    sincospif(2.0f * fastgrpo::word_to_uniform(w.w[1]), &s01, &c01);
    sincospif(2.0f * fastgrpo::word_to_uniform(w.w[3]), &s23, &c23);
    normal[0][i] = r01 * c01;
    normal[1][i] = r01 * s01;
    normal[2][i] = r23 * c23;
    normal[3][i] = r23 * s23;
  }
}

// mode 0: deterministic Euler step (no partials); 1: noise tensor; 2: in-kernel Philox.
__global__ void __launch_bounds__(kThreads) sde_step_partial_kernel(fg_args a, int mode, int64_t tiles) {
  const int64_t tile = blockIdx.x, b = blockIdx.y;
  const Coefficients c = coefficients(a.t, a.t_next, a.t_stride, b, a.noise_level, a.t_cap);
  float normal[4][kVec];
  if (mode == 2) {
    const uint64_t seed = a.seed_state ? static_cast<uint64_t>(a.seed_state[0]) : a.seed;
    const uint64_t offset = a.seed_state ? static_cast<uint64_t>(a.seed_state[1]) : a.offset;
    philox_normals(seed, offset, b, tile, normal);
  }
  float acc[kVec] = {};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t e = tile * FG_TILE + k * FG_QUARTER + threadIdx.x * kVec;
    float x[kVec], v[kVec], out[kVec];
    load_vec(a.x, b, e, a.numel, x);
    load_vec(a.v, b, e, a.numel, v);
    if (mode == 1) load_vec(a.noise, b, e, a.numel, normal[k]);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const float mu = step_mean(c.cx, x[i], c.cv, v[i]);
      out[i] = mode == 0 ? mu : __fmaf_rn(c.std, normal[k][i], mu);
      // The log-prob is of the stored (rounded) x_next, as step_logprob will see it.
      const float d = __fsub_rn(round_to(out[i], a.x.dtype), mu);
      if (e + i < a.numel) acc[i] = __fmaf_rn(d, d, acc[i]);
    }
    store_vec(a.x_next.data, a.x.dtype, b, e, a.numel, out);
  }
  if (mode == 0) return;
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; ++i) sum += acc[i];
  sum = block_sum<kThreads>(sum);
  if (threadIdx.x == 0) a.partial_lp[b * tiles + tile] = sum;
}

__global__ void __launch_bounds__(kThreads) logprob_kl_partial_kernel(fg_args a, int64_t tiles) {
  const int64_t tile = blockIdx.x, b = blockIdx.y;
  const bool has_logp = a.logp != nullptr, has_kl = a.kl != nullptr;
  const Coefficients c = coefficients(a.t, a.t_next, a.t_stride, b, a.noise_level, a.t_cap);
  float acc_lp[kVec] = {}, acc_kl[kVec] = {};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t e = tile * FG_TILE + k * FG_QUARTER + threadIdx.x * kVec;
    float v[kVec], p[kVec], q[kVec];
    load_vec(a.v, b, e, a.numel, v);
    if (has_logp) {
      load_vec(a.x, b, e, a.numel, p);
      load_vec(a.x_next, b, e, a.numel, q);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float d = __fsub_rn(q[i], step_mean(c.cx, p[i], c.cv, v[i]));
        if (e + i < a.numel) acc_lp[i] = __fmaf_rn(d, d, acc_lp[i]);
      }
    }
    if (has_kl) {
      load_vec(a.v_ref, b, e, a.numel, p);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float dv = __fsub_rn(v[i], p[i]);
        acc_kl[i] = __fmaf_rn(dv, dv, acc_kl[i]);
      }
    }
  }
  float sum_lp = 0.0f, sum_kl = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; ++i) sum_lp += acc_lp[i], sum_kl += acc_kl[i];
  if (has_logp) {
    sum_lp = block_sum<kThreads>(sum_lp);
    if (threadIdx.x == 0) a.partial_lp[b * tiles + tile] = sum_lp;
  }
  if (has_logp && has_kl) __syncthreads();  // warp_sums is reused
  if (has_kl) {
    sum_kl = block_sum<kThreads>(sum_kl);
    if (threadIdx.x == 0) a.partial_kl[b * tiles + tile] = sum_kl;
  }
}

// Fixed-order sum of row b of a [B, tiles] float32 array (deterministic); valid in thread 0.
__device__ float row_sum(const float* partial, int64_t b, int64_t tiles) {
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < tiles; i += kFinalizeThreads) acc += partial[b * tiles + i];
  return block_sum<kFinalizeThreads>(acc);
}

__global__ void __launch_bounds__(kFinalizeThreads) finalize_kernel(fg_args a, int64_t tiles) {
  const int64_t b = blockIdx.x;
  const Coefficients c = coefficients(a.t, a.t_next, a.t_stride, b, a.noise_level, a.t_cap);
  const float n = static_cast<float>(a.numel);
  if (a.logp != nullptr) {
    const float sq = row_sum(a.partial_lp, b, tiles);
    if (threadIdx.x == 0) {
      const float cst = logf(c.std) + kHalfLog2Pi;
      float logp = a.mean ? -__fdiv_rn(sq, 2.0f * c.std * c.std * n) - cst
                          : -__fdiv_rn(sq, 2.0f * c.std * c.std) - n * cst;
      a.logp[b] = c.std > 0.0f ? logp : 0.0f;
    }
    __syncthreads();  // warp_sums is reused
  }
  if (a.kl != nullptr) {
    const float dsq = row_sum(a.partial_kl, b, tiles);
    if (threadIdx.x == 0) {
      const float var = a.kl_exact ? c.std * c.std : c.sigma * c.sigma;
      float kl = __fdiv_rn(c.cv * c.cv * dsq, 2.0f * var);
      a.kl[b] = a.mean ? kl / n : kl;
    }
  }
}

// Vector-Jacobian product. With d = x_next - mu and mu = cx x + cv v (scale = 1/N for mean, 1 for sum):
//   logp = -scale * sum(d^2) / (2 s^2) + const  ->  d logp / d v = scale * cv * d / s^2
//   kl   =  scale * c_kl * sum((v - v_ref)^2)   ->  d kl / d v   = scale * 2 c_kl (v - v_ref)
// with c_kl = cv^2 / (2 var); so grad_v = g_logp * scale * cv / s^2 * d + g_kl * scale * 2 c_kl * (v - v_ref).
__global__ void __launch_bounds__(kBackwardThreads) logprob_kl_backward_kernel(fg_args a) {
  const int64_t b = blockIdx.y;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * FG_BACKWARD_BLOCK + threadIdx.x * kVec;
  const Coefficients c = coefficients(a.t, a.t_next, a.t_stride, b, a.noise_level, a.t_cap);
  const float scale = a.mean ? 1.0f / static_cast<float>(a.numel) : 1.0f;
  float v[kVec], p[kVec], q[kVec], grad[kVec] = {};
  load_vec(a.v, b, e, a.numel, v);
  if (a.grad_logp != nullptr) {
    const float a_lp = a.grad_logp[b] * scale * __fdiv_rn(c.cv, c.std * c.std);
    load_vec(a.x, b, e, a.numel, p);
    load_vec(a.x_next, b, e, a.numel, q);
#pragma unroll
    for (int i = 0; i < kVec; ++i) grad[i] += a_lp * (q[i] - step_mean(c.cx, p[i], c.cv, v[i]));
  }
  if (a.grad_kl != nullptr) {
    const float var = a.kl_exact ? c.std * c.std : c.sigma * c.sigma;
    const float a_kl = a.grad_kl[b] * scale * __fdiv_rn(c.cv * c.cv, var);
    load_vec(a.v_ref, b, e, a.numel, p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) grad[i] += a_kl * (v[i] - p[i]);
  }
  store_vec(a.grad_v.data, a.v.dtype, b, e, a.numel, grad);
}

int launched() { return cudaGetLastError() == cudaSuccess ? FG_OK : FG_E_LAUNCH; }

int finalize(const fg_args& a, int64_t tiles, cudaStream_t stream) {
  finalize_kernel<<<static_cast<unsigned>(a.batch), kFinalizeThreads, 0, stream>>>(a, tiles);
  return launched();
}

}  // namespace

extern "C" {

int fg_sde_step(const fg_args* args, uintptr_t stream_handle) {
  const int s = fg_validate(args, FG_OP_SDE_STEP);
  if (s != FG_OK) return s;
  fg_args a = *args;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int mode = a.noise_level == 0.0f ? 0 : (a.noise.data != nullptr ? 1 : 2);
  const int64_t tiles = fg_tiles(a.numel);
  if (mode == 0) a.logp = nullptr;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.batch));
  sde_step_partial_kernel<<<grid, kThreads, 0, stream>>>(a, mode, tiles);
  const int launch = launched();
  if (launch != FG_OK || mode == 0) return launch;
  a.kl = nullptr;
  return finalize(a, tiles, stream);
}

int fg_logprob_kl(const fg_args* args, uintptr_t stream_handle) {
  const int s = fg_validate(args, FG_OP_LOGPROB_KL);
  if (s != FG_OK) return s;
  const fg_args& a = *args;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t tiles = fg_tiles(a.numel);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.batch));
  logprob_kl_partial_kernel<<<grid, kThreads, 0, stream>>>(a, tiles);
  const int launch = launched();
  return launch != FG_OK ? launch : finalize(a, tiles, stream);
}

int fg_logprob_kl_backward(const fg_args* args, uintptr_t stream_handle) {
  const int s = fg_validate(args, FG_OP_LOGPROB_KL_BACKWARD);
  if (s != FG_OK) return s;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const dim3 grid(static_cast<unsigned>(fg_backward_blocks(args->numel)), static_cast<unsigned>(args->batch));
  logprob_kl_backward_kernel<<<grid, kBackwardThreads, 0, stream>>>(*args);
  return launched();
}

}  // extern "C"
