"""YAML reading and writing for configs, with YAML 1.2 number rules on top of PyYAML's safe loader.

PyYAML follows YAML 1.1, where ``1e-4`` is a *string* (a float needs a dot) and ``10:12`` is the base-60 integer
612. Both are common in training configs (a clip range, a profiling window), so this loader reads ``1e-4`` as a
float and leaves ``10:12`` a string; the dumper quotes any string that the loader would read as a number. Only
PyYAML's safe constructors are used: no Python objects are ever built from YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["dump_yaml", "parse_yaml", "read_yaml_file"]

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _number_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in (_INT_TAG, _FLOAT_TAG)]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, regexp, firsts in ((_INT_TAG, _INT, "-+0123456789"), (_FLOAT_TAG, _FLOAT, "-+0123456789.")):
        for first in firsts:
            resolvers.setdefault(first, []).append((tag, regexp))
    return resolvers


class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 numbers (``1e-4`` is a float, ``10:12`` a string)."""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that quotes exactly the strings :class:`_Loader` would read as something else."""


_Loader.yaml_implicit_resolvers = _number_resolvers()
_Dumper.yaml_implicit_resolvers = _number_resolvers()


def _located(error: yaml.YAMLError, where: str) -> ValueError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ValueError(f"{where} is not valid YAML{at}: {problem}; fix the syntax there")


def parse_yaml(text: str, where: str) -> Any:
    """The value of YAML ``text``; ``where`` names the text in the ``ValueError`` raised for bad syntax."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a yaml.SafeLoader: safe constructors only
    except yaml.YAMLError as error:
        raise _located(error, where) from None


def read_yaml_file(path: str | Path) -> Any:
    """The value of the YAML file at ``path`` (None for an empty file).

    Raises:
        ValueError: a missing file, or bad syntax (naming the file, line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass a YAML file (see configs/) or None for the demo")
    return parse_yaml(path.read_text(encoding="utf-8"), f"config file {path}")


def dump_yaml(data: Any) -> str:
    """``data`` (plain dicts, lists, scalars) as block-style YAML, keys in insertion order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
