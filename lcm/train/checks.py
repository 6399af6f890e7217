"""``config.train`` checks: optimizer, schedule, checkpoints, health policy, initial weights."""

from __future__ import annotations

from lcm import checks
from lcm.train import health

T = "train."


def check_config(e: checks.Errors) -> None:
    e.non_negative_int(T + "seed")
    counts = ("num_steps", "log_every", "checkpoint_every", "max_checkpoints",
              "grad_accum_steps", "eval_batches")  # fmt: skip
    e.positive_int(*(T + k for k in counts))
    e.positive(T + "learning_rate")
    e.non_negative_int(T + "warmup_steps", T + "eval_every")
    e.non_negative(T + "weight_decay", T + "grad_clip", T + "z_loss", T + "peak_flops")
    e.check(T + "min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    e.one_of(T + "nonfinite", health.POLICIES)
    e.check(
        T + "spike_factor",
        lambda v: checks.is_number(v) and (v == 0 or v > 1),
        "must be 0 (off) or a number > 1",
    )
    e.check(T + "spike_decay", lambda v: checks.is_number(v) and 0 <= v < 1, "must be in [0, 1)")
    for key in ("adam_b1", "adam_b2"):
        e.check(T + key, lambda v: 0 <= v < 1, "must be in [0, 1)")
    if e.get(T + "init_from") is not None:
        e.check(T + "init_from", lambda v: bool(v), "must be a workdir path or None")
        e.check(
            "model.hf_path",
            lambda v: v is None,
            "must be None when train.init_from is set (both give the initial weights)",
        )
    accum, batch = e.get(T + "grad_accum_steps"), e.get("data.batch_size")
    if checks.is_positive_int(accum) and checks.is_positive_int(batch) and batch % accum:
        e.fail("data.batch_size", f"must be a multiple of train.grad_accum_steps = {accum}")
