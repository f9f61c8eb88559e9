"""Triton kernels of the SDE step: fused step + log-prob, fused log-prob + KL, and their backward.

Layout: every tensor is seen as rows ``[B, N]`` (row stride given, elements of a row contiguous). A program
owns one tile of ``4 * Q`` elements of one sample (grid ``(ceil(N / 4Q), B)``), handled as four contiguous
quarters of ``Q`` elements: the quarters match the four words of one Philox call (``philox.py``), and the
log-prob and KL partial sums of every kernel accumulate in the same order, so that the log-prob written by
``sde_step`` and the one recomputed by ``step_logprob`` agree bit for bit. Reductions are two-stage and
deterministic: each program writes one partial per sample, then ``_finalize_kernel`` sums them in a fixed order.

All math is float32; loads upcast, stores cast to the output dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

HALF_LOG_2PI = tl.constexpr(0.9189385332046727)  # log(2 pi) / 2
INV_2_24 = tl.constexpr(5.960464477539063e-08)  # 2 ** -24
TWO_PI = tl.constexpr(6.283185307179586)
HALF_PI = tl.constexpr(1.5707963267948966)


@triton.jit
def _coefficients(t, t_next, noise_level, t_cap, KIND: tl.constexpr):
    # Per-sample step scalars; mu = cx * x + cv * v (naive.py's module docstring).
    # KIND 0, SPEC S1: mu expands x + [v + sigma^2/(2t)(x + (1-t) v)] dt, s = sigma sqrt(|dt|).
    # KIND 1, coefficients-preserving (arXiv:2509.05952): mu = (1-t')(x - t v) + t' cos(a pi/2)(x + (1-t) v),
    # s = t' sin(a pi/2); sigma is reported as s.
    dt = t_next - t
    if KIND == 1:
        keep = tl.cos(noise_level * HALF_PI)
        std = t_next * tl.sin(noise_level * HALF_PI)
        sigma = std
        cx = (1.0 - t_next) + t_next * keep
        cv = t_next * keep * (1.0 - t) - (1.0 - t_next) * t
    else:
        sigma = noise_level * tl.sqrt_rn(tl.div_rn(t, 1.0 - tl.minimum(t, t_cap)))
        std = sigma * tl.sqrt_rn(-dt)
        half = tl.div_rn(sigma * sigma, 2.0 * t)
        cx = 1.0 + half * dt
        cv = dt * (1.0 + half * (1.0 - t))
    return sigma, std, cx, cv


@triton.jit
def _uniform(w):
    # uint32 word -> float32 uniform in (0, 1]: (w >> 8 + 0.5) * 2^-24, never 0 (so the log is finite).
    return ((w >> 8).to(tl.float32) + 0.5) * INV_2_24


@triton.jit
def _philox_normals(seed, offset, sample, tile, Q: tl.constexpr):
    # Four blocks of Q standard normals for counters (tile * Q + j, sample, offset_lo, offset_hi); philox.py.
    offset = offset.to(tl.int64)  # a small python int arrives as int32
    j = tile * Q + tl.arange(0, Q)
    c0 = j.to(tl.uint32)
    c1 = (c0 * 0 + sample).to(tl.uint32)
    c2 = (c0 * 0 + (offset & 0xFFFFFFFF)).to(tl.uint32)
    c3 = (c0 * 0 + ((offset >> 32) & 0xFFFFFFFF)).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    r01 = tl.sqrt(-2.0 * tl.log(_uniform(w0)))
    th01 = TWO_PI * _uniform(w1)
    r23 = tl.sqrt(-2.0 * tl.log(_uniform(w2)))
    th23 = TWO_PI * _uniform(w3)
    return r01 * tl.cos(th01), r01 * tl.sin(th01), r23 * tl.cos(th23), r23 * tl.sin(th23)


@triton.jit
def _sde_step_partial_kernel(
    x_ptr,  # [B, N] current latents x_t (any float dtype), row stride x_stride
    v_ptr,  # [B, N] velocity v(x_t, t), row stride v_stride
    noise_ptr,  # [B, N] standard normal noise when NOISE_MODE == 1 (else unused)
    out_ptr,  # [B, N] x_next, written in out dtype, rows contiguous
    t_ptr,  # float32 times, [B] (t_stride 1) or one value (t_stride 0)
    tn_ptr,  # float32 next times, same layout as t
    seed_ptr,  # int64 [2] generator state (seed, offset) when SEED_FROM_PTR
    partial_ptr,  # float32 [B, P] partial sums of (x_next - mu)^2 per tile
    N,  # elements per sample
    P,  # tiles per sample
    x_stride,
    v_stride,
    noise_stride,
    t_stride,
    noise_level,  # a of sigma_t = a sqrt(t / (1 - min(t, t_cap)))
    t_cap,
    seed,  # generator seed when not SEED_FROM_PTR
    offset,  # generator offset when not SEED_FROM_PTR
    NOISE_MODE: tl.constexpr,  # 0: none (deterministic Euler step), 1: noise tensor, 2: in-kernel Philox
    SEED_FROM_PTR: tl.constexpr,
    Q: tl.constexpr,  # quarter tile; the tile is 4 * Q elements
    KIND: tl.constexpr = 0,  # sampler: 0 SPEC S1's SDE, 1 coefficients-preserving
):
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = tl.load(t_ptr + b * t_stride)
    t_next = tl.load(tn_ptr + b * t_stride)
    _sigma, std, cx, cv = _coefficients(t, t_next, noise_level, t_cap, KIND)
    if NOISE_MODE == 2:
        if SEED_FROM_PTR:
            seed = tl.load(seed_ptr)
            offset = tl.load(seed_ptr + 1)
        n0, n1, n2, n3 = _philox_normals(seed, offset, b, tile, Q)
    j = tl.arange(0, Q)
    base = tile.to(tl.int64) * (4 * Q)
    acc = tl.zeros([Q], dtype=tl.float32)
    for k in tl.static_range(4):
        e = base + k * Q + j
        mask = e < N
        x = tl.load(x_ptr + b * x_stride + e, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + b * v_stride + e, mask=mask, other=0.0).to(tl.float32)
        mu = cx * x + cv * v
        if NOISE_MODE == 0:
            x_next = mu
        else:
            if NOISE_MODE == 1:
                n = tl.load(noise_ptr + b * noise_stride + e, mask=mask, other=0.0).to(tl.float32)
            elif k == 0:
                n = n0
            elif k == 1:
                n = n1
            elif k == 2:
                n = n2
            else:
                n = n3
            x_next = mu + std * n
        stored = x_next.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + b * N + e, stored, mask=mask)
        if NOISE_MODE != 0:
            # The log-prob is of the stored (rounded) x_next, as step_logprob will see it.
            d = stored.to(tl.float32) - mu
            acc += tl.where(mask, d * d, 0.0)
    if NOISE_MODE != 0:
        tl.store(partial_ptr + b * P + tile, tl.sum(acc, axis=0))


@triton.jit
def _logprob_kl_partial_kernel(
    xn_ptr,  # [B, N] x_next (when HAS_LOGP)
    x_ptr,  # [B, N] x_t (when HAS_LOGP)
    v_ptr,  # [B, N] policy velocity
    vref_ptr,  # [B, N] reference velocity (when HAS_KL)
    t_ptr,  # float32 times, [B] or one value
    tn_ptr,  # float32 next times
    plp_ptr,  # float32 [B, P] partial sums of (x_next - mu)^2
    pkl_ptr,  # float32 [B, P] partial sums of (v - v_ref)^2
    N,
    P,
    xn_stride,
    x_stride,
    v_stride,
    vref_stride,
    t_stride,
    noise_level,
    t_cap,
    HAS_LOGP: tl.constexpr,
    HAS_KL: tl.constexpr,
    Q: tl.constexpr,
    KIND: tl.constexpr = 0,
):
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = tl.load(t_ptr + b * t_stride)
    t_next = tl.load(tn_ptr + b * t_stride)
    _sigma, _std, cx, cv = _coefficients(t, t_next, noise_level, t_cap, KIND)
    j = tl.arange(0, Q)
    base = tile.to(tl.int64) * (4 * Q)
    acc_lp = tl.zeros([Q], dtype=tl.float32)
    acc_kl = tl.zeros([Q], dtype=tl.float32)
    for k in tl.static_range(4):
        e = base + k * Q + j
        mask = e < N
        v = tl.load(v_ptr + b * v_stride + e, mask=mask, other=0.0).to(tl.float32)
        if HAS_LOGP:
            x = tl.load(x_ptr + b * x_stride + e, mask=mask, other=0.0).to(tl.float32)
            xn = tl.load(xn_ptr + b * xn_stride + e, mask=mask, other=0.0).to(tl.float32)
            d = xn - (cx * x + cv * v)
            acc_lp += tl.where(mask, d * d, 0.0)
        if HAS_KL:
            vr = tl.load(vref_ptr + b * vref_stride + e, mask=mask, other=0.0).to(tl.float32)
            dv = v - vr
            acc_kl += dv * dv
    if HAS_LOGP:
        tl.store(plp_ptr + b * P + tile, tl.sum(acc_lp, axis=0))
    if HAS_KL:
        tl.store(pkl_ptr + b * P + tile, tl.sum(acc_kl, axis=0))


@triton.jit
def _row_sum(ptr, b, P, BLOCK_P: tl.constexpr):
    # Fixed-order sum of row b of a [B, P] float32 array (deterministic).
    acc = tl.zeros([BLOCK_P], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        idx = start + tl.arange(0, BLOCK_P)
        acc += tl.load(ptr + b * P + idx, mask=idx < P, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _finalize_kernel(
    plp_ptr,  # float32 [B, P] partial squared-residual sums (when HAS_LOGP)
    pkl_ptr,  # float32 [B, P] partial squared velocity-difference sums (when HAS_KL)
    logp_ptr,  # float32 [B] out: reduced log-probability
    kl_ptr,  # float32 [B] out: reduced KL
    t_ptr,
    tn_ptr,
    t_stride,
    N,
    P,
    noise_level,
    t_cap,
    HAS_LOGP: tl.constexpr,
    HAS_KL: tl.constexpr,
    MEAN: tl.constexpr,  # reduce over elements by mean (else sum)
    KL_EXACT: tl.constexpr,  # KL variance s^2 = sigma^2 |dt| (else flow_grpo's sigma^2)
    BLOCK_P: tl.constexpr,
    KIND: tl.constexpr = 0,
):
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + b * t_stride)
    t_next = tl.load(tn_ptr + b * t_stride)
    sigma, std, _cx, cv = _coefficients(t, t_next, noise_level, t_cap, KIND)
    n = N.to(tl.float32)
    if HAS_LOGP:
        sq = _row_sum(plp_ptr, b, P, BLOCK_P)
        const = tl.log(std) + HALF_LOG_2PI
        if MEAN:
            logp = -tl.div_rn(sq, 2.0 * std * std * n) - const
        else:
            logp = -tl.div_rn(sq, 2.0 * std * std) - n * const
        logp = tl.where(std > 0.0, logp, 0.0)
        tl.store(logp_ptr + b, logp)
    if HAS_KL:
        dsq = _row_sum(pkl_ptr, b, P, BLOCK_P)
        var = std * std if KL_EXACT else sigma * sigma
        kl = tl.div_rn(cv * cv * dsq, 2.0 * var)
        if MEAN:
            kl = kl / n
        tl.store(kl_ptr + b, kl)


# Vector-Jacobian product. With d = x_next - mu and mu = cx x + cv v (scale = 1/N for mean, 1 for sum):
#   logp = -scale * sum(d^2) / (2 s^2) + const  ->  d logp / d v = scale * cv * d / s^2
#   kl   =  scale * c_kl * sum((v - v_ref)^2)   ->  d kl / d v   = scale * 2 c_kl (v - v_ref)
# with c_kl = cv^2 / (2 var); so grad_v = g_logp * scale * cv / s^2 * d + g_kl * scale * 2 c_kl * (v - v_ref).
@triton.jit
def _logprob_kl_backward_kernel(
    xn_ptr,  # [B, N] x_next (when HAS_LOGP)
    x_ptr,  # [B, N] x_t (when HAS_LOGP)
    v_ptr,  # [B, N] policy velocity
    vref_ptr,  # [B, N] reference velocity (when HAS_KL)
    glp_ptr,  # float32 [B] upstream gradient of logp (when HAS_LOGP)
    gkl_ptr,  # float32 [B] upstream gradient of kl (when HAS_KL)
    gv_ptr,  # [B, N] out: gradient w.r.t. v in v's dtype, rows contiguous
    t_ptr,
    tn_ptr,
    N,
    xn_stride,
    x_stride,
    v_stride,
    vref_stride,
    t_stride,
    noise_level,
    t_cap,
    HAS_LOGP: tl.constexpr,
    HAS_KL: tl.constexpr,
    MEAN: tl.constexpr,
    KL_EXACT: tl.constexpr,
    BLOCK: tl.constexpr,
    KIND: tl.constexpr = 0,
):
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = tl.load(t_ptr + b * t_stride)
    t_next = tl.load(tn_ptr + b * t_stride)
    sigma, std, cx, cv = _coefficients(t, t_next, noise_level, t_cap, KIND)
    scale = 1.0
    if MEAN:
        scale = 1.0 / N.to(tl.float32)
    e = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < N
    v = tl.load(v_ptr + b * v_stride + e, mask=mask, other=0.0).to(tl.float32)
    grad = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_LOGP:
        a_lp = tl.load(glp_ptr + b) * scale * tl.div_rn(cv, std * std)
        x = tl.load(x_ptr + b * x_stride + e, mask=mask, other=0.0).to(tl.float32)
        xn = tl.load(xn_ptr + b * xn_stride + e, mask=mask, other=0.0).to(tl.float32)
        grad += a_lp * (xn - (cx * x + cv * v))
    if HAS_KL:
        var = std * std if KL_EXACT else sigma * sigma
        a_kl = tl.load(gkl_ptr + b) * scale * tl.div_rn(cv * cv, var)
        vr = tl.load(vref_ptr + b * vref_stride + e, mask=mask, other=0.0).to(tl.float32)
        grad += a_kl * (v - vr)
    tl.store(gv_ptr + b * N + e, grad.to(gv_ptr.dtype.element_ty), mask=mask)
