"""Kernel benchmarks: the fused Triton kernels against the PyTorch reference, its ``torch.compile`` and Flow-GRPO.

Cases, each timed forward (``fwd``) and, where a gradient flows, forward plus backward (``fwd_bwd``):

- ``sde_step_seed``: a rollout step, noise drawn from a ``(seed, offset)`` state (in-kernel for ``fused``);
- ``sde_step_noise``: the same step with a given float32 noise tensor;
- ``logprob_kl``: training-time log-prob and KL from one fused call (``logprob_kl``);
- ``logprob_then_kl``: the same from two calls (``step_logprob``, then ``velocity_kl``);
- ``grpo_loss``: the clipped objective with KL on ``[B]`` float32 log-probs (one trained step).

Providers: ``flow_grpo_eager`` (``flow_grpo_baseline.py``, the comparison point), ``torch_ref`` (public API,
``backend="torch"``), ``compiled_ref`` (``torch.compile`` of the references in ``fastgrpo.kernels.*.naive``, warmed
up before timing), ``fused`` (public API, ``backend="triton"``; CUDA only, skipped with the reason elsewhere),
``cuda`` (public API, ``backend="cuda"``: the native kernels of ``csrc/``; latent cases only, skipped unless CUDA
and the built library are present).
KLs use ``form="flow_grpo"`` because that is what the baseline computes. Gradient cases run the forward with
``requires_grad`` inputs, as training does.

Sizes: ``FASTGRPO_BENCH_SIZE=full`` (default on CUDA) times FLUX 1024x1024 latents, ``[B, 4096, 64]`` at
``B = 8, 16, 24`` in bf16 and fp32; ``small`` (default on CPU) ``[8, 256, 64]``. ``compiled_ref`` runs at one
batch size (``full``: 24; ``small``: 8, fp32 only) because every shape recompiles.

Nothing about speed is asserted. Each benchmark records in pytest-benchmark's ``extra_info``: ``median_s``,
``p20_s``, ``p80_s`` (CUDA: ``triton.testing.do_bench``; CPU: pytest-benchmark's rounds), ``bytes_moved`` (the
provider's ideal traffic, ``traffic.py``), ``bytes_min`` (the least any provider of the case moves), ``gbps``,
``copy_gbps`` (a ``dst.copy_(src)`` of the same bytes in the same session), ``frac_peak`` = gbps / copy_gbps,
``first_call_s`` (``compile_s`` for ``compiled_ref``), peak CUDA memory, device, versions, commit and
``speedup_vs_flow_grpo_eager`` (baseline median / median) where both ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import flow_grpo_baseline as eager
import pytest
import torch
from measure import SETTINGS, BenchSettings, first_call_seconds, peak_memory, time_cuda, timing_of_benchmark
from summary import PROVIDERS
from torch import Tensor
from traffic import Call, ideal_bytes

from fastgrpo.kernels import cuda_backend, grpo_loss, logprob_kl, noise_state, sde_step, step_logprob, velocity_kl
from fastgrpo.kernels.grpo.naive import grpo_loss_ref
from fastgrpo.kernels.sde import naive
from fastgrpo.kernels.sde.philox import philox_normal

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
STEP = {"noise_level": 0.7, "t_cap": 0.96}  # t_cap: the second time of a shifted FLUX schedule
T, T_NEXT = 0.8, 0.75  # a mid-trajectory training step
LOSS = {"clip_low": 1e-4, "clip_high": 1e-4, "beta": 0.04}  # Flow-GRPO's ranges for mean-reduced log-probs
Outputs = tuple[Tensor, ...]


@dataclass(frozen=True)
class Provider:
    """How a provider runs a case: ``build(inputs)`` returns the forward callable; ``calls(dtype)`` its traffic."""

    build: Callable[[dict[str, Tensor]], Callable[[], Outputs]]
    calls: Callable[[str], tuple[Call, ...]]


@dataclass(frozen=True)
class Case:
    name: str
    modes: tuple[str, ...]  # "fwd" and, where a gradient flows, "fwd_bwd"
    latent: bool  # inputs are latents in the benchmark dtype (else float32 [B] vectors)
    grad_inputs: tuple[str, ...]  # inputs that require grad; fwd_bwd returns their gradients
    providers: dict[str, Provider]


@dataclass(frozen=True)
class Spec:
    """One benchmark: a case in one mode, dtype and batch size, run by one provider."""

    case: str
    mode: str
    dtype: str
    batch: int
    provider: str

    @property
    def key(self) -> str:
        return f"{self.case}/{self.mode}/{self.dtype}/B{self.batch}"

    @property
    def id(self) -> str:
        return f"{self.case}-{self.mode}-{self.dtype}-B{self.batch}-{self.provider}"


def _const(*calls: Call) -> Callable[[str], tuple[Call, ...]]:
    return lambda dtype: calls


def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


# --- sde_step: rollout steps (no gradient) -------------------------------------------------------------------


def _eager_sample_calls(draws_noise: bool) -> Callable[[str], tuple[Call, ...]]:
    """randn (if drawn), the float32 step that also returns its mean, the cast back to the latent dtype."""

    def calls(dtype: str) -> tuple[Call, ...]:
        draw = (Call(writes=("noise32",)),) if draws_noise else ()
        step = Call(reads=("x", "v", "noise32"), writes=("x_next32", "mean32", "logp"))
        cast = (Call(reads=("x_next32",), writes=("x_next",)),) if dtype != "fp32" else ()
        return (*draw, step, *cast)

    return calls


def _seeded_sde_step_ref(x: Tensor, v: Tensor, t: Tensor, t_next: Tensor, state: Tensor) -> Outputs:
    """What ``sde_step(..., seed=state, backend="torch")`` runs: the reference Philox noise, then the reference step."""
    noise = philox_normal(state[0], state[1], x.shape[0], x[0].numel(), x.device)
    return naive.sde_step_ref(x, v, t, t_next, noise, **STEP)


def _sde_seed_providers() -> dict[str, Provider]:
    def api(backend: str) -> Provider:
        def build(i: dict[str, Tensor]) -> Callable[[], Outputs]:
            return lambda: sde_step(i["x"], i["v"], i["t"], i["t_next"], seed=i["state"], backend=backend, **STEP)

        return Provider(build, _const(Call(reads=("x", "v", "state"), writes=("x_next", "logp", "state"))))

    def compiled(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        f = _compiled(_seeded_sde_step_ref)
        return lambda: f(i["x"], i["v"], i["t"], i["t_next"], i["state"])

    return {
        "flow_grpo_eager": Provider(
            lambda i: lambda: eager.sample_step(i["x"], i["v"], i["t"], i["t_next"], **STEP), _eager_sample_calls(True)
        ),
        "torch_ref": api("torch"),
        "compiled_ref": Provider(compiled, _const(Call(reads=("x", "v", "state"), writes=("x_next", "logp")))),
        "fused": api("triton"),
        "cuda": api("cuda"),
    }


def _sde_noise_providers() -> dict[str, Provider]:
    traffic = _const(Call(reads=("x", "v", "noise32"), writes=("x_next", "logp")))

    def api(backend: str) -> Provider:
        def build(i: dict[str, Tensor]) -> Callable[[], Outputs]:
            return lambda: sde_step(i["x"], i["v"], i["t"], i["t_next"], noise=i["noise"], backend=backend, **STEP)

        return Provider(build, traffic)

    def compiled(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        f = _compiled(naive.sde_step_ref)
        return lambda: f(i["x"], i["v"], i["t"], i["t_next"], i["noise"], **STEP)

    def baseline(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        return lambda: eager.sample_step(i["x"], i["v"], i["t"], i["t_next"], noise=i["noise"], **STEP)

    return {
        "flow_grpo_eager": Provider(baseline, _eager_sample_calls(False)),
        "torch_ref": api("torch"),
        "compiled_ref": Provider(compiled, traffic),
        "fused": api("triton"),
        "cuda": api("cuda"),
    }


# --- log-prob and KL: the training step's per-sample terms (gradient w.r.t. v) --------------------------------

KL = {"form": "flow_grpo", **STEP}
FUSED_LOGPROB_KL = Call(("x_next", "x", "v", "v_ref"), ("logp", "kl"), grad_of=("v",), grad_outputs=("logp", "kl"))
SEPARATE_LOGPROB_KL = (
    Call(("x_next", "x", "v"), ("logp",), grad_of=("v",), grad_outputs=("logp",)),
    Call(("v", "v_ref"), ("kl",), grad_of=("v",), grad_outputs=("kl",)),
)
EAGER_LOGPROB_KL = (  # policy step (returns its float32 mean), reference step under no_grad, KL of the two means
    Call(("x_next", "x", "v"), ("mean32", "logp"), grad_of=("v",), grad_outputs=("mean32", "logp")),
    Call(("x_next", "x", "v_ref"), ("mean_ref32", "logp_ref")),
    Call(("mean32", "mean_ref32"), ("kl",), grad_of=("mean32",), grad_outputs=("kl",)),
)


def _eager_logprob_kl(i: dict[str, Tensor]) -> Callable[[], Outputs]:
    return lambda: eager.logprob_and_kl(i["x_next"], i["x"], i["v"], i["v_ref"], i["t"], i["t_next"], **STEP)


def _fused_call_providers() -> dict[str, Provider]:
    def api(backend: str) -> Provider:
        def build(i: dict[str, Tensor]) -> Callable[[], Outputs]:
            return lambda: logprob_kl(
                i["x_next"], i["x"], i["v"], i["v_ref"], i["t"], i["t_next"], backend=backend, **KL
            )

        return Provider(build, _const(FUSED_LOGPROB_KL))

    def compiled(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        f = _compiled(naive.logprob_kl_ref)
        return lambda: f(i["x_next"], i["x"], i["v"], i["v_ref"], i["t"], i["t_next"], **KL)

    return {
        "flow_grpo_eager": Provider(_eager_logprob_kl, _const(*EAGER_LOGPROB_KL)),
        "torch_ref": api("torch"),
        "compiled_ref": Provider(compiled, _const(FUSED_LOGPROB_KL)),
        "fused": api("triton"),
        "cuda": api("cuda"),
    }


def _separate_call_providers() -> dict[str, Provider]:
    def api(backend: str) -> Provider:
        def build(i: dict[str, Tensor]) -> Callable[[], Outputs]:
            def run() -> Outputs:
                logp = step_logprob(i["x_next"], i["x"], i["v"], i["t"], i["t_next"], backend=backend, **STEP)
                return logp, velocity_kl(i["v"], i["v_ref"], i["t"], i["t_next"], backend=backend, **KL)

            return run

        return Provider(build, _const(*SEPARATE_LOGPROB_KL))

    def compiled(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        f_logp, f_kl = _compiled(naive.step_logprob_ref), _compiled(naive.velocity_kl_ref)
        return lambda: (
            f_logp(i["x_next"], i["x"], i["v"], i["t"], i["t_next"], **STEP),
            f_kl(i["v"], i["v_ref"], i["t"], i["t_next"], **KL),
        )

    return {
        "flow_grpo_eager": Provider(_eager_logprob_kl, _const(*EAGER_LOGPROB_KL)),
        "torch_ref": api("torch"),
        "compiled_ref": Provider(compiled, _const(*SEPARATE_LOGPROB_KL)),
        "fused": api("triton"),
        "cuda": api("cuda"),
    }


# --- the GRPO loss (gradient w.r.t. logp and kl) ---------------------------------------------------------------


def _loss_providers() -> dict[str, Provider]:
    reads, grads = ("logp", "old_logp", "adv", "kl"), ("logp", "kl")
    traffic = _const(Call(reads, ("loss", "stats"), grad_of=grads, grad_outputs=("loss",)))
    eager_traffic = _const(Call(reads, ("loss", "info"), grad_of=grads, grad_outputs=("loss",)))

    def api(backend: str) -> Provider:
        def build(i: dict[str, Tensor]) -> Callable[[], Outputs]:
            return lambda: grpo_loss(i["logp"], i["old_logp"], i["adv"], kl=i["kl"], backend=backend, **LOSS)[:1]

        return Provider(build, traffic)

    def compiled(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        f = _compiled(grpo_loss_ref)
        return lambda: f(i["logp"], i["old_logp"], i["adv"], kl=i["kl"], **LOSS)[:1]

    def baseline(i: dict[str, Tensor]) -> Callable[[], Outputs]:
        return lambda: eager.clipped_policy_loss(i["logp"], i["old_logp"], i["adv"], kl=i["kl"], **LOSS)[:1]

    return {
        "flow_grpo_eager": Provider(baseline, eager_traffic),
        "torch_ref": api("torch"),
        "compiled_ref": Provider(compiled, traffic),
        "fused": api("triton"),
    }


CASES = {
    c.name: c
    for c in (
        Case("sde_step_seed", ("fwd",), True, (), _sde_seed_providers()),
        Case("sde_step_noise", ("fwd",), True, (), _sde_noise_providers()),
        Case("logprob_kl", ("fwd", "fwd_bwd"), True, ("v",), _fused_call_providers()),
        Case("logprob_then_kl", ("fwd", "fwd_bwd"), True, ("v",), _separate_call_providers()),
        Case("grpo_loss", ("fwd", "fwd_bwd"), False, ("logp", "kl"), _loss_providers()),
    )
}


# --- inputs and traffic -----------------------------------------------------------------------------------------


def make_inputs(case: Case, batch: int, dtype: str, settings: BenchSettings) -> dict[str, Tensor]:
    """Seeded inputs on the benchmark device; ``x_next`` is a real step of the reference from ``x``."""
    device = settings.device
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, *settings.per_sample) if case.latent else (batch,)
    randn = lambda: torch.randn(shape, generator=gen, device=device)  # noqa: E731
    if case.latent:
        lat = DTYPES[dtype]
        x, v, noise = randn().to(lat), randn().to(lat), randn()
        t, t_next = torch.full((batch,), T, device=device), torch.full((batch,), T_NEXT, device=device)
        x_next, _ = naive.sde_step_ref(x, v, t, t_next, noise, **STEP)
        v_ref = (v.float() + 0.01 * randn()).to(lat)
        inputs = {"x": x, "v": v, "v_ref": v_ref, "x_next": x_next, "noise": noise, "t": t, "t_next": t_next}
        inputs["state"] = noise_state(0, device=device)
    else:
        logp = randn()  # float32 [B] log-probs of one trained step, old ones within the clip range
        inputs = {"logp": logp, "old_logp": logp + 1e-4 * randn(), "adv": randn().clamp(-5, 5)}
        inputs["kl"] = 1e-3 * randn().abs()
    for name in case.grad_inputs:
        inputs[name].requires_grad_(True)
    return inputs


def tensor_bytes(case: Case, batch: int, dtype: str, settings: BenchSettings) -> dict[str, int]:
    """Sizes of every tensor a provider's ``Call`` can name (``*32``: float32 latents)."""
    if not case.latent:
        sizes = {name: 4 * batch for name in ("logp", "old_logp", "adv", "kl")}
        return {**sizes, "loss": 4, "stats": 40, "info": 16}  # stats: GRPOStats' 10 floats; info: the baseline's 4
    n = batch * settings.per_sample[0] * settings.per_sample[1]
    lat = n * DTYPES[dtype].itemsize
    sizes = {name: lat for name in ("x", "v", "v_ref", "x_next")}
    sizes.update({name: 4 * n for name in ("noise32", "x_next32", "mean32", "mean_ref32")})
    sizes.update({"logp": 4 * batch, "logp_ref": 4 * batch, "kl": 4 * batch, "state": 16})
    return sizes


def traffic_info(case: Case, spec: Spec, settings: BenchSettings) -> dict[str, int]:
    sizes = tensor_bytes(case, spec.batch, spec.dtype, settings)
    backward = spec.mode == "fwd_bwd"
    per_provider = {name: ideal_bytes(p.calls(spec.dtype), sizes, backward) for name, p in case.providers.items()}
    return {"bytes_moved": per_provider[spec.provider], "bytes_min": min(per_provider.values())}


# --- the benchmark -----------------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "spec" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[SETTINGS]
    params = []
    for case in CASES.values():
        for mode in case.modes:
            for dtype in settings.dtypes if case.latent else ("fp32",):
                for batch in settings.batches:
                    for provider in (p for p in PROVIDERS if p in case.providers):
                        spec = Spec(case.name, mode, dtype, batch, provider)
                        marks = [pytest.mark.gpu] if provider in ("fused", "cuda") else []
                        params.append(pytest.param(spec, id=spec.id, marks=marks))
    metafunc.parametrize("spec", params)


def _skip_unavailable(spec: Spec, settings: BenchSettings) -> None:
    if spec.provider == "fused" and settings.fused_skip_reason:
        pytest.skip(settings.fused_skip_reason)
    if spec.provider == "cuda" and (settings.device != "cuda" or not cuda_backend.is_available()):
        pytest.skip(f"the native CUDA kernels need a GPU and a built library ({cuda_backend.library_path()})")
    if spec.provider == "compiled_ref" and (
        spec.batch not in settings.compiled_batches or spec.dtype not in settings.compiled_dtypes
    ):
        pytest.skip(
            f"compiled_ref runs at batch {settings.compiled_batches} in {settings.compiled_dtypes} only "
            f"(FASTGRPO_BENCH_SIZE={settings.size}): every shape recompiles"
        )


def _one_call(case: Case, spec: Spec, inputs: dict[str, Tensor]) -> Callable[[], object]:
    forward = case.providers[spec.provider].build(inputs)
    if spec.mode == "fwd":
        return forward
    wrt = [inputs[name] for name in case.grad_inputs]

    def forward_backward() -> tuple[Tensor, ...]:
        outputs = forward()
        return torch.autograd.grad(sum(o.sum() for o in outputs), wrt)

    return forward_backward


def test_kernel(benchmark, spec: Spec, bench_settings, bench_facts, copy_bandwidth, result_store) -> None:
    _skip_unavailable(spec, bench_settings)
    device = bench_settings.device
    case = CASES[spec.case]
    if spec.provider == "compiled_ref":
        torch._dynamo.reset()  # each benchmark pays (and reports) its own compilation
    call = _one_call(case, spec, make_inputs(case, spec.batch, spec.dtype, bench_settings))
    first_s = first_call_seconds(call, device)
    call()

    info = benchmark.extra_info
    info.update(bench_facts)
    info.update(case=spec.case, mode=spec.mode, dtype=spec.dtype, batch=spec.batch, provider=spec.provider)
    info.update(per_sample=list(bench_settings.per_sample), first_call_s=first_s)
    if spec.provider == "compiled_ref":
        info["compile_s"] = first_s
    info.update(traffic_info(case, spec, bench_settings))
    info.update(peak_memory(call, device))

    def synchronised_call() -> None:
        call()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = spec.key
    benchmark(synchronised_call)
    if not benchmark.disabled:
        timing = time_cuda(call) if device == "cuda" else timing_of_benchmark(benchmark)
        if timing is not None:
            gbps = info["bytes_moved"] / timing.median_s / 1e9
            copy_gbps = copy_bandwidth.gbps(info["bytes_moved"])
            info.update(median_s=timing.median_s, p20_s=timing.p20_s, p80_s=timing.p80_s, timer=timing.timer)
            info.update(gbps=gbps, copy_gbps=copy_gbps, frac_peak=gbps / copy_gbps)
            info["effective_gbps"] = info["bytes_min"] / timing.median_s / 1e9
    result_store.add(spec.key, spec.provider, info)
