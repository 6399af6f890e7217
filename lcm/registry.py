"""One small name -> implementation registry, used by every pluggable part of lcm.

Each kind of pluggable part has one instance (``POSITIONAL``, ``ATTENTION``, ...), created in the
package that owns the kind. Implementations register with a decorator, so ``grep register(``
finds every name a config may use::

    ATTENTION = Registry("attention")

    @ATTENTION.register("blockwise")
    def blockwise_attention(q, k, v, *, mask, block_q=512, block_kv=512): ...

    fn = ATTENTION.get("blockwise")
    attn = ATTENTION.build({"name": "blockwise", "block_q": 256})  # calls the factory

Names appear in configs and paper scripts: never rename one, register an alias instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class Registry:
    """Maps names to implementations (functions, classes or factories)."""

    def __init__(self, kind: str):
        self.kind = kind
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

    def build(self, config: Mapping[str, Any], *, key: str = "name", **extra: Any) -> Any:
        """Calls the entry named ``config[key]`` with the other fields of ``config`` as kwargs.

        ``config`` may be a dict or an ``ml_collections.ConfigDict``; ``extra`` kwargs (a mesh,
        say) are passed through. A misspelled field therefore fails here, at build time, with
        the factory's own ``TypeError``.
        """
        fields = dict(config.items()) if hasattr(config, "items") else dict(config)
        if key not in fields:
            raise KeyError(f"{self.kind} config needs a {key!r} field; got {sorted(fields)}")
        name = fields.pop(key)
        return self.get(name)(**fields, **extra)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
