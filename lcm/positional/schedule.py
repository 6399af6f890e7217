"""Per-layer positional scheme and mask: what layer i of the model uses.

The model asks ``layer_spec(model_config, i)`` and gets a ``LayerSpec``: the ``POSITIONAL``
name to build (from ``config.model.positional``) and a small declarative mask description that
the model turns into a mask object of ``lcm.attention.masks``::

    mask="causal"          -> Causal()
    mask="full"            -> Full()                 (bidirectional)
    mask="sliding_window"  -> SlidingWindow(window)  (key j visible iff 0 <= i - j <= window)
    mask="chunked_causal"  -> ChunkedCausal(window)  (window = chunk size)
    sink=n > 0             -> OR-ed with causal visibility of positions < n (Sink(n) & Causal())

``window`` uses the units of ``config.model.attention.window`` (the left size, the largest
visible ``i - j``); Hugging Face's ``sliding_window = W`` is ``window = W - 1`` here.

Schedules (``config.model.positional.schedule``):

- ``uniform``: every layer uses ``positional.name`` with ``model.attention.mask`` / ``window``.
- ``rnope_swa``: "Rope to Nope and Back Again" (Yang et al., Cohere 2025, arXiv:2501.18795;
  Hugging Face Cohere2): layer i is NoPE with a causal (full-length) mask when
  ``(i + 1) % nope_every == 0``, otherwise ``positional.name`` (normally ``rope``) with a sliding
  window of ``swa_window``. The paper's setting is ``nope_every = 4`` (3 RoPE-SWA : 1 NoPE) and a
  4096-token window.
- ``explicit``: ``positional.layers`` holds ``"scheme:mask"`` or ``"scheme:mask:window"`` entries;
  layer i uses entry ``i % len(layers)``, so a list as long as the model is fully explicit and a
  shorter one is a repeating pattern. A missing window means ``model.attention.window``.

A layer whose scheme is ``lm_infinite`` always gets LM-Infinite's Λ mask (a sliding window of
``lm_infinite_local - 1`` plus ``sink = lm_infinite_global``): its logits hook cannot mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEDULES = ("uniform", "rnope_swa", "explicit")
MASKS = ("causal", "sliding_window", "chunked_causal", "full")
_WINDOWED = ("sliding_window", "chunked_causal")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Positional scheme and mask description of one layer."""

    positional: str  # POSITIONAL name, built from config.model.positional
    mask: str  # causal | sliding_window | chunked_causal | full
    window: int = 0  # sliding_window: largest visible i - j; chunked_causal: chunk size
    sink: int = 0  # > 0: positions < sink are also visible (causally) to every query


def parse_layer(entry: str, default_window: int) -> LayerSpec:
    """Parses ``"scheme:mask[:window]"``; ``default_window`` fills a missing window."""
    parts = entry.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"layer entry {entry!r}: must be 'scheme:mask' or 'scheme:mask:window'")
    name, mask = parts[0], parts[1]
    if mask not in MASKS:
        raise ValueError(f"layer entry {entry!r}: mask {mask!r}; allowed: {', '.join(MASKS)}")
    window = default_window
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise ValueError(f"layer entry {entry!r}: window must be a non-negative integer")
        window = int(parts[2])
    if mask in _WINDOWED and window < 1:
        raise ValueError(f"layer entry {entry!r}: mask {mask!r} needs a window >= 1")
    return LayerSpec(name, mask, window if mask in _WINDOWED else 0)


def layer_spec(model_config: Any, layer: int) -> LayerSpec:
    """The ``LayerSpec`` of layer ``layer`` (0-based) of ``config.model``."""
    num_layers = model_config.num_layers
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer = {layer}: must be in [0, {num_layers})")
    p, attention = model_config.positional, model_config.attention
    if p.schedule == "uniform":
        window = attention.window if attention.mask in _WINDOWED else 0
        spec = LayerSpec(p.name, attention.mask, window)
    elif p.schedule == "rnope_swa":
        if (layer + 1) % p.nope_every == 0:
            spec = LayerSpec("nope", "causal")
        else:
            spec = LayerSpec(p.name, "sliding_window", p.swa_window)
    elif p.schedule == "explicit":
        if not p.layers:
            raise ValueError("model.positional.layers must be non-empty for schedule 'explicit'")
        spec = parse_layer(p.layers[layer % len(p.layers)], attention.window)
    else:
        raise ValueError(f"model.positional.schedule = {p.schedule!r}; allowed: {SCHEDULES}")
    if spec.positional == "lm_infinite":
        spec = LayerSpec(
            "lm_infinite", "sliding_window", p.lm_infinite_local - 1, p.lm_infinite_global
        )
    return spec


def layer_specs(model_config: Any) -> tuple[LayerSpec, ...]:
    """``layer_spec`` for every layer."""
    return tuple(layer_spec(model_config, i) for i in range(model_config.num_layers))
