"""The chunked loss (``lcm.model.head``) equals the loss of full logits, and holds less memory."""

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import model as model_lib
from lcm.compile import hlo
from lcm.model import head
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class _Head:
    """The output-head fields of a ``ModelSpec``."""

    d_model: int = 16
    tie_embeddings: bool = True
    scale_tied_logits: bool = True
    logit_scale: float = 1.0


def _head_params(rng, spec, vocab):
    d = spec.d_model
    if spec.tie_embeddings:
        return {"embed": {"embedding": jnp.asarray(rng.standard_normal((vocab, d)), jnp.float32)}}
    return {"unembed": jnp.asarray(rng.standard_normal((d, vocab)) / np.sqrt(d), jnp.float32)}


def _inputs(rng, b, t, d, vocab, padding):
    x = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32)
    mask = (rng.random((b, t)) > 0.25).astype(np.int32)
    if padding:  # a padded tail on the first row, as the data pipeline masks it
        mask[0, t // 2 :] = 0
    return x, targets, jnp.asarray(mask)


def _loss(chunk, spec, z_loss):
    def loss(params, x, targets, mask):
        if chunk is None:  # the reference: full logits, then cross_entropy
            sums = step_lib.cross_entropy(head.logits(spec, params, x), targets, mask, z_loss)
        else:
            sums = head.chunked_cross_entropy(
                spec, params, x, targets, mask, z_loss=z_loss, chunk=chunk
            )
        nll, z_term, tokens = sums
        return nll + z_term, (nll, z_term, tokens)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def _assert_close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "t, chunk",
    [  # equal and ragged_many are slow: longer and ragged take the same paths
        (24, 8),
        (24, 7),
        pytest.param(24, 5, marks=pytest.mark.slow),
        pytest.param(24, 24, marks=pytest.mark.slow),
        (24, 64),
    ],
    ids=["divides", "ragged", "ragged_many", "equal", "longer"],
)
@pytest.mark.parametrize(
    "spec",
    [
        _Head(),
        _Head(scale_tied_logits=False),
        _Head(tie_embeddings=False),
        _Head(logit_scale=0.625),
        _Head(tie_embeddings=False, logit_scale=1.5),
    ],
    ids=["tied_scaled", "tied", "untied", "tied_logit_scale", "untied_logit_scale"],
)
@pytest.mark.parametrize("z_loss", [0.0, 1e-2], ids=["no_z", "z"])
def test_chunked_equals_dense_values_and_gradients(t, chunk, spec, z_loss):
    rng = np.random.default_rng(t * 31 + chunk)
    vocab = 37
    params = _head_params(rng, spec, vocab)
    x, targets, mask = _inputs(rng, 2, t, spec.d_model, vocab, padding=True)
    (want, want_aux), want_grads = _loss(None, spec, z_loss)(params, x, targets, mask)
    (got, got_aux), got_grads = _loss(chunk, spec, z_loss)(params, x, targets, mask)
    _assert_close((got, got_aux), (want, want_aux))
    _assert_close(got_grads, want_grads)
    assert float(got_aux[2]) == float(np.sum(mask))


def _mesh(shape, kind="auto"):
    axes = ("data", "fsdp", "context", "tensor")
    return mesh_lib.make_mesh({"axes": axes, "shape": shape, "axis_types": kind}, jax.devices()[:8])


def _sharded_loss(chunk, spec, z_loss, mesh):
    """``_loss`` jitted under ``mesh``: tokens over batch and length, the table as the rules say."""
    fn = _loss(chunk, spec, z_loss)

    def run(params, x, targets, mask):
        with sharding.use_mesh(mesh):
            x, targets, mask = (
                jax.device_put(a, sharding.named_sharding(mesh, n))
                for a, n in ((x, ("batch", "length", None)), (targets, ("batch", "length")),
                             (mask, ("batch", "length")))
            )  # fmt: skip
            return fn(params, x, targets, mask), fn.lower(params, x, targets, mask)

    return run


@pytest.mark.parametrize(
    "shape",
    [(1, 2, 2, 2), (2, 1, 4, 1), (1, 1, 1, 8)],
    ids=["fsdp_context_tensor", "data_context", "vocab_over_8"],
)
@pytest.mark.parametrize("spec", [_Head(), _Head(tie_embeddings=False, logit_scale=1.5)],
                         ids=["tied_scaled", "untied_logit_scale"])  # fmt: skip
def test_chunked_loss_per_chip_equals_dense(devices8, shape, spec):
    """On a mesh the chunked loss runs per chip (vocabulary-parallel over ``tensor``); a ragged
    chunk on each chip, z-loss on, against the full logits on one device."""
    rng = np.random.default_rng(7)
    vocab, t = 40, 24  # 40 = 8 x 5: every tensor size here splits the vocabulary
    params = _head_params(rng, spec, vocab)
    x, targets, mask = _inputs(rng, 2, t, spec.d_model, vocab, padding=True)
    (want, want_aux), want_grads = _loss(None, spec, 1e-2)(params, x, targets, mask)
    ((got, got_aux), got_grads), _ = _sharded_loss(5, spec, 1e-2, _mesh(shape))(
        params, x, targets, mask
    )
    _assert_close((got, got_aux), (want, want_aux))
    _assert_close(got_grads, want_grads)


def test_table_gradient_is_summed_over_chips_once_not_per_chunk(devices8):
    """The compiled gradient's all-reduces do not grow with the number of chunks per chip."""
    rng = np.random.default_rng(0)
    spec, vocab = _Head(), 64
    params = _head_params(rng, spec, vocab)
    x, targets, mask = _inputs(rng, 2, 64, spec.d_model, vocab, padding=False)
    mesh = _mesh((1, 2, 4, 1))

    def all_reduce(chunk):
        _, lowered = _sharded_loss(chunk, spec, 0.0, mesh)(params, x, targets, mask)
        return hlo.summarize(lowered.compile().as_text()).collectives["all-reduce"]

    few, many = all_reduce(8), all_reduce(2)  # 2 vs 8 chunks of the 16 positions per chip
    assert few.executed == many.executed and few.bytes == many.bytes
    assert few.bytes < 2 * vocab * spec.d_model * 4 + 1024  # about one table gradient


def _tiny_model(**overrides):
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.update_from_flattened_dict(
        {
            "model.attention.impl": "reference",
            **{k.replace("__", "."): v for k, v in overrides.items()},
        }
    )
    return model_lib.Transformer(model_lib.build_spec(config))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_train_loss_gradients_match_full_logits_for_every_parameter(tie):
    """``make_train_step``'s loss: chunked (ragged) vs ``loss_chunk = 0``, all parameters."""
    b, t = 2, 21
    chunked = _tiny_model(model__loss_chunk=8, model__tie_embeddings=tie, model__logit_scale=2.0)
    dense = _tiny_model(model__loss_chunk=0, model__tie_embeddings=tie, model__logit_scale=2.0)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 256, (b, t + 1)).astype(np.int32)
    batch = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        "segment_ids": np.ones((b, t), np.int32),
        "loss_mask": (rng.random((b, t)) > 0.2).astype(np.int32),
    }
    params = jax.jit(chunked.init)(
        jax.random.key(0), batch["inputs"], batch["positions"], batch["segment_ids"]
    )
    params = jax.tree.map(np.asarray, nn.unbox(params)["params"])
    assert ("unembed" in params) != tie

    def grads(model):
        fn = step_lib._forward_loss(model, 1e-3)
        return jax.jit(jax.value_and_grad(fn, has_aux=True))(params, batch)

    want, got = grads(dense), grads(chunked)
    _assert_close(got, want)
    # The full-logits entry point is unchanged: __call__ is the same head on hidden().
    apply = jax.jit(chunked.apply, static_argnames="method")
    args = (batch["inputs"], batch["positions"], batch["segment_ids"])
    x = apply({"params": params}, *args, method="hidden")
    np.testing.assert_array_equal(
        apply({"params": params}, *args), head.logits(chunked.spec, params, x)
    )


def _train_loss_temp_bytes(chunk, b=1, t=2048, vocab=32768):
    """Compiled temporaries of the gradient of the train step's loss (tiny model, big vocab)."""
    model = _tiny_model(
        model__vocab_size=vocab, model__loss_chunk=chunk, model__attention__impl="blockwise"
    )
    ints = jax.ShapeDtypeStruct((b, t), jnp.int32)
    zeros = jnp.zeros((b, t), jnp.int32)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), zeros, zeros))["params"])
    loss = step_lib._forward_loss(model, 1e-4)
    grad = jax.jit(jax.grad(lambda p, batch: loss(p, batch)[0]))
    compiled = grad.lower(params, {k: ints for k in step_lib.BATCH_KEYS}).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_train_loss_gradient_holds_several_times_less_temporary_memory():
    start = time.perf_counter()
    dense, chunked = _train_loss_temp_bytes(0), _train_loss_temp_bytes(256)
    print(f"temp bytes: dense {dense}, chunk 256 {chunked} ({time.perf_counter() - start:.1f}s)")
    # Dense: the [T, V] float32 logits (256 MiB), their gradient and softmax; chunked: a few
    # [256, V] (measured on CPU: 780 vs 108 MiB).
    assert dense >= 2 * 2048 * 32768 * 4
    assert chunked * 5 < dense
