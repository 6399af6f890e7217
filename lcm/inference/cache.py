"""The KV cache tree of a whole model: one layer cache per attention module.

The layer layout and attention over it are ``lcm.model.kv_cache``'s (the model's decoding
path); this module builds the tree that mirrors the model's parameters and walks it.
"""

from __future__ import annotations

import jax

from lcm.model.kv_cache import init_layer


def init_cache(params, spec, *, batch: int, capacity: int, score: bool = False) -> dict:
    """An empty cache for every attention module in ``params`` (a dict holding ``wq``)."""

    def build(tree):
        if "wq" in tree:
            return init_layer(
                batch, capacity, spec.num_kv_heads, spec.head_dim, spec.dtype, score=score
            )
        return {name: build(sub) for name, sub in tree.items() if isinstance(sub, dict)}

    return _prune(build(params))


def _prune(tree):
    """Drops sub-dicts that hold no layer cache (MLP, norms)."""
    if "k" in tree:
        return tree
    pruned = {name: _prune(sub) for name, sub in tree.items()}
    return {name: sub for name, sub in pruned.items() if sub}


def layers(tree, prefix: tuple = ()):
    """``(path, layer cache)`` for every layer of a cache tree, in a fixed order."""
    if "k" in tree:
        yield prefix, tree
        return
    for name in sorted(tree):
        yield from layers(tree[name], (*prefix, name))


def num_bytes(cache) -> int:
    """Bytes held by the cache's arrays."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
