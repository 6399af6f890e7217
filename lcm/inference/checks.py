"""``config.inference`` checks: the decode implementation, sampling, the eviction policy."""

from __future__ import annotations

from lcm import checks
from lcm.inference.decoding import DECODE_IMPLS
from lcm.inference.policies import CAOTE_BASES, POLICIES

INF = "inference."


def check_config(e: checks.Errors) -> None:
    e.one_of(INF + "attention_impl", DECODE_IMPLS)
    e.positive_int(INF + "prefill_chunk", INF + "max_new_tokens", INF + "snapkv_window")
    e.non_negative_int(INF + "sink", INF + "recent", INF + "seed")
    e.check(
        INF + "snapkv_kernel", lambda v: checks.is_positive_int(v) and v % 2, "must be odd and >= 1"
    )
    e.one_of(INF + "caote_base", CAOTE_BASES)
    e.non_negative(INF + "temperature")
    e.check(INF + "top_p", lambda v: checks.is_number(v) and 0 < v <= 1, "must be in (0, 1]")
    policy, budget = e.get(INF + "cache_policy"), e.get(INF + "budget")
    if policy is None:
        if budget is not None:
            e.fail(INF + "budget", "must be None without inference.cache_policy (full cache)")
        return
    if not e.one_of(INF + "cache_policy", POLICIES.names()):
        return
    if not e.check(
        INF + "budget", checks.is_positive_int, f"must be a positive integer for {policy!r}"
    ):
        return
    base = e.get(INF + "caote_base") if policy == "caote" else policy
    forced = {
        "streaming_llm": ("inference.sink + 1", e.get(INF + "sink") + 1),
        "h2o": ("inference.recent", e.get(INF + "recent")),
        "snapkv": ("inference.snapkv_window", e.get(INF + "snapkv_window")),
    }.get(base)
    if forced and isinstance(forced[1], int) and budget < forced[1]:
        e.fail(INF + "budget", f"must be >= {forced[0]} = {forced[1]} for {policy!r}")
