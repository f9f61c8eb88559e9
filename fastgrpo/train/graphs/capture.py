"""The machinery of :mod:`fastgrpo.train.graphs`: a bounded cache of captured graphs, capture with side-stream
warm-up, shape keys, and the eager fallback that logs its reason once.

A runner built on :class:`GraphRunner` keeps static input buffers per shape key, copies each call's inputs into
them, replays the graph and reads its static outputs (torch's CUDA-graph notes: warm up on a side stream, capture
on that stream, replay on the caller's stream). Anything a graph bakes in at capture must be part of its key.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

import torch

from fastgrpo.models.base import Condition, EditModel

__all__ = ["CAPTURE_MODES", "DEFAULT_MAX_GRAPHS", "CapturedGraph", "GraphCache", "GraphRunner"]

#: the logger of every CUDA-graph message (a child of ``fastgrpo``)
logger = logging.getLogger("fastgrpo.train.graphs")

DEFAULT_MAX_GRAPHS = 8
CAPTURE_MODES = ("global", "thread_local", "relaxed")
Annotate = Callable[[str], AbstractContextManager[None]]


class Releasable(Protocol):
    """A cache entry: ``release()`` frees its graph (and with it the graph's private memory pool)."""

    def release(self) -> None: ...


E = TypeVar("E", bound=Releasable)


class CapturedGraph:
    """Base of a runner's cache entry: ``release()`` resets its ``graph`` (a ``torch.cuda.CUDAGraph``)."""

    graph: Any

    def release(self) -> None:
        if self.graph is not None:
            self.graph.reset()
        self.graph = None


class GraphCache(Generic[E]):
    """At most ``limit`` captured graphs keyed by shape; the least recently used one is released first.

    Raises ``ValueError`` for a ``limit`` that is not an int >= 1.
    """

    def __init__(self, limit: int = DEFAULT_MAX_GRAPHS) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_graphs must be an int >= 1 (e.g. {DEFAULT_MAX_GRAPHS}), got {limit!r}")
        self.limit = limit
        self.evictions = 0
        self._entries: OrderedDict[Hashable, E] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """Keys from the least to the most recently used."""
        return list(self._entries)

    def get_or_build(self, key: Hashable, build: Callable[[], E]) -> E:
        """The entry of ``key`` (now the most recent), built by ``build()`` on a miss.

        On a miss with a full cache the least recently used entry is released *before* ``build`` runs, so that
        its memory is free for the new capture. When ``build`` raises, nothing is cached.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        while len(self._entries) >= self.limit:
            _, old = self._entries.popitem(last=False)
            old.release()
            self.evictions += 1
        entry = build()
        self._entries[key] = entry
        return entry

    def clear(self) -> None:
        """Release every entry."""
        while self._entries:
            self._entries.popitem(last=False)[1].release()


def _check_runner_args(max_graphs: int, warmup: int, capture_error_mode: str) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be an int >= 1 (eager runs before a capture, e.g. 2), got {warmup!r}")
    if capture_error_mode not in CAPTURE_MODES:
        raise ValueError(f"capture_error_mode={capture_error_mode!r} is not one of {CAPTURE_MODES}")
    GraphCache(max_graphs)  # the limit's check and message


def cond_signature(cond: Condition) -> tuple[Any, ...]:
    """What a graph bakes in about ``cond``: resolution, tensor names, shapes, dtypes, devices, sequence masks."""
    tensors = tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in sorted(cond.tensors.items()))
    return cond.height, cond.width, tensors, tuple(sorted(cond.seq_masks.items()))


def static_cond(cond: Condition) -> Condition:
    """Private contiguous copies of ``cond``'s tensors: the static condition inputs of a graph."""
    tensors = {n: t.clone(memory_format=torch.contiguous_format) for n, t in cond.tensors.items()}
    return Condition(tensors, cond.height, cond.width, dict(cond.seq_masks))


def copy_cond(static: Condition, cond: Condition) -> None:
    """Copy ``cond``'s tensors into the static buffers of ``static`` (device-to-device copies, no sync)."""
    for name, buffer in static.tensors.items():
        buffer.copy_(cond.tensors[name])


def _sharded(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds ``DTensor`` parameters (FSDP2): per-forward all-gathers that graphs do not hold."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class GraphRunner:
    """What both runners share: the shape cache, the side stream, capture, and the eager fallback's reasons."""

    what = "graphs"

    def __init__(self, model: EditModel, *, max_graphs: int, warmup: int, capture_error_mode: str) -> None:
        _check_runner_args(max_graphs, warmup, capture_error_mode)
        self.model = model
        self.cache: GraphCache[Any] = GraphCache(max_graphs)
        self.warmup = warmup
        self.capture_error_mode = capture_error_mode
        #: why this runner stopped capturing (a capture failed); None while it still captures
        self.disabled_reason: str | None = None
        #: whether the last call replayed graphs (None before the first call)
        self.used: bool | None = None
        self._reported: set[str] = set()
        self._streams: dict[torch.device, Any] = {}

    def _check_model(self, model: EditModel) -> None:
        if model is not self.model:
            raise ValueError(f"this {type(self).__name__} was built for another model; build one per model")

    def unavailable(self, device: torch.device) -> str | None:
        """Why graphs cannot run for tensors on ``device`` (None when they can)."""
        if self.disabled_reason is not None:
            return self.disabled_reason
        if device.type != "cuda" or not torch.cuda.is_available():
            return f"the tensors are on {device}, and CUDA graphs need a CUDA device"
        if torch.cuda.is_current_stream_capturing():
            return "a CUDA graph is being captured around this call (graphs do not nest)"
        if _sharded(self.model.transformer):
            return "the transformer is sharded with FSDP (DTensor weights): its collectives are not captured"
        return None

    def fall_back(self, reason: str) -> None:
        """Note that this call runs eagerly; each distinct reason is logged once."""
        self.used = False
        if reason not in self._reported:
            self._reported.add(reason)
            logger.warning("CUDA graphs: the %s runs eagerly: %s", self.what, reason)

    def _key_common(self, device: torch.device) -> tuple[Any, ...]:
        weights = itertools.chain(self.model.transformer.parameters(), self.model.transformer.buffers())
        autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        return device, autocast, tuple(t.data_ptr() for t in weights)

    def _get(self, key: Hashable, build: Callable[[], E]) -> E | None:
        """The cached or newly captured graph of ``key``; None (and this runner disabled) when capture fails.

        ``ValueError``/``TypeError`` (a bad argument, which the eager code would raise as well) propagate.
        """
        try:
            return self.cache.get_or_build(key, build)
        except (ValueError, TypeError):
            raise
        except Exception as error:  # any capture failure: the eager code is always correct
            self.disabled_reason = f"capture failed ({type(error).__name__}: {str(error).strip()[:300]})"
            self.fall_back(self.disabled_reason)
            return None

    @staticmethod
    def _replay_graph(graph: Any, device: torch.device) -> None:
        """Replay on the current stream of ``device`` (the graph's device, whatever the current device is)."""
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            graph.replay()

    def _capture(self, body: Callable[[], Any], device: torch.device) -> tuple[Any, Any]:
        """Warm ``body`` up on a side stream, then capture it there; returns ``(graph, body's static outputs)``."""
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        with torch.cuda.device(device):
            stream.wait_stream(current)
            try:
                with torch.cuda.stream(stream):
                    for _ in range(self.warmup):  # lazy initialisation, kernel compilation, allocator warm-up
                        body()
            finally:
                current.wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # "thread_local" (the default) lets other threads (reward scoring, data loading) use CUDA meanwhile
            with torch.cuda.graph(graph, stream=stream, capture_error_mode=self.capture_error_mode):
                outputs = body()
        return graph, outputs
