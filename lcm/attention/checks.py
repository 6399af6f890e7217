"""``config.model.attention`` checks: implementation names, tiles, context-parallel and sparse
options.

``check_config`` checks the block's values, then asks the configured implementation
(``ATTENTION.build``) for its own option rules, block multiples and tiles; ``check_mesh`` its
sequence split against the mesh axis sizes; ``tile_blocks`` tells other packages' checks which
lengths its tiles must divide. Whether an implementation can serve each layer's positional
scheme is ``lcm.model.spec.build_spec``'s check.
"""

from __future__ import annotations

import math

from lcm import checks
from lcm.attention import context, core, layouts
from lcm.attention import sparse as sparse_lib
from lcm.parallel import mesh as mesh_lib

A = "model.attention."


def configured(config) -> core.Implementation | None:
    """The configured implementation, or None when ``config.model.attention`` does not build
    (``check_config`` reports why)."""
    try:
        return core.ATTENTION.build(config.model.attention)
    except (KeyError, TypeError, ValueError):
        return None


def tile_blocks(config) -> dict[str, int]:
    """``{config key: block}`` of the configured implementation's tiles (every length it sees
    must be a multiple of each), ``{}`` for one that does not tile."""
    impl = configured(config)
    if impl is None:
        return {}
    blocks = {impl.config_key(option): block for option, block in impl.tiles}
    return {key: block for key, block in blocks.items() if checks.is_positive_int(block)}


def tile_message(config, key: str, block: int) -> str:
    """Why a length fails ``tile_blocks``: names the block and the implementation."""
    return (
        f"must be a multiple of model.attention.{key} = {block} "
        f"for model.attention.impl = {config.model.attention.impl!r}"
    )


def check_config(e: checks.Errors) -> None:
    before = len(e.lines)
    e.one_of(A + "impl", core.ATTENTION.names())
    e.one_of(A + "context_axis", mesh_lib.MESH_AXES)
    e.one_of(A + "context_layout", layouts.LAYOUTS)
    e.one_of(A + "context_inner", tuple(context.INNER))
    e.positive_int(A + "ulysses_degree")
    e.positive_int(A + "block_q", A + "block_kv")
    e.positive_int(A + "sparse_block", A + "sparse_top_k", A + "recent")
    e.non_negative_int(A + "sink")
    e.one_of(A + "hsa_weighting", sparse_lib.hsa.WEIGHTINGS)
    e.non_negative_int(A + "sparse_dense_last")  # its period rule: lcm.model.spec.build_spec
    e.one_of(A + "sparse_dense_impl", tuple(core.ATTENTION.names()))
    e.one_of(A + "sparse_kernel", sparse_lib.kernel_slots.KERNELS)
    e.positive_int(*(A + "nsa_" + key for key in ("cmp_block", "cmp_stride", "slc_block",
                                                  "top_n", "window")))  # fmt: skip
    e.non_negative_int(A + "nsa_init_blocks", A + "nsa_local_blocks")
    stride = e.get(A + "nsa_cmp_stride")
    if checks.is_positive_int(stride):
        for key in ("nsa_cmp_block", "nsa_slc_block"):
            e.check(
                A + key,
                lambda v, stride=stride: v % stride == 0,
                f"must be a multiple of model.attention.nsa_cmp_stride = {stride}",
            )
    if len(e.lines) > before:  # the implementation's own rules assume well-typed options
        return
    impl_name = e.get(A + "impl")
    try:
        impl = core.ATTENTION.build(e.config.model.attention)
    except core.OptionError as err:
        key = dict(core.ATTENTION.get(impl_name).config_keys).get(err.option, err.option)
        e.fail(A + key, f"{err.message} for model.attention.impl = {impl_name!r}")
        return
    seq_len = e.get("seq_len")
    if not checks.is_positive_int(seq_len):
        return
    for option, multiple in impl.block_multiples:
        key, block = impl.config_key(option), impl.option(option)
        if block % multiple and block < seq_len:
            e.fail(
                A + key,
                f"must be a multiple of {multiple} (or >= seq_len) for the Pallas kernel of "
                f"model.attention.impl = {impl_name!r}",
            )
    for key, block in tile_blocks(e.config).items():
        if seq_len % block:
            e.fail("seq_len", tile_message(e.config, key, block))


def check_mesh(e: checks.Errors, sizes: dict[str, int]) -> None:
    """The sequence (and, for Ulysses, head) split of an implementation that shards the
    sequence over a mesh axis."""
    seq_len = e.get("seq_len")
    impl = configured(e.config)
    if impl is None or impl.mesh_axis is None or not checks.is_positive_int(seq_len):
        return
    axis, layout, n = impl.mesh_axis, impl.layout, sizes[impl.mesh_axis]
    degree = impl.heads_split or n
    if n % degree:
        e.fail(A + "ulysses_degree", f"must divide the mesh axis {axis!r} size {n}")
        return
    if degree > 1:
        heads = e.get("model.num_heads") // sizes["tensor"]
        if heads % degree:
            e.fail(
                "model.num_heads",
                f"{heads} heads per device (over mesh axis 'tensor' = {sizes['tensor']}) must "
                f"be a multiple of the Ulysses degree {degree} of model.attention.impl = "
                f"{impl.name!r}",
            )
    chunks = math.lcm(n, layouts.layout_chunks(layout, impl.layout_shards(n)))
    if seq_len % chunks:
        e.fail(
            "seq_len",
            f"must be a multiple of {chunks} for the {layout!r} {impl.name} layout over mesh "
            f"axis {axis!r} of size {n}",
        )
