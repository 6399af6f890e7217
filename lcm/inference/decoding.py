"""Generation with a KV cache: chunked prefill, a jitted decode step, sampling, eviction.

``generate(params, config, prompt_tokens, *, max_new_tokens)`` runs the prompt through the
model ``config.inference.prefill_chunk`` tokens at a time (the last chunk padded with segment
0), then decodes one token per jitted step. Attention goes through ``lcm.attention.attend``
with ``config.inference.attention_impl`` (``reference`` or ``xla``; ``xla`` cannot run logits
hooks, so ALiBi, TAPA, SelfExtend and LM-Infinite need ``reference``), whatever implementation
the model was trained with: decoding is dense over the cache, with each layer's mask (causal,
sliding window, sinks). A model trained with a sparse impl (``moba``, ``hsa``, ``s2_attn``,
``sink_window``) is therefore decoded with dense attention, and ``nsa`` (parameters of its
own) is refused. The model runs unscanned
(``nn.scan`` stacked parameters are split per layer) so each layer owns its cache entry.

With a ``cache_policy`` the cache holds ``budget + prefill_chunk`` slots and, after every
step, at most ``budget`` tokens (``lcm.inference.policies``); without one it holds the whole
prompt (rounded up to a chunk) plus ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lcm.attention import ATTENTION
from lcm.inference import cache as cache_lib
from lcm.inference import policies as policies_lib
from lcm.inference import sampling
from lcm.model import spec as spec_lib
from lcm.model import transformer as transformer_lib

# Implementations that attend new queries over a KV cache (``Capabilities.decode``).
DECODE_IMPLS = tuple(n for n in ATTENTION.names() if ATTENTION.get(n).capabilities.decode)
SCANNED_STACKS = ("layers", "dense_layers")  # lcm.model.transformer's nn.scan names


def decode_spec(config) -> spec_lib.ModelSpec:
    """The model spec for decoding: ``config.inference.attention_impl`` over each layer's KV
    cache, no scan, no remat.

    Raises:
      ValueError: for a model whose attention has its own parameters (``nsa``) or an
        implementation that cannot serve a layer's positional scheme.
    """
    impl = config.inference.attention_impl
    if impl not in DECODE_IMPLS:
        raise ValueError(
            f"config.inference.attention_impl = {impl!r}; allowed: {', '.join(DECODE_IMPLS)}"
        )
    trained = spec_lib.build_spec(config)
    if any(plan.attention.capabilities.has_params for plan in trained.layers):
        raise ValueError(
            f"config.model.attention.impl = {config.model.attention.impl!r}: its attention has "
            "parameters of its own, which dense cached decoding cannot use; decoding supports "
            "the other impls"
        )
    spec = spec_lib.build_spec(config, attention_impl=impl)
    return spec.for_decoding(spec.attention)


def unscan_params(params) -> dict:
    """Splits ``nn.scan``-stacked layer parameters into ``<stack>_<r>`` entries."""
    params = nn.unbox(params)
    out = {}
    for name, sub in params.items():
        if name in SCANNED_STACKS:
            repeats = jax.tree.leaves(sub)[0].shape[0]
            for r in range(repeats):
                out[f"{name}_{r}"] = jax.tree.map(lambda x, r=r: x[r], sub)
        else:
            out[name] = sub
    return out


def _observe_and_evict(cache, intermediates, policy, budget, positions, segment_ids):
    if "k" in cache:
        if policy.needs_scores:
            weights, out = intermediates["weights"][0], intermediates["out"][0]
            cache = policy.observe(cache, weights, out, positions, segment_ids)
        return policies_lib.evict(cache, policy, budget)
    return {
        name: _observe_and_evict(
            sub, intermediates.get(name, {}), policy, budget, positions, segment_ids
        )
        for name, sub in cache.items()
    }


@functools.lru_cache(maxsize=16)
def _step_fn(spec, policy, budget):
    """Jitted ``(params, cache, tokens, positions, segment_ids) -> (logits [B,T,V], cache)``."""
    model = transformer_lib.Transformer(spec)

    def step(params, cache, tokens, positions, segment_ids):
        logits, mutated = model.apply(
            {"params": params, "cache": cache},
            tokens,
            positions,
            segment_ids,
            mutable=["cache", "intermediates"],
        )
        cache = mutated["cache"]
        if policy is not None:
            inter = mutated.get("intermediates", {})
            cache = _observe_and_evict(cache, inter, policy, budget, positions, segment_ids)
        return logits, cache

    return jax.jit(step, donate_argnums=1)


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A model prepared for cached decoding (spec, policy, budget, prefill chunk)."""

    spec: spec_lib.ModelSpec
    policy: Any = None  # a lcm.inference.policies policy, or None for the full cache
    budget: int | None = None
    prefill_chunk: int = 256

    def capacity(self, prompt_len: int, max_new_tokens: int) -> int:
        """Cache slots: ``budget + prefill_chunk`` with a policy, else everything."""
        if self.policy is not None:
            return self.budget + self.prefill_chunk
        chunks = -(-prompt_len // self.prefill_chunk)
        return chunks * self.prefill_chunk + max_new_tokens

    def new_cache(self, params, *, batch: int, prompt_len: int, max_new_tokens: int) -> dict:
        scores = self.policy is not None and self.policy.needs_scores
        capacity = self.capacity(prompt_len, max_new_tokens)
        return cache_lib.init_cache(params, self.spec, batch=batch, capacity=capacity, score=scores)

    def step(self, params, cache, tokens, positions, segment_ids):
        """One forward over new tokens ``[B, T]``; returns ``(logits [B,T,V], cache)``."""
        fn = _step_fn(self.spec, self.policy, self.budget)
        return fn(params, cache, tokens, positions, segment_ids)

    def prefill(self, params, cache, prompt) -> tuple[jax.Array, dict]:
        """Runs ``prompt [B, P]`` chunk by chunk; returns ``(logits [B, P, V], cache)``."""
        b, p = prompt.shape
        chunk = self.prefill_chunk
        padded = -(-p // chunk) * chunk
        tokens = np.zeros((b, padded), np.int32)
        tokens[:, :p] = prompt
        positions = np.zeros((b, padded), np.int32)
        positions[:, :p] = np.arange(p)
        segments = np.zeros((b, padded), np.int32)
        segments[:, :p] = 1
        outs = []
        for start in range(0, padded, chunk):
            part = slice(start, start + chunk)
            logits, cache = self.step(
                params, cache, tokens[:, part], positions[:, part], segments[:, part]
            )
            outs.append(logits)
        return jnp.concatenate(outs, axis=1)[:, :p], cache


def make_decoder(config, *, cache_policy: str | None = None, budget: int | None = None):
    """The ``Decoder`` of ``config`` (``config.inference`` fills unset arguments).

    Raises:
      ValueError: unknown policy, budget without a policy or too small for it, bad chunk.
    """
    i = config.inference
    name = i.cache_policy if cache_policy is None else cache_policy
    budget = i.budget if budget is None else budget
    chunk = i.prefill_chunk
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"config.inference.prefill_chunk = {chunk!r}: must be an integer >= 1")
    policy = None
    if name is None:
        if budget is not None:
            raise ValueError(
                f"budget = {budget}: needs a cache_policy; allowed: "
                f"{', '.join(policies_lib.POLICIES.names())}"
            )
    else:
        policy = policies_lib.make_policy(
            name,
            budget=budget,
            sink=i.sink,
            recent=i.recent,
            window=i.snapkv_window,
            kernel=i.snapkv_kernel,
            caote_base=i.caote_base,
        )
    return Decoder(decode_spec(config), policy, budget, chunk)


def generate(
    params,
    config,
    prompt_tokens,
    *,
    max_new_tokens: int,
    cache_policy: str | None = None,
    budget: int | None = None,
    stop_id: int | None = None,
) -> np.ndarray:
    """Continues ``prompt_tokens`` (``[P]`` or ``[B, P]`` int) by up to ``max_new_tokens``.

    Sampling follows ``config.inference`` (``temperature`` 0 = greedy, ``top_p``, ``seed``).
    Decoding stops early once every row has produced ``stop_id`` (kept in the output); a row
    that has stopped is filled with ``stop_id``.

    Args:
      params: model parameters (as trained: scanned layers are split here).
      config: the full config (``model`` and ``inference`` blocks).
      prompt_tokens: the prompt, every row the same length.
      max_new_tokens: tokens to generate (>= 1).
      cache_policy: an eviction policy name (``POLICIES.names()``); None = the config's.
      budget: tokens the cache keeps with a policy; None = the config's.
      stop_id: optional token id that ends a row.

    Returns:
      ``int32 [B, n]`` generated tokens (``[n]`` for a 1-D prompt), ``n <= max_new_tokens``.
    """
    prompt = np.asarray(prompt_tokens, np.int32)
    squeeze = prompt.ndim == 1
    prompt = prompt[None] if squeeze else prompt
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_tokens must be [P] or [B, P] with P >= 1; got {prompt.shape}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens = {max_new_tokens!r}: must be an integer >= 1")
    i = config.inference
    sampling.check(i.temperature, i.top_p)
    decoder = make_decoder(config, cache_policy=cache_policy, budget=budget)
    params = unscan_params(params)
    b, p = prompt.shape
    cache = decoder.new_cache(params, batch=b, prompt_len=p, max_new_tokens=max_new_tokens)
    logits, cache = decoder.prefill(params, cache, prompt)
    last = logits[:, -1]
    key = jax.random.key(i.seed)
    ones = np.ones((b, 1), np.int32)
    out, done = [], np.zeros(b, bool)
    for t in range(max_new_tokens):
        key, sub = jax.random.split(key)
        token = np.asarray(sampling.sample(last, sub, temperature=i.temperature, top_p=i.top_p))
        if stop_id is not None:
            token = np.where(done, stop_id, token)
            done |= token == stop_id
        out.append(token)
        if done.all() or t == max_new_tokens - 1:
            break
        logits, cache = decoder.step(params, cache, token[:, None], ones * (p + t), ones)
        last = logits[:, 0]
    tokens = np.stack(out, axis=1).astype(np.int32)
    return tokens[0] if squeeze else tokens
