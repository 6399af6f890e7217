"""``config.mesh`` checks, and what the mesh asks of the batch, sequence and heads it shards."""

from __future__ import annotations

from lcm import checks
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding


def check_config(e: checks.Errors, num_devices: int | None) -> dict[str, int] | None:
    """Checks the mesh; with ``num_devices`` also the batch, lengths and heads it shards.

    Returns:
      the mesh axis sizes (``{"data": .., "fsdp": .., ...}``) for ``num_devices`` devices, or
      None without ``num_devices`` or with a bad mesh.
    """
    try:
        mesh_lib.check_axes(e.get("mesh.axes"), e.get("mesh.shape"), e.get("mesh.axis_types"))
        sharding.validate_rules(e.get("mesh.rules"), e.get("mesh.axes"))
        if num_devices is None:
            return None
        shape = mesh_lib.resolve_shape(e.get("mesh.shape"), num_devices)
    except ValueError as err:
        e.add(f"config.{err}")
        return None
    sizes = dict(zip(e.get("mesh.axes"), shape, strict=True))
    batch_shards = sizes["data"] * sizes["fsdp"]
    batch, accum = e.get("data.batch_size"), e.get("train.grad_accum_steps")
    if checks.is_positive_int(batch) and batch % batch_shards:
        e.fail("data.batch_size", f"must be a multiple of mesh data*fsdp = {batch_shards}")
    elif (
        checks.is_positive_int(batch)
        and checks.is_positive_int(accum)
        and (batch // accum) % batch_shards
    ):
        e.fail(
            "data.batch_size",
            f"must be a multiple of train.grad_accum_steps x mesh data*fsdp = "
            f"{accum} x {batch_shards}: every micro-batch is sharded like the batch",
        )
    context = sizes["context"]
    if checks.is_positive_int(e.get("seq_len")) and e.get("seq_len") % context:
        e.fail("seq_len", f"must be a multiple of the mesh context size {context}")
    stages = e.get("data.curriculum")
    lengths = [s[0] for s in stages if isinstance(s, tuple | list) and len(s) == 2]
    if any(checks.is_positive_int(x) and x % context for x in lengths):
        e.fail("data.curriculum", f"lengths must be multiples of the mesh context size {context}")
    kv_heads = e.get("model.num_kv_heads")
    if checks.is_positive_int(kv_heads) and kv_heads % sizes["tensor"]:
        e.fail(
            "model.num_kv_heads", f"must be a multiple of the mesh tensor size {sizes['tensor']}"
        )
    return sizes
