"""Typed task parameters: every task declares the type and range of each constructor parameter.

One declaration serves the library (``make_task("bijection", V=10)``), run manifests (JSON values) and the
command line (``--set V=10``, where every value arrives as a string). :func:`check_params` converts each value
by its declared type and checks its range, so ``"False"`` is never read as a truthy string:

- ``bool``: ``True``/``False``; the strings true/false, yes/no, 1/0 (any case); the integers 1 and 0.
- ``int``: an integer, an integral finite float (``10.0``) or a decimal string (``"10"``); never a bool.
- ``float``: a finite int or float, or a string that parses to a finite float.
- ``str`` with ``choices``: one of the listed strings.
- ``optional=True`` additionally accepts ``None`` (strings ``none``/``null``): the task then picks a value.

Anything else is a :class:`~geoprobe.errors.ConfigError` whose one line names the task, the parameter, the
expected type/range and the value given; an unknown name lists the valid parameters with their types.
Constraints between parameters (e.g. ``L <= V``) stay in the task's constructor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geoprobe.errors import ConfigError

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
_NULL_WORDS = ("none", "null")


@dataclass(frozen=True)
class Param:
    """Type and range of one task parameter.

    Attributes:
        type: ``int``, ``float``, ``bool`` or ``str``.
        low, high: inclusive bounds (``None``: unbounded); ``low_open``/``high_open`` make them strict.
        choices: the valid strings of a ``str`` parameter.
        optional: ``None`` is accepted (the task derives a value).
    """

    type: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def bounds(self, name: str) -> str:
        """The range as an inequality: ``V >= 2``, ``0 < eps < 0.5``, ``2 <= n_states <= 20`` ("" if none)."""
        lo_op, hi_op = ("<" if self.low_open else "<="), ("<" if self.high_open else "<=")
        if self.low is not None and self.high is not None:
            return f"{self.low:g} {lo_op} {name} {hi_op} {self.high:g}"
        if self.low is not None:
            return f"{name} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{name} {hi_op} {self.high:g}"
        return ""

    def describe(self, name: str) -> str:
        """``int, V >= 2`` / ``one of filter, next_obs`` / ``bool`` (for messages and ``tunnel list``)."""
        text = f"one of {', '.join(self.choices)}" if self.choices else self.type.__name__
        if self.bounds(name):
            text += f", {self.bounds(name)}"
        return text + (", or none" if self.optional else "")

    def convert(self, task: str, name: str, value: Any) -> Any:
        """``value`` converted to the declared type and range-checked; ConfigError naming all three otherwise."""
        if self.optional and (value is None or isinstance(value, str) and value.strip().lower() in _NULL_WORDS):
            return None
        converted = _CONVERTERS[self.type](value)
        if self.choices is not None and converted not in self.choices:
            raise ConfigError(f"unknown {task} {name} {value!r}; valid choices: {', '.join(self.choices)}")
        if converted is _INVALID:
            expected = "bool (true/false, yes/no, 1/0)" if self.type is bool else self.describe(name)
            raise ConfigError(f"task {task}: parameter {name} expects {expected}; got {value!r}")
        too_low = self.low is not None and (converted <= self.low if self.low_open else converted < self.low)
        too_high = self.high is not None and (converted >= self.high if self.high_open else converted > self.high)
        if too_low or too_high:
            raise ConfigError(f"{task} needs {self.bounds(name)}, got {name}={converted!r}")
        return converted


_INVALID = object()


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return _INVALID


def _to_int(value: Any) -> Any:
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else _INVALID
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        return int(text) if digits.isdigit() and digits.isascii() else _INVALID
    return _INVALID


def _to_float(value: Any) -> Any:
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return _INVALID
    else:
        return _INVALID
    return out if math.isfinite(out) else _INVALID


def _to_str(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else _INVALID


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def describe_params(spec: Mapping[str, Param]) -> str:
    """``V (int >= 2), L (int >= 1), layout (one of separate, paired_query), ...`` for error messages."""
    return ", ".join(f"{name} ({p.describe(name)})" for name, p in spec.items())


def check_params(task: str, spec: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` converted by ``spec`` (see the module docstring); unknown names list the valid ones."""
    unknown = [k for k in given if k not in spec]
    if unknown:
        raise ConfigError(f"bad parameters for task {task!r}: unknown parameter {unknown[0]!r}; valid "
                          f"parameters: {describe_params(spec)}")
    return {k: spec[k].convert(task, k, v) for k, v in given.items()}
