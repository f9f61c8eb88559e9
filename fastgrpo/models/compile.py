"""Regional ``torch.compile`` of the denoising transformer: each repeated block compiled, in place.

Compiling block by block (regional compilation) instead of the whole transformer compiles one graph per block
*type* that every instance reuses, so the cold start is a few block compilations however deep the model is:

- FLUX.1 Kontext / the tiny editor (``FluxTransformer2DModel``): ``transformer_blocks`` (``FluxTransformerBlock``)
  and ``single_transformer_blocks`` (``FluxSingleTransformerBlock``);
- Qwen-Image-Edit (``QwenImageTransformer2DModel``): ``transformer_blocks`` (``QwenImageTransformerBlock``).

Diffusers models that declare ``_repeated_blocks`` (both of the above in diffusers >= 0.35) are compiled with
``ModelMixin.compile_repeated_blocks``; otherwise the block lists above are compiled one module at a time. Either
way ``module.compile()`` works in place: module names, ``state_dict`` keys, peft's LoRA layers, ``save_lora`` /
``load_lora`` and the optimiser's parameters are unchanged. Attach LoRA **before** compiling (peft replaces the
``Linear`` layers it adapts).

Compile cost and recompilation:

- compilation is lazy: the first forward of each new configuration pays it. A configuration is the grad mode,
  whether the input requires grad, the input strides (the first single-stream FLUX block receives a contiguous
  tensor, the others a view) and the shapes (a second batch size or resolution recompiles once with dynamic
  shapes);
- :meth:`EditModel.reference` (adapters disabled) flips peft's ``disable_adapters`` flag, which the compiled
  graphs guard on: the first reference forward recompiles once, later ones reuse that graph;
- a GRPO iteration of the tiny editor with a KL term compiles four graphs of the joint block and six of the
  single-stream block (rollout, update with and without grad-requiring inputs, reference, contiguous or strided
  input); a new shape adds one. torch's ``recompile_limit`` (8 per block type by default) bounds them: a block
  past it runs eagerly (torch logs a warning, results are unchanged);
- ``torch.utils.flop_counter.FlopCounterMode`` misses the operators inside inductor-compiled code: count FLOPs under
  ``torch.compiler.set_stance("force_eager")`` (the trainer does);
- :func:`compile_seconds` reads the compile time torch has spent in this process so far and
  :meth:`CompileReport.read` the part spent since the previous read, so a trainer reports it apart from the step
  time (``time/compile``); :func:`warm_up` times a first call against the steady-state ones.

Example::

    model.add_lora(16, 16.0)
    report = compile_blocks(model.transformer)           # inductor; e.g. backend="aot_eager" to debug
    timing = warm_up(lambda: model.velocity(x, t, cond)) # timing.compile_s, timing.first_s, timing.steady_s
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["CompileReport", "WarmUpTiming", "compile_blocks", "compile_seconds", "warm_up"]

#: attribute names of block lists compiled when the model declares no ``_repeated_blocks``
BLOCK_LISTS: tuple[str, ...] = ("transformer_blocks", "single_transformer_blocks")
_COMPILE_KWARGS = ("backend", "mode", "fullgraph", "dynamic", "options", "disable")


@dataclass
class CompileReport:
    """What :func:`compile_blocks` compiled, and a clock of the compile time spent since.

    Attributes:
        blocks: number of block modules compiled (the tiny editor: 4; FLUX.1 Kontext: 19 + 38; Qwen-Image: 60).
        block_types: class names of the compiled blocks, in first-seen order.
        method: ``"compile_repeated_blocks"`` (diffusers' ``ModelMixin`` method) or ``"block_lists"`` (the
            :data:`BLOCK_LISTS` attributes, or ``block_types``, compiled one module at a time).
        options: the keyword arguments given to ``torch.compile`` (``backend``, ``mode``, ...).
    """

    blocks: int
    block_types: tuple[str, ...]
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    _mark: float = field(default_factory=lambda: compile_seconds(), init=False, repr=False)

    def read(self) -> float:
        """Seconds ``torch.compile`` spent (tracing, graph compilation, backward compilation) since the previous
        read or since :func:`compile_blocks`; resets. Counts every compilation of the process (NaN when this torch
        does not report compile time)."""
        now = compile_seconds()
        spent = now - self._mark if now >= self._mark else now  # torch._dynamo.reset() zeroes dynamo's timers
        self._mark = now
        return spent

    def describe(self) -> str:
        """One line for the log, e.g. ``4 blocks (FluxTransformerBlock, ...) with torch.compile(backend=...)``."""
        opts = ", ".join(f"{k}={v!r}" for k, v in {"backend": "inductor", **self.options}.items())
        return f"{self.blocks} blocks ({', '.join(self.block_types)}) with torch.compile({opts})"


@dataclass(frozen=True)
class WarmUpTiming:
    """Wall-clock seconds of :func:`warm_up`: the first call, the median later call, and the compile time."""

    first_s: float
    steady_s: float
    compile_s: float

    @property
    def overhead_s(self) -> float:
        """``first_s - steady_s``: what the first call cost beyond a steady-state one (compilation, caches)."""
        return self.first_s - self.steady_s


def compile_seconds() -> float:
    """Total seconds ``torch.compile`` has spent compiling in this process (forward frames and backward graphs).

    Read from dynamo's own timers (``torch._dynamo.utils.calculate_time_spent``); NaN when this torch lacks them.
    A host-side counter: reading it never synchronises the device.
    """
    try:
        from torch._dynamo.utils import calculate_time_spent

        spent = calculate_time_spent()
    except (ImportError, AttributeError):  # private API: absent or renamed in some torch versions
        return float("nan")
    if "total_wall_time" in spent:
        return float(spent["total_wall_time"])
    return float(spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0))


def _check_options(transformer: nn.Module, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_COMPILE_KWARGS))
    if unknown:
        raise ValueError(f"unknown torch.compile option(s) {unknown}; pass only {', '.join(_COMPILE_KWARGS)}")
    backend = options.get("backend", "inductor")
    if isinstance(backend, str):
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"unknown torch.compile backend {backend!r}; use one of {', '.join(sorted(known))}")
    param = next(transformer.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    if backend == "inductor" and on_cpu and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise ValueError(
            "torch.compile's inductor backend needs a C++ compiler to run on the CPU and none was found; install "
            "one (e.g. apt-get install g++), pass backend='aot_eager', or turn compilation off (runtime.compile=false)"
        )


def _find_blocks(transformer: nn.Module, block_types: Sequence[str] | None) -> tuple[list[nn.Module], str]:
    """The block modules to compile and the method name (see :class:`CompileReport`)."""
    if block_types is not None:
        wanted = set(block_types)
        return [m for m in transformer.modules() if type(m).__name__ in wanted], "block_lists"
    repeated = getattr(transformer, "_repeated_blocks", None)
    if repeated and hasattr(transformer, "compile_repeated_blocks"):
        names = set(repeated)
        return [m for m in transformer.modules() if type(m).__name__ in names], "compile_repeated_blocks"
    blocks: list[nn.Module] = []
    for name in BLOCK_LISTS:
        container = getattr(transformer, name, None)
        if isinstance(container, nn.ModuleList):
            blocks.extend(container)
    return blocks, "block_lists"


def compile_blocks(
    transformer: nn.Module, *, block_types: Sequence[str] | None = None, **options: Any
) -> CompileReport:
    """Compile every repeated block of ``transformer`` with ``torch.compile``, in place (regional compilation).

    Args:
        transformer: a diffusers transformer (``FluxTransformer2DModel``, ``QwenImageTransformer2DModel``, ...),
            with its LoRA adapters already attached.
        block_types: class names of the blocks to compile; default: the model's ``_repeated_blocks``, else the
            modules of its :data:`BLOCK_LISTS` attributes.
        **options: keyword arguments of ``torch.compile`` (``backend="inductor"`` by default, ``mode``,
            ``fullgraph``, ``dynamic``, ``options``).

    Returns:
        A :class:`CompileReport`; nothing is compiled yet (torch compiles at each block's first call), so time the
        first forward with :func:`warm_up` or :meth:`CompileReport.read`.

    Raises:
        ValueError: a model without repeated blocks (naming its class and the ``block_types=`` fix), an unknown
            option or backend, or inductor on the CPU without a C++ compiler.
    """
    _check_options(transformer, options)
    blocks, method = _find_blocks(transformer, block_types)
    if not blocks:
        declared = getattr(transformer, "_repeated_blocks", None)
        raise ValueError(
            f"{type(transformer).__name__} has no repeated blocks to compile (block_types={block_types}, "
            f"_repeated_blocks={declared}, no {' / '.join(BLOCK_LISTS)} lists); pass block_types=[<block class "
            "name>, ...] or turn compilation off (runtime.compile=false)"
        )
    report = CompileReport(
        blocks=len(blocks), block_types=tuple(dict.fromkeys(type(b).__name__ for b in blocks)), method=method,
        options=dict(options),
    )  # fmt: skip
    if method == "compile_repeated_blocks":
        transformer.compile_repeated_blocks(**options)  # type: ignore[operator]
    else:
        for block in blocks:
            block.compile(**options)
    report.read()  # the clock starts now
    return report


def _synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], Any], *, repeats: int = 2, device: torch.device | str | None = None) -> WarmUpTiming:
    """Call ``fn`` ``1 + repeats`` times and time the first call (which compiles) against the later ones.

    Args:
        fn: one forward (or forward + backward) of a compiled model on a representative input shape.
        repeats: steady-state calls after the first (>= 1); their median is ``steady_s``.
        device: a CUDA device is synchronised around every call, so the times are device times.

    Returns:
        :class:`WarmUpTiming` in seconds; ``compile_s`` is the compile time spent during the first call
        (:func:`compile_seconds`), ``first_s - steady_s`` its wall-clock cost.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    _synchronize(device)
    before = compile_seconds()
    start = time.perf_counter()
    fn()
    _synchronize(device)
    first = time.perf_counter() - start
    compiled = compile_seconds() - before
    steady = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        steady.append(time.perf_counter() - start)
    return WarmUpTiming(first_s=first, steady_s=statistics.median(steady), compile_s=compiled)
