"""The output head and the token loss computed from it without the full ``[B,T,V]`` logits.

``logits(spec, params, x)`` is the one definition of the output projection: final hidden states
``x [B,T,D]`` (after the final norm; ``Transformer.hidden``) to float32 logits ``[B,T,V]`` through
the tied embedding ``embed/embedding [V,D]`` (divided by ``sqrt(D)`` with ``scale_tied_logits``)
or the untied ``unembed [D,V]``, then times ``logit_scale``. ``Transformer.__call__`` uses it for
full logits; ``chunked_cross_entropy`` applies it to one chunk of tokens at a time.

``chunked_cross_entropy`` is ``cross_entropy(logits(spec, params, x), ...)`` computed as a
``lax.scan`` over ``ceil(T / chunk)`` chunks whose body is rematerialized (``jax.checkpoint``):
the forward keeps only the running sums and the backward recomputes each chunk's logits, so peak
memory is ``O(B x chunk x V)`` instead of ``O(B x T x V)`` for the logits and their gradient.
Chunk ``i`` holds positions ``i, i + n, i + 2n, ...`` (``n`` chunks): the loss is a sum over
tokens, so any partition gives the same value, and this one spreads every chunk evenly over the
``length`` shards under context parallelism, so no chunk moves between devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lcm.parallel import sharding


def logits(spec, params, x: jax.Array) -> jax.Array:
    """Float32 logits ``[B,T,V]`` of final hidden states ``x [B,T,D]`` (any chunk of ``T``).

    ``params`` is the model's parameter tree (only ``embed/embedding`` or ``unembed`` is read).
    """
    x32 = x.astype(jnp.float32)
    if spec.tie_embeddings:
        table = params["embed"]["embedding"].astype(jnp.float32)
        out = jnp.einsum("BTD,VD->BTV", x32, table)
        if spec.scale_tied_logits:
            # Scaled by 1/sqrt(D) so unit-variance embeddings give O(1) logits.
            out = out / jnp.sqrt(jnp.float32(spec.d_model))
    else:
        out = jnp.einsum("BTD,DV->BTV", x32, params["unembed"].astype(jnp.float32))
    if spec.logit_scale != 1.0:  # Cohere's fixed output temperature
        out = out * jnp.float32(spec.logit_scale)
    return sharding.constrain(out, ("batch", "length", "vocab"))


def cross_entropy(logits, targets, loss_mask, z_loss: float = 0.0):
    """Summed masked token loss, summed z-loss term and token count (all float32 scalars)."""
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (log_z - target_logit) * mask
    z_term = z_loss * jnp.square(log_z) * mask
    return jnp.sum(nll), jnp.sum(z_term), jnp.sum(mask)


def chunked_cross_entropy(
    spec, params, x, targets, loss_mask, *, z_loss: float = 0.0, chunk: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``cross_entropy(logits(spec, params, x), targets, loss_mask, z_loss)`` in chunks.

    Args:
      spec: the ``ModelSpec`` (output-head fields).
      params: the model's parameter tree.
      x: final hidden states ``[B,T,D]``.
      targets, loss_mask: ``[B,T]``.
      z_loss: weight of the ``logsumexp^2`` term.
      chunk: at most this many positions per chunk (``config.model.loss_chunk``); 0, or
        ``chunk >= T``, = one dense pass over the full logits.

    Returns:
      ``(nll_sum, z_sum, tokens)`` float32 scalars, equal to the dense ones up to summation order.
    """
    b, t, d = x.shape
    if chunk == 0 or t <= chunk:  # one chunk: nothing to save by recomputing its logits
        return cross_entropy(logits(spec, params, x), targets, loss_mask, z_loss)
    n = -(-t // chunk)  # number of chunks
    c = -(-t // n)  # positions per chunk (<= chunk, padding < n)
    pad = n * c - t
    if pad:  # the padded positions have loss_mask 0
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))
    # [B, c*n] -> [n, B, c]: chunk i is positions i, i + n, ... (module docstring).
    xs = (
        jnp.moveaxis(x.reshape(b, c, n, d), 2, 0),
        jnp.moveaxis(targets.reshape(b, c, n), 2, 0),
        jnp.moveaxis(loss_mask.reshape(b, c, n), 2, 0),
    )

    # The backward recomputes the chunk's logits instead of storing them.
    @functools.partial(jax.checkpoint, prevent_cse=False)  # no CSE across scan steps to fear
    def body(carry, chunk_xs):
        xc, tc, mc = chunk_xs
        sums = cross_entropy(logits(spec, params, xc), tc, mc, z_loss)
        return jax.tree.map(jnp.add, carry, sums), None

    zero = jnp.float32(0)
    sums, _ = jax.lax.scan(body, (zero, zero, zero), xs)
    return sums


def model_cross_entropy(
    model, params, inputs, positions, segment_ids, targets, loss_mask, *, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(nll_sum, z_sum, tokens)`` of a forward pass, in ``model.spec.loss_chunk`` chunks.

    ``model`` is a ``Transformer``; one without a ``spec`` (a stand-in with only ``apply``
    returning logits, as in tests) or with ``loss_chunk = 0`` goes through full logits.
    """
    variables = {"params": params}
    spec = getattr(model, "spec", None)
    if spec is None or not spec.loss_chunk:
        out = model.apply(variables, inputs, positions, segment_ids)
        return cross_entropy(out, targets, loss_mask, z_loss)
    x = model.apply(variables, inputs, positions, segment_ids, method="hidden")
    return chunked_cross_entropy(
        spec, params, x, targets, loss_mask, z_loss=z_loss, chunk=spec.loss_chunk
    )
