"""The output head and the token loss computed from it without the full ``[B,T,V]`` logits.

``logits(spec, params, x)`` is the one definition of the output projection: final hidden states
``x [B,T,D]`` (after the final norm; ``Transformer.hidden``) to float32 logits ``[B,T,V]`` through
the tied embedding ``embed/embedding [V,D]`` (divided by ``sqrt(D)`` with ``scale_tied_logits``)
or the untied ``unembed [D,V]``, then times ``logit_scale``. ``Transformer.__call__`` uses it for
full logits; ``chunked_cross_entropy`` applies it to one chunk of tokens at a time.

``chunked_cross_entropy`` is ``cross_entropy(logits(spec, params, x), ...)`` computed as a
``lax.scan`` over chunks whose body is rematerialized (``jax.checkpoint``): the forward keeps
only the running sums and the backward recomputes each chunk's logits, so peak memory is
``O(B x chunk x V)`` instead of ``O(B x T x V)``. Under a mesh it runs per chip
(``jax.shard_map``): each chip scans its own tokens (its ``batch`` and ``length`` shards) against
the output table gathered once per step (vocabulary rows stay sharded over the ``vocab`` axes,
with a vocabulary-parallel log-softmax, Megatron-LM: Shoeybi et al. 2019), and the three sums
are added over chips once. The table's gradient is therefore summed over chips once per step,
not once per chunk, which a scan left to the SPMD partitioner does (it cannot carry a partial
sum across iterations).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lcm.parallel import sharding


def _project(spec, table, x: jax.Array) -> jax.Array:
    """Float32 logits of ``x [B,T,D]`` through ``table`` (``[V,D]`` tied, ``[D,V]`` untied)."""
    x32, table = x.astype(jnp.float32), table.astype(jnp.float32)
    if spec.tie_embeddings:
        out = jnp.einsum("BTD,VD->BTV", x32, table)
        if spec.scale_tied_logits:
            # Scaled by 1/sqrt(D) so unit-variance embeddings give O(1) logits.
            out = out / jnp.sqrt(jnp.float32(spec.d_model))
    else:
        out = jnp.einsum("BTD,DV->BTV", x32, table)
    if spec.logit_scale != 1.0:  # Cohere's fixed output temperature
        out = out * jnp.float32(spec.logit_scale)
    return out


def _table(spec, params) -> jax.Array:
    return params["embed"]["embedding"] if spec.tie_embeddings else params["unembed"]


def logits(spec, params, x: jax.Array) -> jax.Array:
    """Float32 logits ``[B,T,V]`` of final hidden states ``x [B,T,D]`` (any chunk of ``T``).

    ``params`` is the model's parameter tree (only ``embed/embedding`` or ``unembed`` is read).
    """
    return sharding.constrain(_project(spec, _table(spec, params), x), ("batch", "length", "vocab"))


def cross_entropy(logits, targets, loss_mask, z_loss: float = 0.0):
    """Summed masked token loss, summed z-loss term and token count (all float32 scalars)."""
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (log_z - target_logit) * mask
    z_term = z_loss * jnp.square(log_z) * mask
    return jnp.sum(nll), jnp.sum(z_term), jnp.sum(mask)


def _vocab_parallel_cross_entropy(logits, targets, loss_mask, z_loss, vocab_axes):
    """``cross_entropy`` of logits whose last dim is this chip's slice of the vocabulary.

    Call inside ``shard_map``; the slices of the ``vocab_axes`` chips make the full vocabulary.
    """
    v = logits.shape[-1]
    start = jax.lax.axis_index(vocab_axes) * v
    # Any shift gives the same logsumexp and gradient; the global max keeps exp() in range.
    shift = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=-1)), vocab_axes)
    log_z = shift + jnp.log(
        jax.lax.psum(jnp.sum(jnp.exp(logits - shift[..., None]), -1), vocab_axes)
    )
    local = targets - start
    here = (local >= 0) & (local < v)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, v - 1)[..., None], axis=-1)[..., 0]
    target_logit = jax.lax.psum(jnp.where(here, picked, 0.0), vocab_axes)
    mask = loss_mask.astype(jnp.float32)
    nll = (log_z - target_logit) * mask
    z_term = z_loss * jnp.square(log_z) * mask
    return jnp.sum(nll), jnp.sum(z_term), jnp.sum(mask)


def _scan_chunks(spec, table, x, targets, loss_mask, *, z_loss, chunk, vocab_axes=(), per_chip=()):
    """The summed loss of ``x``'s positions, ``chunk`` at a time (on one chip or none).

    Inside ``shard_map``, ``per_chip`` are the manual axes the tokens vary over.
    """
    b, t, d = x.shape
    n = -(-t // chunk)  # number of chunks
    c = -(-t // n)  # positions per chunk (<= chunk, padding < n)
    pad = n * c - t
    if pad:  # the padded positions have loss_mask 0
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))
    # [B, n*c] -> [n, B, c]: chunk i is positions i*c .. (i+1)*c - 1.
    xs = (
        jnp.moveaxis(x.reshape(b, n, c, d), 1, 0),
        jnp.moveaxis(targets.reshape(b, n, c), 1, 0),
        jnp.moveaxis(loss_mask.reshape(b, n, c), 1, 0),
    )

    # The backward recomputes the chunk's logits instead of storing them.
    @functools.partial(jax.checkpoint, prevent_cse=False)  # no CSE across scan steps to fear
    def body(carry, chunk_xs):
        xc, tc, mc = chunk_xs
        out = _project(spec, table, xc)
        if vocab_axes:
            sums = _vocab_parallel_cross_entropy(out, tc, mc, z_loss, vocab_axes)
        else:
            sums = cross_entropy(out, tc, mc, z_loss)
        return jax.tree.map(jnp.add, carry, sums), None

    zero = jax.lax.pcast(jnp.zeros((), jnp.float32), per_chip, to="varying")
    sums, _ = jax.lax.scan(body, (zero, zero, zero), xs)
    return sums


def _usable_axes(logical: str, size: int, mesh) -> tuple[str, ...]:
    """The mesh axes (of size > 1) of ``logical`` when they divide ``size``, none manual."""
    axes = tuple(a for a in sharding.mesh_axes(logical) if mesh.shape[a] > 1)
    if any(a in mesh.manual_axes for a in axes):
        return ()
    return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else ()


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
      chunk: at most this many positions per chunk and chip (``config.model.loss_chunk``); 0,
        or ``chunk >= T``, = one dense pass over the full logits.

    Returns:
      ``(nll_sum, z_sum, tokens)`` float32 scalars, equal to the dense ones up to summation order.
    """
    b, t, _ = x.shape
    if chunk == 0 or t <= chunk:  # one chunk: nothing to save by recomputing its logits
        return cross_entropy(logits(spec, params, x), targets, loss_mask, z_loss)
    table = _table(spec, params)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _scan_chunks(spec, table, x, targets, loss_mask, z_loss=z_loss, chunk=chunk)
    batch, length = _usable_axes("batch", b, mesh), _usable_axes("length", t, mesh)
    vocab = _usable_axes("vocab", table.shape[0 if spec.tie_embeddings else 1], mesh)
    if not (batch or length or vocab):
        return _scan_chunks(spec, table, x, targets, loss_mask, z_loss=z_loss, chunk=chunk)
    tokens = (batch or None, length or None)
    table_spec = P(vocab or None, None) if spec.tie_embeddings else P(None, vocab or None)

    def per_chip(table, x, targets, loss_mask):
        # Varying over the token axes here, once, so the gradient sums over chips once.
        table = jax.lax.pcast(table, batch + length, to="varying")
        sums = _scan_chunks(
            spec,
            table,
            x,
            targets,
            loss_mask,
            z_loss=z_loss,
            chunk=chunk,
            vocab_axes=vocab,
            per_chip=batch + length,
        )
        return jax.lax.psum(sums, batch + length)

    return jax.shard_map(
        per_chip,
        mesh=mesh,
        in_specs=(table_spec, P(*tokens, None), P(*tokens), P(*tokens)),
        out_specs=(P(), P(), P()),
        axis_names=set(batch + length + vocab),
    )(table, x, targets, loss_mask)


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
