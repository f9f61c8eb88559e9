"""Building the typed config dataclasses of reward components from plain mappings (a YAML section)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["dataclass_from_mapping"]

T = TypeVar("T")


def dataclass_from_mapping(
    cls: type[T],
    mapping: Any,
    where: str,
    converters: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> T:
    """``cls(**mapping)`` after checking the keys; ``converters[key](value, where)`` builds nested values.

    An instance of ``cls`` is returned as it is. Raises ``ValueError`` naming ``where`` for a non-mapping, for
    unknown keys (listing the valid ones) and for missing required keys.
    """
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a mapping of {cls.__name__} fields, got {type(mapping).__name__}")
    names = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys are {names}")
    kwargs = dict(mapping)
    for key, convert in (converters or {}).items():
        if key in kwargs:
            kwargs[key] = convert(kwargs[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ValueError(f"{where}: {error}; valid keys are {names}") from None
