"""``config.model.positional`` checks, and the layer schedule's masks in ``config.model.attention``.

Scheme names come from the ``POSITIONAL`` registry, rope_scaling names and keys from
``rope_scaling``, schedules and masks from ``schedule``.
"""

from __future__ import annotations

from lcm import checks
from lcm.positional import rope
from lcm.positional import rope_scaling as rope_scaling_lib
from lcm.positional import schedule as schedule_lib
from lcm.positional.scheme import POSITIONAL

P = "model.positional."
R = P + "rope_scaling."


def _check_rope_scaling(e: checks.Errors) -> None:
    e.positive(R + "factor")
    if not e.one_of(R + "rope_type", rope_scaling_lib.ROPE_TYPES):
        return
    rope_type = e.get(R + "rope_type")
    used = rope_scaling_lib.SCALING_KEYS[rope_type]
    for key in rope_scaling_lib.ROPE_SCALING_KEYS[1:]:
        value = e.get(R + key)
        if key in rope_scaling_lib.REQUIRED_KEYS[rope_type] and value is None:
            e.fail(R + key, f"is required when {R}rope_type = {rope_type!r}")
        elif key not in used and value is not None and not (key == "factor" and value == 1.0):
            e.fail(
                R + key,
                f"is not read by {R}rope_type = {rope_type!r} (it reads: "
                f"{', '.join(used) or 'nothing'}); unset it",
            )
    if rope_type == "longrope":
        head_dim, fraction = e.get("model.head_dim"), e.get(P + "partial_rotary_factor")
        pairs = int(head_dim * fraction) // 2 if checks.is_number(fraction) else None
        for key in ("short_factor", "long_factor"):
            value = e.get(R + key)
            if value is not None and len(value) != pairs:
                e.fail(
                    R + key,
                    f"must have int(head_dim * partial_rotary_factor) / 2 = {pairs} entries",
                )


def _check_masks(e: checks.Errors) -> None:
    a = "model.attention."
    e.one_of(a + "mask", schedule_lib.MASKS)
    e.non_negative_int(a + "window")
    if e.get(a + "mask") in ("sliding_window", "chunked_causal"):
        e.check(a + "window", checks.is_positive_int,
                f"must be > 0 when {a}mask is not causal/full")  # fmt: skip


def check_config(e: checks.Errors) -> None:
    names = tuple(POSITIONAL.names())
    e.one_of(P + "name", names)
    e.positive(P + "base")
    e.one_of(P + "layout", rope.LAYOUTS)
    head_dim = e.get("model.head_dim")
    if e.check(
        P + "partial_rotary_factor",
        lambda v: checks.is_number(v) and 0 < v <= 1,
        "must be in (0, 1]",
    ) and checks.is_positive_int(head_dim):
        rotary_dim = int(head_dim * e.get(P + "partial_rotary_factor"))
        e.check(
            P + "partial_rotary_factor",
            lambda v: rotary_dim > 0 and rotary_dim % 2 == 0,
            f"int(model.head_dim * partial_rotary_factor) = {rotary_dim} must be even and > 0",
        )
    _check_rope_scaling(e)
    e.positive(P + "head_scale_init", P + "tapa_alpha")
    e.check(
        P + "tapa_theta",
        lambda v: 0 < v < 1 and float(v * head_dim).is_integer(),
        f"must be in (0, 1) with tapa_theta * model.head_dim ({head_dim}) an integer",
    )
    e.positive_int(
        P + "self_extend_group",
        P + "self_extend_window",
        P + "lm_infinite_local",
        P + "nope_every",
        P + "swa_window",
    )
    e.non_negative_int(P + "lm_infinite_global")
    e.check(
        P + "lm_infinite_max_distance",
        lambda v: v is None or checks.is_positive_int(v),
        "must be None (= lm_infinite_local) or a positive integer",
    )
    used = {e.get(P + "name")}
    if e.one_of(P + "schedule", schedule_lib.SCHEDULES) and e.get(P + "schedule") == "explicit":
        layers = e.get(P + "layers")
        if not layers:
            e.fail(P + "layers", "must be non-empty when model.positional.schedule = 'explicit'")
        for entry in layers:
            try:
                spec = schedule_lib.parse_layer(entry, e.get("model.attention.window"))
            except (ValueError, AttributeError) as err:
                e.fail(P + "layers", str(err))
                continue
            used.add(spec.positional)
            if spec.positional not in names:
                e.fail(P + "layers", f"scheme {spec.positional!r}; allowed: {', '.join(names)}")
    rope_type = e.get(R + "rope_type")
    for name in sorted(used & {"self_extend", "lm_infinite"}):
        if rope_type in rope_scaling_lib.LENGTH_DEPENDENT:
            e.fail(
                R + "rope_type",
                f"{name} needs length-independent frequencies; not allowed: "
                f"{', '.join(rope_scaling_lib.LENGTH_DEPENDENT)}",
            )
    _check_masks(e)
