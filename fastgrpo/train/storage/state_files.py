"""Checkpoint state as a safetensors file: tensors as tensors, everything else as JSON in the file's metadata.

Nothing is ever unpickled: loading a state runs no code from the file, whoever wrote it (a pickle, which
``torch.load(weights_only=False)`` reads, can run anything). A state is nested plain data — dicts, lists, tuples,
str/int/float/bool/None, torch tensors and numpy arrays (the RNG states) — and comes back with the same types.

Encoding: every tensor is stored under a generated name (``t0``, ``t1``, ...) and replaced in the JSON skeleton by
``{"$tensor": name}``; a numpy array by ``{"$ndarray": name, "dtype": ...}`` (stored as a tensor of a type
safetensors holds); a tuple by ``{"$tuple": [...]}``; a dict whose keys are not all strings (an optimiser's
parameter indices) by ``{"$items": [[key, value], ...]}``. The skeleton is the metadata entry
``fastgrpo_state``. Non-finite floats are written as JSON ``NaN`` / ``Infinity``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["StateFileError", "decode_state", "encode_state", "load_state", "state_bytes"]

_KEY = "fastgrpo_state"
_MARKS = ("$tensor", "$ndarray", "$tuple", "$items")
#: numpy dtypes of saved arrays and the torch dtype that carries them (safetensors has no unsigned 32/64-bit ints)
_CARRIERS = {"uint32": torch.int64, "uint64": torch.int64}


class StateFileError(ValueError):
    """A state file that cannot be read (not a fastgrpo state file, or damaged)."""


def encode_state(state: Any) -> tuple[dict[str, torch.Tensor], str]:
    """``(tensors, skeleton JSON)`` of ``state``; ``TypeError`` naming the path of a value that is not plain data."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().cpu().contiguous().clone()  # private storage: safetensors refuses sharing
            return {"$tensor": name}
        if isinstance(value, np.ndarray):
            name = f"t{len(tensors)}"
            carrier = _CARRIERS.get(value.dtype.name)
            array = value.astype(np.int64) if carrier is not None else value
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array).copy())
            return {"$ndarray": name, "dtype": value.dtype.name}
        if isinstance(value, np.generic):
            return encode(value.item(), where)
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, tuple):
            return {"$tuple": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and k not in _MARKS for k in value):
                return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
            return {"$items": [[encode(k, where), encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
        raise TypeError(f"checkpoint state {where} is a {type(value).__name__}; store plain data, tensors or arrays")

    skeleton = encode(state, "state")
    return tensors, json.dumps(skeleton, allow_nan=True)


def decode_state(tensors: Mapping[str, torch.Tensor], skeleton: str) -> Any:
    """The state :func:`encode_state` encoded; :class:`StateFileError` for a skeleton that does not fit."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$tensor" in value:
            return tensors[value["$tensor"]]
        if "$ndarray" in value:
            return tensors[value["$ndarray"]].numpy().astype(np.dtype(value["dtype"]))
        if "$tuple" in value:
            return tuple(decode(v) for v in value["$tuple"])
        if "$items" in value:
            return {decode(k): decode(v) for k, v in value["$items"]}
        return {k: decode(v) for k, v in value.items()}

    try:
        return decode(json.loads(skeleton))
    except (KeyError, TypeError, ValueError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise StateFileError(f"the state's structure does not fit its tensors ({reason})") from None


def state_bytes(state: Any) -> bytes:
    """The safetensors file of ``state`` (write it with :func:`~fastgrpo.train.storage.files.atomic_write_bytes`)."""
    from safetensors.torch import save

    tensors, skeleton = encode_state(state)
    return save(tensors, metadata={_KEY: skeleton})


def load_state(path: str | Path) -> Any:
    """The state saved in the safetensors file ``path`` (on the CPU; read into memory, no file stays mapped).

    Raises :class:`StateFileError` when ``path`` is not a fastgrpo state file (for example a pickle from an older
    fastgrpo, which is never unpickled) or is damaged, and ``OSError`` when it cannot be read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(len(data) - 8, 100 * 2**20):
        raise StateFileError(f"{path} is not a safetensors file (a pickle, or damaged)")
    try:
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, ValueError, AttributeError) as error:
        raise StateFileError(f"{path} is not a readable safetensors file ({error})") from None
    if _KEY not in metadata:
        raise StateFileError(f"{path} is a safetensors file without fastgrpo state (no {_KEY!r} metadata)")
    return decode_state(tensors, metadata[_KEY])
