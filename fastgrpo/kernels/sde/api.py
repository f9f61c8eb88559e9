"""Public SDE-step entry points: ``sde_step``, ``step_logprob``, ``velocity_kl`` and the fused ``logprob_kl``.

Conventions (../SPEC.md): rectified flow ``x_t = (1 - t) x_0 + t eps``, the model predicts ``v = eps - x_0``,
sampling runs from t = 1 to t = 0 so ``dt = t_next - t < 0``. Latents ``x, v`` are ``[B, ...]`` in
float32/bfloat16/float16 (any trailing shape; rows need not be contiguous across the batch); times are python
floats, 0-d tensors or ``[B]`` float32 tensors on the latents' device. All math is float32. Results ``[B]`` are
float32. ``backend``: ``"auto"`` (Triton on CUDA, the PyTorch reference elsewhere), ``"triton"`` (CUDA, or CPU
under ``TRITON_INTERPRET=1``), ``"torch"``, or ``"cuda"`` (the native kernels built from ``csrc/`` with CMake,
CUDA tensors only; ``fastgrpo.kernels.cuda_backend``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgrpo.kernels import _checks, cuda_backend
from fastgrpo.kernels.sde import naive, ops
from fastgrpo.kernels.sde.philox import philox_normal

Seed = int | tuple[int, int] | Tensor
_MAX_SEED = 2**63


def noise_state(seed: int, offset: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """A generator state for :func:`sde_step`: int64 ``[2] = (seed, offset)`` on ``device``.

    Each ``sde_step(..., seed=state)`` draws with the current offset and then adds 1 to it on the device, so
    successive steps (and replays of a captured CUDA graph) draw fresh noise with no host involvement.
    """
    for name, value in (("seed", seed), ("offset", offset)):
        if not 0 <= int(value) < _MAX_SEED:
            raise ValueError(f"{name} must lie in [0, 2**63), got {value}")
    return torch.tensor([int(seed), int(offset)], dtype=torch.int64, device=device)


def _check_seed(seed: Seed, device: torch.device) -> tuple[Tensor | None, int, int]:
    """``(state tensor or None, seed int, offset int)`` from the accepted seed forms."""
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64 or seed.shape != (2,):
            raise ValueError(
                f"seed tensor must be int64 of shape [2] = (seed, offset), got {seed.dtype} {tuple(seed.shape)};"
                " build one with fastgrpo.kernels.noise_state(seed)"
            )
        if seed.device != device:
            raise ValueError(f"seed state is on {seed.device} but the latents are on {device}; move it there")
        return seed, 0, 0
    pair = seed if isinstance(seed, tuple) else (seed, 0)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise ValueError(f"seed must be an int, a (seed, offset) tuple of ints or an int64 [2] tensor, got {seed!r}")
    if not all(0 <= p < _MAX_SEED for p in pair):
        raise ValueError(f"seed and offset must lie in [0, 2**63), got {pair}")
    return None, pair[0], pair[1]


def _check_sampler(sampler: str, noise_level: float) -> int:
    """The kernels' code of ``sampler``; ``ValueError`` for an unknown one or a CPS level outside ``[0, 1]``."""
    kind = naive.check_sampler(sampler)
    if kind == 1 and isinstance(noise_level, (int, float)) and not 0.0 <= noise_level <= 1.0:
        raise ValueError(
            f"sampler='cps' takes noise_level in [0, 1] (the angle a pi/2 of its noise mix; about 0.5-0.8 is "
            f"typical), got {noise_level}"
        )
    return kind


def _resolve_backend(backend: str, device: torch.device, kind: int) -> str:
    use = _checks.resolve_backend(backend, device)
    if use == "cuda" and kind != 0:
        raise ValueError(
            "the native CUDA kernels implement SPEC S1's SDE only; use backend='triton' (or 'auto') for sampler='cps'"
        )
    return use


def sde_step(
    x: Tensor,
    v: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    *,
    noise_level: float,
    t_cap: float,
    noise: Tensor | None = None,
    seed: Seed | None = None,
    reduction: str = "mean",
    backend: str = "auto",
    sampler: str = "sde",
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of the marginal-preserving SDE and the log-probability of its result.

    ``x_next = mu + s * eps`` with ``mu = x + [v + sigma_t^2/(2t) (x + (1 - t) v)] dt``, ``s = sigma_t sqrt(|dt|)``,
    ``sigma_t = noise_level * sqrt(t / (1 - min(t, t_cap)))``. The noise ``eps`` is ``noise`` (``[B, ...]``,
    any float dtype), or drawn from ``seed`` by the counter-based generator of
    :mod:`fastgrpo.kernels.sde.philox` (an int, a ``(seed, offset)`` pair, or an int64 ``[2]`` state tensor
    from :func:`noise_state`, which is advanced by one on the device after the draw), or, with neither, from
    torch's default generator. ``noise_level = 0`` gives the plain Euler ODE step ``x + dt v``, with ``logp``
    0 by convention (a point mass has no density).

    Returns ``x_next`` (``x``'s shape and dtype) and ``logp [B]`` float32, the log-density of the stored
    ``x_next`` reduced over each sample by ``reduction`` (``"mean"`` or ``"sum"``). No gradient flows.

    ``sampler="cps"`` draws the coefficients-preserving step instead (``mu = (1 - t_next)(x - t v) +
    t_next cos(a pi/2)(x + (1 - t) v)``, ``s = t_next sin(a pi/2)``, ``noise_level = a`` in ``[0, 1]``;
    :mod:`fastgrpo.kernels.sde.naive`), with the same noise, generator and log-probability conventions; a step to
    ``t_next = 0`` is then deterministic (``logp`` 0).

    Example::

        state = noise_state(seed=0, device="cuda")
        x_next, logp = sde_step(x, v, 1.0, 0.9, noise_level=0.7, t_cap=0.9, seed=state)
    """
    x = _checks.check_latent("x", x)
    v = _checks.check_latent("v", v, like=x)
    mean = _checks.check_reduction(reduction)
    kind = _check_sampler(sampler, noise_level)
    noise_level, t_cap = _checks.check_sde_params(noise_level, t_cap, need_noise=False)
    tt, tn = _checks.check_times(t, t_next, x.shape[0], x.device)
    if noise is not None and seed is not None:
        raise ValueError("pass either noise= or seed=, not both")
    if noise is not None:
        noise = _checks.check_latent("noise", noise, like=x)
    state, seed_int, offset_int = _check_seed(seed, x.device) if seed is not None else (None, 0, 0)
    if noise is None and seed is None and noise_level > 0.0:
        noise = torch.randn(x.shape, dtype=torch.float32, device=x.device)
    use = _resolve_backend(backend, x.device, kind)
    with torch.no_grad():
        if use in ("triton", "cuda"):
            noise_rows = _checks.rows(noise) if noise is not None else None
            args = (_checks.rows(x), _checks.rows(v), tt.contiguous(), tn.contiguous(), noise_rows, state,
                    noise_level, t_cap, seed_int, offset_int, mean)  # fmt: skip
            if use == "triton":
                x_next, logp = ops.sde_step_triton(*args, kind)
            else:
                x_next, logp = cuda_backend.sde_step_cuda(*args)
        else:
            if noise is None:
                source = (state[0], state[1]) if state is not None else (seed_int, offset_int)
                noise = philox_normal(*source, x.shape[0], x[0].numel(), x.device)
            x_next, logp = naive.sde_step_ref(
                x, v, tt, tn, noise.reshape(x.shape[0], -1), noise_level=noise_level, t_cap=t_cap,
                reduction=reduction, sampler=sampler,
            )  # fmt: skip
        if state is not None and noise_level > 0.0:
            state[1:].add_(1)
    return x_next.reshape(x.shape), logp


def logprob_kl(
    x_next: Tensor,
    x: Tensor,
    v: Tensor,
    v_ref: Tensor | None,
    t: float | Tensor,
    t_next: float | Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
    form: str = "exact",
    backend: str = "auto",
    sampler: str = "sde",
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of ``x -> x_next`` and KL to the reference velocity, from one pass over ``v``.

    Returns ``(logp [B], kl [B])`` float32 (``kl`` is None when ``v_ref`` is None, e.g. for beta = 0),
    differentiable w.r.t. ``v`` only (``x``, ``x_next`` are data, ``v_ref`` is a constant). ``form``:
    ``"exact"`` is ``||mu - mu_ref||^2 / (2 s^2)``; ``"flow_grpo"`` divides by ``2 sigma_t^2`` instead (drops
    ``|dt|``) so that beta values tuned for that code base carry over. ``noise_level`` must be > 0, and for
    ``sampler="cps"`` the step must have noise (``t_next > 0``). ``sampler`` as in :func:`sde_step`.
    """
    x = _checks.check_latent("x", x)
    x_next = _checks.check_latent("x_next", x_next, like=x)
    v = _checks.check_latent("v", v, like=x)
    if v_ref is not None:
        v_ref = _checks.check_latent("v_ref", v_ref, like=x)
    return _logprob_kl(x_next, x, v, v_ref, t, t_next, noise_level, t_cap, reduction, form, backend, sampler)


def _logprob_kl(x_next, x, v, v_ref, t, t_next, noise_level, t_cap, reduction, form, backend, sampler="sde"):
    mean = _checks.check_reduction(reduction)
    if form not in ("exact", "flow_grpo"):
        raise ValueError(f"form={form!r} is not one of 'exact', 'flow_grpo'")
    kind = _check_sampler(sampler, noise_level)
    noise_level, t_cap = _checks.check_sde_params(noise_level, t_cap, need_noise=True)
    tt, tn = _checks.check_times(t, t_next, v.shape[0], v.device)
    use = _resolve_backend(backend, v.device, kind)
    if use == "torch":
        kw = {"noise_level": noise_level, "t_cap": t_cap, "reduction": reduction, "sampler": sampler}
        logp = None if x is None else naive.step_logprob_ref(x_next, x, v, tt, tn, **kw)
        kl = None if v_ref is None else naive.velocity_kl_ref(v, v_ref, tt, tn, form=form, **kw)
        return logp, kl
    rows = _checks.rows
    params = ops.StepParams(noise_level, t_cap, mean, form == "exact", kind)
    fused = ops.logprob_kl_triton if use == "triton" else cuda_backend.logprob_kl_cuda
    logp, kl = fused(
        rows(x_next) if x_next is not None else None, rows(x) if x is not None else None, rows(v),
        rows(v_ref) if v_ref is not None else None, tt.contiguous(), tn.contiguous(), params,
    )  # fmt: skip
    return (logp if x is not None else None), (kl if v_ref is not None else None)


def step_logprob(
    x_next: Tensor,
    x: Tensor,
    v: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
    backend: str = "auto",
    sampler: str = "sde",
) -> Tensor:
    """Log-probability ``[B]`` float32 of ``x -> x_next`` under the step with velocity ``v`` (grad w.r.t. ``v``).

    With the ``v`` and generator settings that produced ``x_next`` in :func:`sde_step` (same backend), the
    result equals that call's ``logp`` bit for bit, so the on-policy importance ratio is exactly 1.
    """
    logp, _ = logprob_kl(
        x_next,
        x,
        v,
        None,
        t,
        t_next,
        noise_level=noise_level,
        t_cap=t_cap,
        reduction=reduction,
        backend=backend,
        sampler=sampler,
    )
    assert logp is not None
    return logp


def velocity_kl(
    v: Tensor,
    v_ref: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
    form: str = "exact",
    backend: str = "auto",
    sampler: str = "sde",
) -> Tensor:
    """Closed-form KL ``[B]`` float32 between the policy and reference step Gaussians (grad w.r.t. ``v``).

    ``exact``: ``(|dt|/2) (sigma_t (1 - t)/(2t) + 1/sigma_t)^2 ||v - v_ref||^2``, reduced by ``reduction``;
    ``flow_grpo``: the same without the ``|dt|`` factor of the variance (see :func:`logprob_kl`).
    """
    v = _checks.check_latent("v", v)
    v_ref = _checks.check_latent("v_ref", v_ref, like=v)
    _, kl = _logprob_kl(None, None, v, v_ref, t, t_next, noise_level, t_cap, reduction, form, backend, sampler)
    assert kl is not None
    return kl
