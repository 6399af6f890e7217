"""The config problem collector every package's ``checks.py`` writes into.

Each package checks its own block of the config where its names and rules live
(``lcm/model/checks.py`` checks ``config.model``, ``lcm/data/checks.py`` ``config.data``, ...),
each as ``check_config(errors)``; ``lcm.config.validate`` runs them all and raises once. Every
problem is one line naming the dotted key, its value and what is allowed::

    config.model.num_heads = 6: must be a multiple of model.num_kv_heads = 4

Imports nothing from lcm, so any package may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any


def is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_non_negative_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_power_of_two(v: Any) -> bool:
    return is_positive_int(v) and v & (v - 1) == 0


def allowed(names: Iterable[Any]) -> str:
    """``allowed: 'a', 'b'``: the message for a value outside ``names``."""
    return f"allowed: {', '.join(repr(n) for n in names)}"


class Errors:
    """Collects problems in ``config`` as ``config.<key> = <value>: <message>`` lines."""

    def __init__(self, config):
        self.config = config
        self.lines: list[str] = []

    def get(self, key: str) -> Any:
        node = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def add(self, line: str) -> None:
        """Records a problem already written as a whole ``config.<key> ...`` line."""
        self.lines.append(line)

    def fail(self, key: str, message: str) -> None:
        try:
            value = self.get(key)
        except (KeyError, AttributeError):
            value = "<missing>"
        self.lines.append(f"config.{key} = {value!r}: {message}")

    def check(self, key: str, ok: Callable[[Any], Any], message: str) -> bool:
        """Fails ``key`` with ``message`` unless ``ok(value)`` (an exception in ``ok`` fails)."""
        try:
            good = bool(ok(self.get(key)))
        except (TypeError, ValueError):
            good = False
        if not good:
            self.fail(key, message)
        return good

    def one_of(self, key: str, names: Iterable[Any]) -> bool:
        names = tuple(names)
        return self.check(key, lambda v: v in names, allowed(names))

    def positive_int(self, *keys: str) -> None:
        for key in keys:
            self.check(key, is_positive_int, "must be a positive integer")

    def non_negative_int(self, *keys: str) -> None:
        for key in keys:
            self.check(key, is_non_negative_int, "must be an integer >= 0")

    def positive(self, *keys: str) -> None:
        for key in keys:
            self.check(key, lambda v: is_number(v) and v > 0, "must be a number > 0")

    def non_negative(self, *keys: str) -> None:
        for key in keys:
            self.check(key, lambda v: is_number(v) and v >= 0, "must be a number >= 0")
