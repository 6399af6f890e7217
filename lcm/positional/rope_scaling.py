"""RoPE inverse frequencies for every ``rope_scaling`` variant, with Hugging Face semantics.

``rope_frequencies`` reads a Hugging Face style ``rope_scaling`` mapping and returns the inverse
frequencies ``θ_i`` (float32, length ``rotary_dim / 2``) and the attention factor that multiplies
cos and sin (so q·k is scaled by its square). The ``rope_type`` names, keys, defaults and
floor/ceil behaviour follow ``transformers/modeling_rope_utils.py`` (``_compute_*_parameters``,
current release, where ``factor`` is only derived from ``max_position_embeddings`` when absent),
so a Hugging Face config loads without translation. Papers:

- default: RoFormer, Su et al. 2021 (arXiv:2104.09864). ABF (Xiong et al. 2023) is only a base.
- linear: Position Interpolation, Chen et al. 2023 (arXiv:2306.15595).
- ntk: NTK-aware base change, bloc97 2023; ``b' = b·s^(d/(d-2))``. Current transformers has no
  ``ntk`` type (an intermediate release had one with this formula): it equals ``default`` with
  ``rope_theta = b·s^(d/(d-2))``, and the name follows the lcm issue.
- dynamic: dynamic NTK, emozilla 2023; base recomputed from the current sequence length.
- yarn: Peng et al. 2023 (arXiv:2309.00071), with DeepSeek's ``mscale``/``mscale_all_dim`` and
  gpt-oss's ``truncate``.
- llama3: Llama 3.1 frequency smoothing (Meta 2024, ``apply_scaling`` in llama-models).
- longrope: Ding et al. 2024 (arXiv:2402.13753); per-pair short/long factors.
- resonance, resonance_yarn: Wang et al. 2024 (arXiv:2403.00071); wavelengths rounded to
  integers, after YaRN for ``resonance_yarn``. Not Hugging Face types, so the names are ours.

Lengths: Hugging Face reads ``config.max_position_embeddings``; lcm configs have no such field,
so it is the optional ``max_position_embeddings`` argument. Where Hugging Face falls back to it
(``original_max_position_embeddings`` missing, ``factor`` missing for yarn/longrope, the
reference length of ``dynamic``) we do the same, and fail with a ``ValueError`` when neither is
given. Frequencies are computed in float64 and rounded to float32 once (Hugging Face computes in
float32; the two agree to a float32 ulp or two).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Keys each rope_type reads, beyond rope_type itself.
SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "yarn": (
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    ),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": (
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "short_factor",
        "long_factor",
    ),
    "resonance": (),
}
SCALING_KEYS["resonance_yarn"] = SCALING_KEYS["yarn"]
ROPE_TYPES = tuple(SCALING_KEYS)
# Keys an lcm config must set per rope_type: lcm configs have no max_position_embeddings, so the
# Hugging Face fallbacks to it are unavailable there.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": SCALING_KEYS["llama3"],
    "longrope": ("factor", "original_max_position_embeddings", "short_factor", "long_factor"),
    "resonance": (),
    "resonance_yarn": ("factor", "original_max_position_embeddings"),
}
# Every key a rope_scaling mapping may hold (unset keys may be present with value None).
ROPE_SCALING_KEYS = (
    "rope_type",
    *sorted({k for keys in SCALING_KEYS.values() for k in keys}),
)
# rope_types whose frequencies depend on the current sequence length.
LENGTH_DEPENDENT = ("dynamic", "longrope")


@dataclasses.dataclass(frozen=True)
class RopeFrequencies:
    """Inverse frequencies of one RoPE variant.

    Attributes:
      inv_freq: float32 ``[rotary_dim / 2]`` (numpy, or jax when computed from a traced length).
      attention_factor: multiplies cos and sin (q·k is scaled by its square).
      wavelengths: int32 ``[rotary_dim / 2]`` integer periods (Resonance RoPE) or None; when set,
        angles are ``(m mod wavelength) · inv_freq``, exactly periodic at any position.
    """

    inv_freq: Any
    attention_factor: float = 1.0
    wavelengths: np.ndarray | None = None


def _exponents(dim: int) -> np.ndarray:
    return np.arange(0, dim, 2, dtype=np.float64) / dim  # 2i/d


def _default(dim: int, base: float) -> np.ndarray:
    return 1.0 / base ** _exponents(dim)


def _require(rs: Mapping[str, Any], key: str, rope_type: str) -> Any:
    if rs.get(key) is None:
        raise ValueError(f"rope_scaling.{key} is required for rope_type={rope_type!r}")
    return rs[key]


def _original_length(rs: Mapping[str, Any], rope_type: str, max_position_embeddings) -> int:
    length = rs.get("original_max_position_embeddings") or max_position_embeddings
    if length is None:
        raise ValueError(
            f"rope_scaling.original_max_position_embeddings is required for rope_type="
            f"{rope_type!r} (or pass max_position_embeddings)"
        )
    return length


def _yarn(dim, base, rs, max_position_embeddings) -> tuple[np.ndarray, float]:
    length = _original_length(rs, "yarn", max_position_embeddings)
    factor = rs.get("factor")
    if factor is None:  # DeepSeek-V3 style configs derive it from the two lengths.
        if max_position_embeddings is None:
            raise ValueError("rope_scaling.factor is required for rope_type='yarn'")
        factor = max_position_embeddings / length

    def mscale_of(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = mscale_of(factor, mscale) / mscale_of(factor, mscale_all_dim)
        else:
            attention_factor = mscale_of(factor)
    # `or`: Hugging Face also maps 0 to the default.
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1
    truncate = True if rs.get("truncate") is None else rs["truncate"]

    def pair_index(rotations):  # pair index whose wavelength fits `rotations` times into length
        return dim * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)  # dim - 1 (not dim/2 - 1), as in HF
    if low == high:
        high += 0.001  # avoids 0/0, as in HF
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    theta = _default(dim, base)
    # ramp 0 (fast pairs) keeps θ, ramp 1 (slow pairs) interpolates θ/s.
    return theta / factor * ramp + theta * (1.0 - ramp), float(attention_factor)


def _llama3(dim, base, rs, max_position_embeddings) -> np.ndarray:
    factor = _require(rs, "factor", "llama3")
    low_freq_factor = _require(rs, "low_freq_factor", "llama3")
    high_freq_factor = _require(rs, "high_freq_factor", "llama3")
    length = _original_length(rs, "llama3", max_position_embeddings)
    theta = _default(dim, base)
    wavelen = 2 * math.pi / theta
    low_freq_wavelen = length / low_freq_factor
    high_freq_wavelen = length / high_freq_factor
    scaled = np.where(wavelen > low_freq_wavelen, theta / factor, theta)
    smooth = (length / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled)


def _longrope(dim, base, rs, seq_len, max_position_embeddings) -> tuple[Any, float]:
    length = _original_length(rs, "longrope", max_position_embeddings)
    short = np.asarray(_require(rs, "short_factor", "longrope"), np.float64)
    long = np.asarray(_require(rs, "long_factor", "longrope"), np.float64)
    for key, value in (("short_factor", short), ("long_factor", long)):
        if value.shape != (dim // 2,):
            raise ValueError(
                f"rope_scaling.{key} has {value.size} entries; needs rotary_dim/2 = {dim // 2}"
            )
    factor = rs.get("factor")
    if factor is None:  # Phi-3 style configs derive it from the two lengths.
        if max_position_embeddings is None:
            raise ValueError("rope_scaling.factor is required for rope_type='longrope'")
        factor = max_position_embeddings / length
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(length))
        )
    theta = _default(dim, base)
    if isinstance(seq_len, jax.Array):  # traced length: choose inside the computation
        inv = jnp.where(seq_len > length, theta / long, theta / short).astype(jnp.float32)
        return inv, float(attention_factor)
    # Short factors at init (seq_len None) and up to the original length, as in HF.
    ext = long if seq_len and seq_len > length else short
    return theta / ext, float(attention_factor)


def _dynamic(dim, base, rs, seq_len, max_position_embeddings) -> Any:
    factor = _require(rs, "factor", "dynamic")
    # HF reads config.max_position_embeddings here; lcm falls back to the original length.
    length = max_position_embeddings or _original_length(rs, "dynamic", None)
    if isinstance(seq_len, jax.Array):  # traced length (e.g. max position + 1 under jit)
        seq = jnp.maximum(seq_len.astype(jnp.float32), length)
        new_base = base * (factor * seq / length - (factor - 1)) ** (dim / (dim - 2))
        exps = jnp.asarray(_exponents(dim), jnp.float32)
        return (1.0 / new_base**exps).astype(jnp.float32)
    seq = length if seq_len is None else max(seq_len, length)
    new_base = base * (factor * seq / length - (factor - 1)) ** (dim / (dim - 2))
    return _default(dim, new_base)


def _round_wavelengths(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wavelengths = np.round(2 * math.pi / theta)
    return 2 * math.pi / wavelengths, wavelengths.astype(np.int32)


def rope_frequencies(
    head_dim: int,
    base: float,
    rope_scaling: Mapping[str, Any] | None = None,
    *,
    seq_len: int | jax.Array | None = None,
    partial_rotary_factor: float = 1.0,
    max_position_embeddings: int | None = None,
) -> RopeFrequencies:
    """Inverse frequencies and attention factor of a RoPE variant (Hugging Face semantics).

    Args:
      head_dim: per-head width H.
      base: RoPE base (``rope_theta``).
      rope_scaling: Hugging Face style mapping with ``rope_type`` (legacy ``type`` accepted) and
        the keys of that type; keys holding None take the Hugging Face default. None means
        ``default``.
      seq_len: current sequence length (``max(position) + 1``); only ``dynamic`` and
        ``longrope`` read it. A traced jax scalar gives traced frequencies.
      partial_rotary_factor: fraction of H that rotates; ``rotary_dim = int(H * factor)``.
      max_position_embeddings: the Hugging Face config field, for the fallbacks above.

    Returns:
      ``RopeFrequencies`` with float32 ``inv_freq`` of length ``rotary_dim / 2``.

    Raises:
      ValueError: unknown rope_type or key, missing required key, odd rotary dim, wrong
        LongRoPE factor length.
    """
    dim = int(head_dim * partial_rotary_factor)
    if dim <= 0 or dim % 2:
        raise ValueError(
            f"rotary dim int(head_dim * partial_rotary_factor) = {dim} must be even and > 0"
        )
    if not base > 0:
        raise ValueError(f"base = {base}: must be > 0")
    rs = {k: v for k, v in dict(rope_scaling or {}).items() if v is not None}
    rope_type = rs.pop("rope_type", rs.pop("type", "default"))
    rs.pop("type", None)
    if rope_type not in SCALING_KEYS:
        raise ValueError(
            f"rope_scaling.rope_type = {rope_type!r}; allowed: {', '.join(ROPE_TYPES)}"
        )
    unknown = sorted(set(rs) - set(SCALING_KEYS[rope_type]))
    if unknown:
        allowed = ", ".join(SCALING_KEYS[rope_type]) or "none"
        raise ValueError(
            f"rope_scaling keys {unknown} are not used by rope_type={rope_type!r}; "
            f"allowed: {allowed}"
        )

    attention_factor, wavelengths = 1.0, None
    if rope_type == "default":
        inv = _default(dim, base)
    elif rope_type == "linear":
        inv = _default(dim, base) / _require(rs, "factor", rope_type)
    elif rope_type == "ntk":
        factor = _require(rs, "factor", rope_type)
        inv = _default(dim, base * factor ** (dim / (dim - 2)))
    elif rope_type == "dynamic":
        inv = _dynamic(dim, base, rs, seq_len, max_position_embeddings)
    elif rope_type in ("yarn", "resonance_yarn"):
        inv, attention_factor = _yarn(dim, base, rs, max_position_embeddings)
    elif rope_type == "llama3":
        inv = _llama3(dim, base, rs, max_position_embeddings)
    elif rope_type == "longrope":
        inv, attention_factor = _longrope(dim, base, rs, seq_len, max_position_embeddings)
    else:  # resonance
        inv = _default(dim, base)
    if rope_type.startswith("resonance"):
        inv, wavelengths = _round_wavelengths(inv)
    if isinstance(inv, np.ndarray):
        inv = inv.astype(np.float32)
    return RopeFrequencies(inv, float(attention_factor), wavelengths)
