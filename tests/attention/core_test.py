"""The front door: input validation before work, registry names, capability refusals."""

import dataclasses

import jax.numpy as jnp
import pytest

from lcm import attention
from lcm.attention import masks


def _args(b=1, t=4, s=4, n=4, k=2, h=8, dtype=jnp.float32):
    return dict(
        q=jnp.zeros((b, t, n, h), dtype),
        k=jnp.zeros((b, s, k, h), dtype),
        v=jnp.zeros((b, s, k, h), dtype),
        mask=masks.Causal(),
        impl="blockwise",
        q_pos=jnp.zeros((b, t), jnp.int32),
        k_pos=jnp.zeros((b, s), jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class _Hook:
    def __call__(self, q, k, q_pos, k_pos, *, scale):
        raise AssertionError("never called: the call is refused first")


@dataclasses.dataclass  # not frozen: eq without hash, so unhashable
class _MutableHook:
    slope: float = 1.0

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        raise AssertionError("never called")


def test_registered_names():
    assert {"reference", "xla", "blockwise"} <= set(attention.ATTENTION.names())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n=3), "q heads N = 3 must be a multiple of kv heads K = 2"),
        (dict(v=jnp.zeros((1, 5, 2, 8))), r"v must have k's shape \(1, 4, 2, 8\)"),
        (dict(q=jnp.zeros((1, 4, 32))), r"q must be \[B,T,N,H\] and k \[B,S,K,H\]"),
        (dict(k=jnp.zeros((1, 4, 2, 16)), v=jnp.zeros((1, 4, 2, 16))), "must match q"),
        (dict(q=jnp.zeros((1, 4, 4, 8), jnp.bfloat16)), "q, k, v must share one float dtype"),
        (dict(q_pos=jnp.zeros((1, 5), jnp.int32)), r"q_pos must be integer \(1, 4\)"),
        (dict(k_pos=jnp.zeros((1, 4), jnp.float32)), r"k_pos must be integer \(1, 4\)"),
        (dict(q_segment_ids=jnp.ones((1, 4), jnp.int32)), "must be given together"),
        (
            dict(q_segment_ids=jnp.ones((1, 4), jnp.int32), kv_segment_ids=jnp.ones((1, 3))),
            r"kv_segment_ids must be integer \(1, 4\)",
        ),
        (dict(mask="causal"), "mask must be a lcm.attention.masks.Mask, got str"),
        (dict(logits_fn=_MutableHook()), "logits_fn must be hashable"),
        (dict(block_q=0), "blockwise block_q = 0: must be a positive integer"),
    ],
)
def test_bad_inputs_raise_before_work(change, message):
    args = _args(**{k: v for k, v in change.items() if k in ("n",)})
    args.update({k: v for k, v in change.items() if k != "n"})
    with pytest.raises(ValueError, match=message):
        attention.attend(**args)


def test_unknown_impl_lists_valid_names():
    with pytest.raises(
        KeyError, match="unknown attention 'flash'; valid names: all_gather, blockwise"
    ):
        attention.attend(**{**_args(), "impl": "flash"})


def test_xla_refuses_custom_logits_and_lse():
    with pytest.raises(
        ValueError,
        match="attention impl 'xla' cannot serve this attend\\(\\) call: it lacks custom_logits; "
        "implementations that can: all_gather, blockwise, reference",
    ):
        attention.attend(**{**_args(), "impl": "xla", "logits_fn": _Hook()})
    with pytest.raises(ValueError, match=r"'xla' cannot serve .* lacks returns_lse"):
        attention.attend(**{**_args(), "impl": "xla"}, return_lse=True)


def test_build_time_check_names_both_sides():
    attention.check_capabilities("blockwise", ["custom_logits", "segments"], by="scheme 'alibi'")
    with pytest.raises(
        ValueError, match="attention impl 'xla' cannot serve positional scheme 'alibi'"
    ):
        attention.check_capabilities("xla", ["custom_logits"], by="positional scheme 'alibi'")
    with pytest.raises(
        ValueError, match="unknown capabilities \\['bias'\\]; allowed: custom_logits"
    ):
        attention.check_capabilities("xla", ["bias"], by="x")
