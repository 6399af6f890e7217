"""lcm.hf: sharded safetensors saves and loading each tensor straight into its sharding.

No torch: a tiny lcm model is saved with ``hf.save`` in several files (small
``max_shard_bytes``) and read back with ``hf.load_sharded`` onto a (data 2, fsdp 2, tensor 2)
mesh of the 8 CPU devices. The reads are counted (``weights._read_leaf`` wrapped): each device's
callback reads exactly the bytes of its shard, in the checkpoint's dtype.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import hf
from lcm import model as model_lib
from lcm.hf import weights
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import optimizer
from lcm.train import state as state_lib

MAX_SHARD = 40_000  # bytes: the float32 model below is ~0.2 MB, so several files


def _config(*, tie=False, scan=True, qkv_bias=False):
    config = config_lib.base_config()
    m = config.model
    m.update(vocab_size=256, d_model=32, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=8)
    m.update(mlp_dim=48, tie_embeddings=tie, scale_tied_logits=False, scan_layers=scan)
    m.qkv_bias = qkv_bias
    config.data.batch_size = 8
    config.mesh.shape = (2, 2, 1, 2)  # data, fsdp, context, tensor
    return config


def _random_params(config, seed=0):
    model = model_lib.Transformer(model_lib.build_spec(config))
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(seed), tokens, tokens)["params"])
    # O(1) values everywhere (biases and norm scales too), so every mapping error shows.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [np.asarray(jax.random.normal(k, x.shape)) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, noisy)


def _sharded_load(path, config, rules=None):
    """``(params, target shardings, mesh)`` of ``load_sharded`` on the 8-device mesh."""
    if rules is not None:
        config.mesh.rules = rules
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    with sharding.use_mesh(mesh, rules):
        model = model_lib.Transformer(model_lib.build_spec(config))
        tx = optimizer.make_optimizer(config.train)
        abstract, shardings = state_lib.state_shardings(
            model, tx, mesh, rules, batch_size=config.data.batch_size, seq_len=config.seq_len
        )
        params = hf.load_sharded(path, config, abstract.params, shardings.params)
    return params, shardings.params, abstract


def _unscanned(params, num_layers):
    out = {k: v for k, v in params.items() if k != "layers"}
    for r in range(num_layers):  # period 1
        out[f"layers_{r}"] = jax.tree.map(lambda x, r=r: x[r], params["layers"])
    return out


def _spy_reads(monkeypatch):
    """Records ``(leaf, index, bytes read from the files, result)`` of every sharded read."""
    calls = []
    real = weights._read_leaf

    def spy(read, leaf, index):
        got = []

        def counted(name, hf_index):
            x = read(name, hf_index)
            got.append(x.nbytes)
            return x

        out = real(counted, leaf, index)
        calls.append((leaf, index, sum(got), out))
        return out

    monkeypatch.setattr(weights, "_read_leaf", spy)
    return calls


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _check_sharded(params, shardings, host, calls, plan, file_dtype):
    """(a) values, (b) shardings, (c) per-device shard shapes and bytes read."""
    flat_shardings, flat_host = weights._flatten(shardings), weights._flatten(host)
    flat = weights._flatten(params)
    assert flat.keys() == flat_host.keys() == plan.keys()
    path_of = {leaf: path for path, leaf in plan.items()}
    reads = {}
    for leaf, index, read, out in calls:
        reads.setdefault(path_of[leaf], []).append((index, read, out))
    sharded = 0
    for path, x in flat.items():
        target = flat_shardings[path]
        np.testing.assert_array_equal(np.asarray(x), flat_host[path], err_msg=str(path))  # (a)
        assert x.dtype == np.float32
        assert x.sharding == target, path  # (b)
        shard_shape = target.shard_shape(x.shape)
        for shard in x.addressable_shards:  # (c) no device holds more than its shard
            assert shard.data.shape == shard_shape, path
        sharded += shard_shape != x.shape
        # (c) one read per distinct device index, of exactly that slice, in the file's dtype.
        norm = lambda i, x=x: tuple(s.indices(n) for s, n in zip(i, x.shape, strict=True))  # noqa: E731
        want = {norm(i) for i in target.addressable_devices_indices_map(x.shape).values()}
        assert sorted(norm(i) for i, _, _ in reads[path]) == sorted(want), path
        for _, read, out in reads[path]:
            assert out.shape == shard_shape and out.dtype == file_dtype, path
            assert read == out.nbytes == np.prod(shard_shape) * file_dtype.itemsize, path
    assert sharded >= len(flat) - 1  # every param but possibly the final norm is sharded


@pytest.mark.parametrize(
    "model_type, tie, scan, file_dtype",
    [
        ("llama", False, True, "float32"),
        ("phi3", True, True, "bfloat16"),  # fused qkv / gate_up rows, bf16 read, cast on device
        ("qwen2", False, False, "float32"),  # q/k/v biases, unscanned layers_{r}
    ],
)
def test_sharded_save_and_load(model_type, tie, scan, file_dtype, tmp_path, monkeypatch, devices8):
    config = _config(tie=tie, scan=scan, qkv_bias=model_type == "qwen2")
    params = _random_params(config)
    hf.save(params, config, tmp_path / "a", model_type=model_type, dtype=file_dtype,
            max_shard_bytes=MAX_SHARD)  # fmt: skip
    # The index: every tensor in one of N files of at most MAX_SHARD bytes, total_size exact.
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n >= 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (tmp_path / "a" / "model.safetensors").exists()
    from safetensors import safe_open

    total, names = 0, set()
    for file in files:
        with safe_open(tmp_path / "a" / file, framework="numpy") as f:
            size = 0
            for name in f.keys():
                assert index["weight_map"][name] == file
                x = f.get_slice(name)
                assert x.get_dtype() == {"float32": "F32", "bfloat16": "BF16"}[file_dtype]
                size += np.prod(x.get_shape()) * jnp.dtype(file_dtype).itemsize
                names.add(name)
            assert size <= MAX_SHARD
            total += size
    assert index["metadata"]["total_size"] == total and names == set(index["weight_map"])
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["model_type"], saved["torch_dtype"]) == (model_type, file_dtype)

    loaded_config, host = hf.load(tmp_path / "a")  # host float32 numpy: the reference
    cast = lambda x: np.asarray(jnp.asarray(x, file_dtype).astype(jnp.float32))  # noqa: E731
    if model_type != "qwen2":  # qwen2 adds the (zero) biases bias-free params lack
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, cast(b)), host, params)
    if not scan:  # load's config scans; the run's does not: its tree is layers_{r}
        loaded_config.model.scan_layers = False
        host = _unscanned(host, loaded_config.model.num_layers)
    loaded_config.mesh.shape = config.mesh.shape
    calls = _spy_reads(monkeypatch)
    sharded, shardings, _ = _sharded_load(tmp_path / "a", loaded_config)
    plan = weights._plan(loaded_config, fused=model_type == "phi3", biases=model_type == "qwen2")
    _check_sharded(sharded, shardings, host, calls, plan, np.dtype(jnp.dtype(file_dtype)))

    # (d) save -> load -> save: identical files, from host params and from the sharded ones.
    again = dict(model_type=model_type, dtype=file_dtype, max_shard_bytes=MAX_SHARD)
    hf.save(host, loaded_config, tmp_path / "b", **again)
    hf.save(sharded, loaded_config, tmp_path / "c", **again)
    first = _files(tmp_path / "a")
    assert _files(tmp_path / "b") == first and _files(tmp_path / "c") == first


def test_default_dtype_and_single_file(tmp_path):
    config = _config()
    params = _random_params(config)
    hf.save(params, config, tmp_path / "f32")  # param_dtype float32: float32, one file
    assert sorted(p.name for p in (tmp_path / "f32").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    _, host = hf.load(tmp_path / "f32")
    jax.tree.map(np.testing.assert_array_equal, host, params)
    config.model.param_dtype = "bfloat16"  # the default follows the params' dtype
    hf.save(params, config, tmp_path / "bf16")
    from safetensors import safe_open

    with safe_open(tmp_path / "bf16" / "model.safetensors", framework="numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    # A save over a sharded directory removes its files and index.
    hf.save(params, config, tmp_path / "bf16", max_shard_bytes=MAX_SHARD)
    hf.save(params, config, tmp_path / "bf16")
    assert sorted(p.name for p in (tmp_path / "bf16").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_sharded_layers_and_head_dim(tmp_path, monkeypatch, devices8):
    """Rules that shard the stacked layer axis (a slice reads some layers' tensors) and
    head_dim (an inner split dim: read by whole heads, cut on the host)."""
    config = _config()
    hf.save(_random_params(config), config, tmp_path, max_shard_bytes=MAX_SHARD)
    loaded_config, host = hf.load(tmp_path)
    loaded_config.mesh.shape = config.mesh.shape
    rules = dict(config.mesh.rules)
    rules.update(layers="data", head_dim="tensor", heads=None, kv_heads=None)
    calls = _spy_reads(monkeypatch)
    params, shardings, _ = _sharded_load(tmp_path, loaded_config, tuple(rules.items()))
    flat, targets = weights._flatten(params), weights._flatten(shardings)
    for path, x in flat.items():
        np.testing.assert_array_equal(np.asarray(x), weights._flatten(host)[path])
        assert x.sharding == targets[path]
        for shard in x.addressable_shards:
            assert shard.data.shape == targets[path].shard_shape(x.shape)
    wq = flat[("layers", "block0", "attn", "wq")]
    assert wq.addressable_shards[0].data.shape == (2, 16, 4, 4)  # L/data, D/fsdp, N, H/tensor
    stacked = [c for c in calls if c[0].layers is not None]
    assert stacked and all(c[1][0] != slice(None) for c in stacked)
    # Whole heads are read for a head_dim slice: at most twice the shard (tensor = 2).
    assert all(read <= 2 * out.nbytes for _, _, read, out in calls)


def test_state_from_sharded_params(tmp_path, devices8):
    config = _config()
    hf.save(_random_params(config), config, tmp_path)
    loaded_config, host = hf.load(tmp_path)
    loaded_config.mesh.shape = config.mesh.shape
    mesh = mesh_lib.make_mesh(loaded_config.mesh)
    rules = sharding.validate_rules(loaded_config.mesh.rules, loaded_config.mesh.axes)
    with sharding.use_mesh(mesh, rules):
        model = model_lib.Transformer(model_lib.build_spec(loaded_config))
        tx = optimizer.make_optimizer(loaded_config.train)
        abstract, shardings = state_lib.state_shardings(
            model, tx, mesh, rules, batch_size=8, seq_len=loaded_config.seq_len
        )
        params = hf.load_sharded(tmp_path, loaded_config, abstract.params)
        state = state_lib.state_from_params(params, tx, abstract, shardings)
        # Donated (the buffers become the state's where the runtime can alias them).
        assert all(x.is_deleted() for x in jax.tree.leaves(params))
        from_host = state_lib.state_from_params(host, tx, abstract, shardings)
    for a, b, s in zip(
        jax.tree.leaves(state), jax.tree.leaves(from_host), jax.tree.leaves(shardings),
        strict=True,
    ):  # fmt: skip
        assert a.sharding == s and b.sharding == s
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params, host)


def test_load_sharded_refuses_another_model(tmp_path, devices8):
    config = _config()
    hf.save(_random_params(config), config, tmp_path)
    other = _config()
    other.model.num_layers = 2  # the run's model: not the checkpoint's
    with pytest.raises(ValueError, match="tensors lcm does not use"):
        _sharded_load(tmp_path, other)
