"""KV-cache eviction policies under a fixed token budget, registered by name in ``POLICIES``.

After every forward step (a prefill chunk or one decoded token) the cache holds at most
``budget`` tokens: the policy scores the held tokens, tokens it must keep get ``+inf``, and the
``budget`` best stay (``evict``). Selection is per layer and shared by all heads (``attend``
takes one key position per slot for every head); per-head statistics are summed over heads.
Papers that select per head (H2O, SnapKV, CAOTE) therefore run here in their layer-shared form.

- ``streaming_llm`` (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
  Sinks", arXiv:2309.17453): the first ``sink`` tokens plus the most recent ``budget - sink``.
  Kept tokens keep their original positions (the paper re-assigns positions inside the cache;
  not done here).
- ``h2o`` (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle", arXiv:2306.14048): the ``recent``
  most recent tokens plus the ``budget - recent`` heavy hitters, the tokens with the largest
  attention accumulated over every query since they entered the cache.
- ``snapkv`` (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation",
  arXiv:2404.14469): the last ``window`` tokens are the observation window and stay; the
  others are ranked by the attention the window's queries give them (votes), max-pooled over
  ``kernel`` neighbouring slots (the paper's Listing 1). The votes are recomputed at every
  step from that step's last ``window`` queries: at the end of a prompt prefilled in one chunk
  this is SnapKV exactly; a decode step has one query, so decoding evicts by its attention.
- ``caote`` (Goel et al. 2025, "CAOTE: KV Caching through Attention Output Error based Token
  Eviction", arXiv:2504.14051): a meta-policy over a score-based ``base`` (``h2o`` or
  ``snapkv``). With the base's scores normalised to weights ``α`` per kv head and the output
  ``X = Σ_j α_j v_j``, evicting token j alone changes the output to ``(X − α_j v_j)/(1 − α_j)``,
  an error of ``e_j = α_j / (1 − α_j) · ‖X − v_j‖₂``; tokens with the smallest error (summed
  over kv heads) go first. The base's forced tokens (recent window) stay.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcm.registry import Registry

POLICIES = Registry("cache policy")
CAOTE_BASES = ("h2o", "snapkv")  # the score-based policies CAOTE can re-rank


def _recent(layer, count: int) -> jax.Array:
    """``[B, C]`` True for the ``count`` most recent held tokens."""
    held = layer["seg"] != 0
    newest = jnp.max(jnp.where(held, layer["pos"], -1), axis=1, keepdims=True)
    return held & (layer["pos"] > newest - count)


def _query_rows(q_pos, q_seg, count: int) -> jax.Array:
    """``[B, T]`` True for the last ``count`` real queries of a step."""
    real = q_seg != 0
    newest = jnp.max(jnp.where(real, q_pos, -1), axis=1, keepdims=True)
    return real & (q_pos > newest - count)


def _per_kv_head(weights, kv_heads: int, rows) -> jax.Array:
    """Attention received ``[B, K, C]``: weights ``[B, N, T, C]`` summed over rows and groups."""
    b, n, _, c = weights.shape
    # C = cache slots, as in lcm.inference.cache.
    summed = jnp.einsum("BNTC,BT->BNC", weights, rows.astype(weights.dtype))
    return summed.reshape(b, kv_heads, n // kv_heads, c).sum(2)


def _check(name: str, budget: int, forced: int, what: str) -> None:
    if budget < forced or budget < 1:
        raise ValueError(f"budget = {budget}: {name} needs budget >= {what} = {forced} (and >= 1)")


@POLICIES.register("streaming_llm")
@dataclasses.dataclass(frozen=True)
class StreamingLLM:
    """Attention sinks plus a recent window."""

    sink: int = 4

    needs_scores = False

    def check(self, budget: int) -> None:
        _check("streaming_llm", budget, self.sink + 1, "sink + 1")

    def observe(self, layer, weights, out, q_pos, q_seg):
        del weights, out, q_pos, q_seg
        return layer

    def priority(self, layer) -> jax.Array:
        """Sinks first, then newer before older."""
        pos = layer["pos"].astype(jnp.float32)
        return jnp.where(layer["pos"] < self.sink, jnp.inf, pos)


@POLICIES.register("h2o")
@dataclasses.dataclass(frozen=True)
class H2O:
    """Heavy hitters by accumulated attention plus a recent window."""

    recent: int = 32

    needs_scores = True

    def check(self, budget: int) -> None:
        _check("h2o", budget, self.recent, "recent")

    def observe(self, layer, weights, out, q_pos, q_seg):
        del out, q_pos
        received = _per_kv_head(weights, layer["k"].shape[2], q_seg != 0)
        return {**layer, "score": layer["score"] + received}

    def forced(self, layer) -> jax.Array:
        return _recent(layer, self.recent)

    def priority(self, layer) -> jax.Array:
        return jnp.where(self.forced(layer), jnp.inf, layer["score"].sum(1))


@POLICIES.register("snapkv")
@dataclasses.dataclass(frozen=True)
class SnapKV:
    """Observation-window votes, max-pooled, plus the window itself."""

    window: int = 32
    kernel: int = 7

    needs_scores = True

    def check(self, budget: int) -> None:
        _check("snapkv", budget, self.window, "window")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"snapkv kernel = {self.kernel}: must be an odd integer >= 1")

    def observe(self, layer, weights, out, q_pos, q_seg):
        del out
        rows = _query_rows(q_pos, q_seg, self.window)
        votes = _per_kv_head(weights, layer["k"].shape[2], rows)
        pooled = jax.lax.reduce_window(
            votes, -jnp.inf, jax.lax.max, (1, 1, self.kernel), (1, 1, 1), "SAME"
        )
        return {**layer, "score": pooled}

    def forced(self, layer) -> jax.Array:
        return _recent(layer, self.window)

    def priority(self, layer) -> jax.Array:
        return jnp.where(self.forced(layer), jnp.inf, layer["score"].sum(1))


@POLICIES.register("caote")
@dataclasses.dataclass(frozen=True)
class CAOTE:
    """Attention-output error of evicting each token, on a score-based base policy."""

    base: H2O | SnapKV = H2O()

    needs_scores = True

    def check(self, budget: int) -> None:
        if not isinstance(self.base, H2O | SnapKV):
            raise ValueError(f"caote base = {self.base!r}: allowed: h2o, snapkv")
        self.base.check(budget)

    def observe(self, layer, weights, out, q_pos, q_seg):
        return self.base.observe(layer, weights, out, q_pos, q_seg)

    def priority(self, layer) -> jax.Array:
        return jnp.where(self.base.forced(layer), jnp.inf, output_error(layer))


def output_error(layer) -> jax.Array:
    """CAOTE's ``Σ_K α_j / (1 − α_j) · ‖X − v_j‖`` per slot ``[B, C]`` from ``layer["score"]``."""
    held = (layer["seg"] != 0)[:, None]  # [B, 1, C]
    score = jnp.where(held, jnp.maximum(layer["score"], 0.0), 0.0)  # [B, K, C]
    total = score.sum(-1, keepdims=True)
    alpha = score / jnp.where(total > 0, total, 1.0)
    v = layer["v"].astype(jnp.float32)  # [B, C, K, H]
    x = jnp.einsum("BKC,BCKH->BKH", alpha, v, precision=jax.lax.Precision.HIGHEST)
    distance = jnp.linalg.norm(x[:, None] - v, axis=-1).transpose(0, 2, 1)  # [B, K, C]
    error = alpha / jnp.maximum(1.0 - alpha, 1e-6) * distance
    return error.sum(1)


def evict(layer, policy, budget: int):
    """Keeps the ``budget`` highest-priority held tokens of a layer cache, oldest first."""
    capacity = layer["seg"].shape[1]
    held = layer["seg"] != 0
    priority = jnp.where(held, policy.priority(layer), -jnp.inf)
    # Held tokens beat empty slots; ties keep the lower slot (older token).
    _, chosen = jax.lax.top_k(priority, budget)
    chosen = jnp.sort(chosen, axis=1)  # slot order = position order, empty slots last

    def gather(x, axis):
        index = chosen.reshape(chosen.shape + (1,) * (x.ndim - 2))
        if axis == 2:  # score [B, K, C]
            index = chosen[:, None, :]
        kept = jnp.take_along_axis(x, index, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, capacity - budget)
        return jnp.pad(kept, pad)

    out = {name: gather(layer[name], 1) for name in ("k", "v", "pos", "seg")}
    if "score" in layer:
        out["score"] = gather(layer["score"], 2)
    out["length"] = jnp.minimum(layer["length"], budget)
    return out


def make_policy(name: str, *, budget: int, caote_base: str = "h2o", **options):
    """Builds policy ``name`` and checks it against ``budget``.

    Args:
      name: a ``POLICIES`` name.
      budget: tokens the cache keeps.
      caote_base: the score-based policy ``caote`` re-ranks (``h2o`` or ``snapkv``).
      **options: policy fields (``sink``, ``recent``, ``window``, ``kernel``); each policy
        takes the ones it has.

    Raises:
      ValueError: naming the argument and its allowed values.
    """
    if name not in POLICIES:
        raise ValueError(f"cache_policy = {name!r}; allowed: {', '.join(POLICIES.names())}")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"budget = {budget!r}: must be an integer >= 1")
    if name == "caote":
        if caote_base not in CAOTE_BASES:
            raise ValueError(f"caote_base = {caote_base!r}; allowed: {', '.join(CAOTE_BASES)}")
        policy = CAOTE(base=_build(caote_base, options))
    else:
        policy = _build(name, options)
    policy.check(budget)
    return policy


def _build(name: str, options: dict):
    cls = POLICIES.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in options.items() if key in fields})
