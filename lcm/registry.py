"""One small name -> implementation registry, used by every pluggable part of lcm.

Each kind of pluggable part has one instance (``POSITIONAL``, ``ATTENTION``, ...), created in the
package that owns the kind. Implementations register with a decorator, so ``grep register(``
finds every name a config may use::

    ATTENTION = Registry("attention", key="impl")

    @ATTENTION.register("blockwise")
    class Blockwise: ...

    kind = ATTENTION.get("blockwise")
    attn = ATTENTION.build(config.model.attention)  # entry.from_config(config block)

``build`` calls the entry's ``from_config(config, **extra)`` when it has one (attention
implementations and positional schemes read their fields from a shared config block), else the
entry itself with the block's other fields as kwargs.

Names appear in configs and paper scripts: never rename one, register an alias instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class Registry:
    """Maps names to implementations (functions, classes or factories)."""

    def __init__(self, kind: str, *, key: str = "name"):
        self.kind = kind
        self.key = key  # the config field naming the entry (``build``)
        self._entries: dict[str, Any] = {}

    def register(self, name: str, *aliases: str) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` under ``name`` (and optional aliases)."""

        def decorator(obj: Any) -> Any:
            for key in (name, *aliases):
                if not isinstance(key, str) or not key:
                    raise ValueError(f"{self.kind} registry: names must be non-empty strings")
                if key in self._entries and self._entries[key] is not obj:
                    raise ValueError(f"{self.kind} registry: name {key!r} is already registered")
                self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> Any:
        """Returns the entry registered as ``name``; unknown names list the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """All registered names (aliases included), sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def build(self, config: Mapping[str, Any], *, name: str | None = None, **extra: Any) -> Any:
        """Builds the entry named ``config[self.key]`` (or ``name``) from ``config``.

        An entry with ``from_config`` gets ``from_config(config, **extra)``; any other is called
        with the other fields of ``config`` as kwargs. ``config`` may be a dict or an
        ``ml_collections.ConfigDict``; ``extra`` kwargs are passed through. A misspelled field
        therefore fails here, at build time, with the factory's own ``TypeError``.
        """
        fields = dict(config.items()) if hasattr(config, "items") else dict(config)
        if name is None and self.key not in fields:
            raise KeyError(f"{self.kind} config needs a {self.key!r} field; got {sorted(fields)}")
        entry = self.get(fields.pop(self.key, None) if name is None else name)
        if hasattr(entry, "from_config"):
            return entry.from_config(config, **extra)
        fields.pop(self.key, None)
        return entry(**fields, **extra)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
