"""Hugging Face safetensors <-> lcm ``Transformer`` params: ``load``, ``load_sharded``, ``save``.

Hugging Face ``nn.Linear`` weights are ``[out, in]``; lcm keeps ``[in, ...]`` with heads split
(``wq [D,N,H]``, ``wo [N,H,D]``). Phi-3 fuses ``qkv_proj`` (q, k, v rows in that order) and
``gate_up_proj`` (gate rows first). Cohere2's parallel block has one norm
(``input_layernorm`` -> ``attn_norm``) and no ``post_attention_layernorm``; its LayerNorms have
a weight and no bias. Layers are stacked into lcm's scanned groups (or ``layers_{r}`` without
scan) by the schedule's period: group ``r``, ``block{i}`` is Hugging Face layer ``r * p + i``.

One table (``_plan``) says where every lcm leaf lies in the Hugging Face tensors: a ``_Piece``
per leaf (one layer's, for the stacked ones) is rows ``[offset, offset + rows)`` of a tensor
(``offset`` > 0 only inside the fused Phi-3 tensors), transposed by ``perm``, each transposed
dimension then split into lcm dimensions (``N*H -> N, H``). ``_read_leaf`` translates any
slice of an lcm leaf into slices of the Hugging Face tensors it comes from (several per-layer
tensors for a slice of the stacked axis), so ``load_sharded`` reads, for each device, only the
part of the file that device holds. ``load`` (host arrays) and ``save`` use the same table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import pathlib
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from ml_collections import ConfigDict

from lcm.data import tokenizers
from lcm.hf.mapping import config_from_hf, hf_config, read_config
from lcm.model.spec import build_spec
from lcm.model.transformer import Transformer

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")
_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Where one lcm array lies in a Hugging Face tensor.

    Rows ``[offset, offset + rows)`` of dim 0 of tensor ``name`` (``{}`` in it: the layer),
    transposed by ``perm``; transposed dim ``j`` is split into the lcm dims ``groups[j]``.
    """

    name: str
    hf_shape: tuple[int, ...]
    offset: int
    perm: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The lcm array's shape."""
        return tuple(s for g in self.groups for s in g)

    def hf_index(self, index: tuple[tuple[int, int], ...]):
        """``(slices of the HF tensor, sub-slices of the transposed block)`` for the lcm
        ``index`` (one ``(start, stop)`` per lcm dim).

        A transposed dim split into ``(s1, s2, ...)`` is read as the contiguous range of the
        ``s1`` entries asked for (all of ``s2, ...``), which is exact whenever only ``s1`` is
        sliced (heads sharded, head_dim whole); the inner dims are then cut on the host.
        """
        ranges, post, k = [], [], 0
        for g in self.groups:
            (a, b), rest = index[k], index[k + 1 : k + len(g)]
            k += len(g)
            inner = math.prod(g[1:])
            ranges.append((a * inner, b * inner))
            post.append((b - a, g[1:], rest))
        hf = [None] * len(self.perm)
        for j, d in enumerate(self.perm):
            hf[d] = ranges[j]
        hf[0] = (hf[0][0] + self.offset, hf[0][1] + self.offset)
        return tuple(slice(a, b) for a, b in hf), post

    @staticmethod
    def from_hf(block: np.ndarray, perm, post) -> np.ndarray:
        """The lcm array of a block read at ``hf_index``."""
        x = block.transpose(perm)
        x = x.reshape([s for count, inner, _ in post for s in (count, *inner)])
        cut = tuple(s for _, _, rest in post for s in (slice(None), *(slice(*r) for r in rest)))
        return x[cut]

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        """Inverse of the full read: an lcm array -> its rows of the HF tensor."""
        x = x.reshape([math.prod(g) for g in self.groups])
        return x.transpose(np.argsort(self.perm))


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One lcm param: ``piece``, stacked over the HF layers ``layers`` (leading axis), or a
    single tensor (``layers`` None; ``piece.name`` has no ``{}``)."""

    piece: _Piece
    layers: tuple[int, ...] | None

    @property
    def shape(self) -> tuple[int, ...]:
        lead = () if self.layers is None else (len(self.layers),)
        return lead + self.piece.shape

    def names(self) -> list[str]:
        """The HF tensors this leaf is read from."""
        if self.layers is None:
            return [self.piece.name]
        return [self.piece.name.format(i) for i in self.layers]


def _period(config) -> int:
    """Layers per scanned group (the schedule's period, as the model groups them)."""
    ((_, period, _), *_) = build_spec(config).stacks()
    return len(period)


def _block_pieces(m, fused: bool, biases: bool) -> dict[tuple[str, ...], _Piece]:
    """One decoder layer's lcm block params (paths inside ``block{i}``) in HF tensors."""
    d, n, k, h, f = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim
    pre, t = "model.layers.{}.", (1, 0)
    attn = pre + "self_attn."
    out = {}
    if fused:
        qkv = (attn + "qkv_proj.weight", ((n + 2 * k) * h, d))
        gate_up = (pre + "mlp.gate_up_proj.weight", (2 * f, d))
        sources = {"wq": (*qkv, 0), "wk": (*qkv, n * h), "wv": (*qkv, (n + k) * h)}
        sources |= {"wi_gate": (*gate_up, 0), "wi_up": (*gate_up, f)}
    else:
        sources = {
            f"w{x}": (f"{attn}{x}_proj.weight", (heads * h, d), 0)
            for x, heads in (("q", n), ("k", k), ("v", k))
        }
        sources["wi_gate"] = (pre + "mlp.gate_proj.weight", (f, d), 0)
        sources["wi_up"] = (pre + "mlp.up_proj.weight", (f, d), 0)
    for x, heads in (("q", n), ("k", k), ("v", k)):
        out[("attn", f"w{x}")] = _Piece(*sources[f"w{x}"], t, ((d,), (heads, h)))
        if biases:
            name = f"{attn}{x}_proj.bias"
            out[("attn", f"b{x}")] = _Piece(name, (heads * h,), 0, (0,), ((heads, h),))
    out[("attn", "wo")] = _Piece(attn + "o_proj.weight", (d, n * h), 0, t, ((n, h), (d,)))
    out[("attn_norm", "scale")] = _Piece(pre + "input_layernorm.weight", (d,), 0, (0,), ((d,),))
    for x in ("wi_gate", "wi_up"):
        out[("mlp", x)] = _Piece(*sources[x], t, ((d,), (f,)))
    out[("mlp", "wo")] = _Piece(pre + "mlp.down_proj.weight", (d, f), 0, t, ((f,), (d,)))
    if not m.parallel_block:
        name = pre + "post_attention_layernorm.weight"
        out[("mlp_norm", "scale")] = _Piece(name, (d,), 0, (0,), ((d,),))
    return out


def _plan(config, *, fused: bool, biases: bool) -> dict[tuple[str, ...], _Leaf]:
    """Every lcm param path -> its ``_Leaf`` (``fused``: Phi-3 tensors; ``biases``: q/k/v)."""
    m = config.model
    d, v = m.d_model, m.vocab_size
    plan = {
        ("embed", "embedding"): _Leaf(
            _Piece("model.embed_tokens.weight", (v, d), 0, (0, 1), ((v,), (d,))), None
        ),
        ("final_norm", "scale"): _Leaf(_Piece("model.norm.weight", (d,), 0, (0,), ((d,),)), None),
    }
    if not m.tie_embeddings:
        plan[("unembed",)] = _Leaf(_Piece("lm_head.weight", (v, d), 0, (1, 0), ((d,), (v,))), None)
    p, block = _period(config), _block_pieces(m, fused, biases)
    groups = m.num_layers // p
    for i in range(p):
        for sub, piece in block.items():
            if m.scan_layers:
                layers = tuple(r * p + i for r in range(groups))
                plan[("layers", f"block{i}", *sub)] = _Leaf(piece, layers)
            else:
                for r in range(groups):
                    one = dataclasses.replace(piece, name=piece.name.format(r * p + i))
                    plan[(f"layers_{r}", f"block{i}", *sub)] = _Leaf(one, None)
    return plan


def _read_leaf(read: Callable, leaf: _Leaf, index) -> np.ndarray:
    """The ``index`` slice (a tuple of slices, as ``jax.make_array_from_callback`` passes) of
    lcm param ``leaf``, read with ``read(hf_name, hf_slices)`` and only the slices it needs."""
    ranges = []
    for s, size in zip(index, leaf.shape, strict=True):
        start, stop, step = s.indices(size)
        if step != 1:
            raise ValueError(f"strided index {index} into an lcm param")
        ranges.append((start, stop))
    names = leaf.names()
    if leaf.layers is not None:
        (a, b), ranges = ranges[0], ranges[1:]
        names = names[a:b]
    hf_index, post = leaf.piece.hf_index(tuple(ranges))
    blocks = [_Piece.from_hf(read(name, hf_index), leaf.piece.perm, post) for name in names]
    if leaf.layers is None:
        return blocks[0]
    return np.stack(blocks)


def _unflatten(flat: dict[tuple[str, ...], object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _flatten(tree) -> dict[tuple[str, ...], object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(str(k.key) for k in path): x for path, x in leaves}


class _Reader:
    """The tensors of a Hugging Face directory's safetensors file(s), read slice by slice in
    the checkpoint's dtype (``safe_open(...).get_slice(name)[index]``); files open lazily."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        index = path / INDEX_FILE
        self._stack = contextlib.ExitStack()
        self._open: dict[str, object] = {}
        if index.is_file():
            self.files = dict(json.loads(index.read_text())["weight_map"])
        else:
            self.files = {name: SINGLE_FILE for name in self._handle(SINGLE_FILE).keys()}
        for file in sorted(set(self.files.values())):
            self._handle(file)  # every listed file must exist

    def _handle(self, file: str):
        if file not in self._open:
            from safetensors import safe_open  # lazy: only checkpoint users need safetensors

            if not (self.path / file).is_file():
                raise ValueError(f"hf path {str(self.path)!r}: missing weights file {file}")
            self._open[file] = self._stack.enter_context(
                safe_open(self.path / file, framework="numpy")
            )
        return self._open[file]

    def _slice(self, name: str):
        return self._handle(self.files[name]).get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> np.dtype:
        kind = self._slice(name).get_dtype()
        if kind not in _SAFETENSORS_DTYPES:
            raise ValueError(f"hf path {str(self.path)!r}: tensor {name} has dtype {kind}")
        return _SAFETENSORS_DTYPES[kind]

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """``index`` of tensor ``name``, in the checkpoint's dtype."""
        return np.asarray(self._slice(name)[index])

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _checked_plan(reader: _Reader, config, family: str) -> dict[tuple[str, ...], _Leaf]:
    """The plan of ``config`` for the checkpoint in ``reader``, after checking that the
    checkpoint holds exactly its tensors (names and shapes)."""
    m = config.model
    plan = _plan(config, fused=family == "phi3", biases=m.qkv_bias)
    where = f"hf path {str(reader.path)!r}"
    want = {name: leaf.piece.hf_shape for leaf in plan.values() for name in leaf.names()}
    missing = [name for name in want if name not in reader.files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{where}: missing tensor {missing[0]}{more}")
    unused = {n for n in reader.files if n not in want and not _IGNORED_TENSORS.match(n)}
    if m.tie_embeddings:
        unused.discard("lm_head.weight")  # some tied checkpoints store the copy
    if unused:
        raise ValueError(f"{where}: tensors lcm does not use: {sorted(unused)}")
    wrong = [
        f"{name} {reader.shape(name)} (expected {shape})"
        for name, shape in want.items()
        if reader.shape(name) != shape
    ]
    if wrong:
        raise ValueError(
            f"{where}: tensor shapes do not match the model of config.json: " + "; ".join(wrong)
        )
    return plan


def _model_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The param tree and shapes ``Transformer.init`` makes (nothing runs)."""
    ones = jnp.ones((1, 1), jnp.int32)
    init = jax.eval_shape(
        lambda: Transformer(build_spec(config)).init(jax.random.key(0), ones, ones)
    )
    return {path: x.shape for path, x in _flatten(nn.unbox(init["params"])).items()}


def _check_tree(plan, want: dict, where: str) -> None:
    have = {path: leaf.shape for path, leaf in plan.items()}
    if have != want:
        raise ValueError(f"{where}: params {have} do not match the model's {want}")


def load_config(path: str | pathlib.Path) -> ConfigDict:
    """The lcm config of a Hugging Face model directory (``config.json`` only, no weights):
    ``configs/base.py`` with the model fields mapped, ``model.hf_path`` set, and
    ``data.tokenizer`` the directory's ``tokenizer.json`` when present."""
    path = pathlib.Path(path)
    config = config_from_hf(read_config(path))
    config.model.hf_path = str(path)
    if (path / "tokenizer.json").is_file():
        config.data.tokenizer = str(path / "tokenizer.json")
    return config


def load(path: str | pathlib.Path) -> tuple[ConfigDict, dict]:
    """Loads a Hugging Face model directory as ``(lcm config, params)`` on the host.

    The config is ``load_config(path)``; params is the ``Transformer`` param tree of float32
    numpy arrays (whatever the checkpoint's dtype). For training on a mesh use
    ``load_sharded``, which never builds a whole tensor on one host or device.

    Raises:
      ValueError: unsupported family/key/value, or tensors missing, misshapen or left over.
    """
    path = pathlib.Path(path)
    config = load_config(path)
    with _Reader(path) as reader:
        plan = _checked_plan(reader, config, read_config(path)["model_type"])
        _check_tree(plan, _model_shapes(config), f"hf path {str(path)!r}")
        full = lambda leaf: tuple(slice(None) for _ in leaf.shape)  # noqa: E731
        params = {
            p: _read_leaf(reader.read, leaf, full(leaf)).astype(np.float32)
            for p, leaf in plan.items()
        }
    return config, _unflatten(params)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _cast(x, dtype, sharding):
    return jax.lax.with_sharding_constraint(x.astype(dtype), sharding)


def load_sharded(path: str | pathlib.Path, config, abstract_params, shardings=None) -> dict:
    """The params of the Hugging Face checkpoint ``path``, built directly in their shardings.

    ``config`` is the run's config (its model fixes the param tree: ``hf.with_checkpoint`` /
    ``checkpoint_config``); ``abstract_params`` gives each param's shape and dtype (and its
    sharding when ``shardings``, a matching ``NamedSharding`` tree, is None), e.g.
    ``state_lib.state_shardings(...)``'s ``abstract.params``. Every param is made with
    ``jax.make_array_from_callback``: the callback of each addressable device reads only the
    slices of the Hugging Face tensors that device's shard comes from (a slice of the stacked
    layer axis reads those layers' tensors; a fused Phi-3 tensor is read at the rows of q, k, v,
    gate or up), in the checkpoint's dtype; devices with the same index share one read. The
    param is then cast on device to its dtype (bf16 stays bf16 until then). Params are made one
    at a time, so the host holds at most one param's local shards.

    Raises:
      ValueError: as ``load``, or the param tree/shapes differ from ``abstract_params``.
    """
    path = pathlib.Path(path)
    where = f"hf path {str(path)!r}"
    abstract = _flatten(abstract_params)
    targets = _flatten(shardings) if shardings is not None else None
    out = {}
    with _Reader(path) as reader:
        plan = _checked_plan(reader, config, read_config(path)["model_type"])
        _check_tree(plan, {p: tuple(a.shape) for p, a in abstract.items()}, where)
        for p, leaf in plan.items():
            a = abstract[p]
            sharding = targets[p] if targets is not None else a.sharding
            dtype = np.result_type(*(reader.dtype(name) for name in leaf.names()))
            cache: dict = {}

            def callback(index, leaf=leaf, dtype=dtype, cache=cache):
                key = tuple(s.indices(n) for s, n in zip(index, leaf.shape, strict=True))
                if key not in cache:
                    cache[key] = _read_leaf(reader.read, leaf, index).astype(dtype, copy=False)
                return cache[key]

            x = jax.make_array_from_callback(leaf.shape, sharding, callback, dtype=dtype)
            cache.clear()
            out[p] = x if x.dtype == a.dtype else _cast(x, jnp.dtype(a.dtype), sharding)
            del x
    return _unflatten(out)


def load_tokenizer(path: str | pathlib.Path) -> tokenizers.Tokenizer:
    """The directory's ``tokenizer.json`` through ``tokenizers`` (lcm.data.tokenizers)."""
    return tokenizers.load_tokenizer(str(pathlib.Path(path) / "tokenizer.json"))


def _to_host(x, dtype: np.dtype) -> np.ndarray:
    """``x`` (a numpy or, possibly multi-host, jax array) on this host, cast to ``dtype``
    (on device for a jax array: half the transfer for bfloat16)."""
    if isinstance(x, jax.Array):
        x = x.astype(dtype)
        if not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return np.asarray(x).astype(dtype)


def _shard_files(sizes: dict[str, int], max_shard_bytes: int) -> dict[str, str]:
    """Tensor name -> file: ``model.safetensors`` when the total fits ``max_shard_bytes``,
    else ``model-0000i-of-0000N.safetensors``, filled in order up to ``max_shard_bytes`` each
    (a tensor larger than that gets a file of its own, as in transformers)."""
    if sum(sizes.values()) <= max_shard_bytes:
        return dict.fromkeys(sizes, SINGLE_FILE)
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    n = len(shards)
    return {
        name: f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        for i, names in enumerate(shards)
        for name in names
    }


def _layer_order(name: str) -> tuple:
    match = re.match(r"model\.layers\.(\d+)\.", name)
    if name == "model.embed_tokens.weight":
        return (0,)
    return (1, int(match.group(1))) if match else (2,)


def save(
    params: dict,
    config,
    path: str | pathlib.Path,
    *,
    model_type: str | None = None,
    dtype=None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Writes ``params`` of ``config`` as a Hugging Face model directory, loadable by
    ``transformers`` and by ``load`` / ``load_sharded``.

    ``params`` may be numpy or (sharded, multi-host) jax arrays. Files: ``config.json`` and
    either one ``model.safetensors`` (total size at most ``max_shard_bytes``, default 5 GB as
    transformers) or ``model-0000i-of-0000N.safetensors`` files of at most ``max_shard_bytes``
    each plus Hugging Face's ``model.safetensors.index.json`` (``metadata.total_size`` and
    ``weight_map``); ``model*.safetensors*`` files already in ``path`` are replaced. Tensors
    are written as ``dtype``, by default ``config.model.param_dtype`` (float32 or bfloat16: the
    params' own precision, so the default loses nothing); ``torch_dtype`` in config.json says
    which. Each param is gathered to the host one layer at a time, each file written as soon
    as its tensors are ready (process 0 writes; every process must call ``save``).

    ``model_type`` defaults to the simplest family that holds the model (see ``_family``).
    """
    from safetensors.numpy import save_file  # lazy: only checkpoint users need safetensors

    hf = hf_config(config, model_type)
    family = hf["model_type"]
    dtype = np.dtype(jnp.dtype(config.model.param_dtype if dtype is None else dtype))
    if dtype not in _SAFETENSORS_DTYPES.values():
        raise ValueError(f"save: dtype {dtype} (allowed: float32, bfloat16, float16, float64)")
    hf["torch_dtype"] = dtype.name
    plan = _plan(config, fused=family == "phi3", biases=family == "qwen2")
    flat = _flatten(params)
    # HF tensor -> the (leaf, layer position) pieces it is made of, in row order.
    sources: dict[str, list] = {}
    for p, leaf in plan.items():
        for j, name in enumerate(leaf.names()):
            sources.setdefault(name, []).append((leaf.piece.offset, p, leaf, j))
    names = sorted(sources, key=_layer_order)  # stable: module order within a layer
    shapes = {name: sources[name][0][2].piece.hf_shape for name in names}
    sizes = {name: math.prod(shapes[name]) * dtype.itemsize for name in names}
    files = _shard_files(sizes, max_shard_bytes)
    writer = jax.process_index() == 0
    path = pathlib.Path(path)
    if writer:
        path.mkdir(parents=True, exist_ok=True)
        for old in [*path.glob("model-*-of-*.safetensors"), path / SINGLE_FILE, path / INDEX_FILE]:
            old.unlink(missing_ok=True)
        (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")

    def tensor(name: str) -> np.ndarray:
        rows = []
        for _, p, leaf, j in sorted(sources[name], key=lambda s: s[0]):
            if p in flat:
                x = flat[p] if leaf.layers is None else flat[p][j]
                rows.append(leaf.piece.to_hf(_to_host(x, dtype)))
            elif p[-1] in ("bq", "bk", "bv"):  # a bias-free model saved as qwen2: zero biases
                rows.append(np.zeros(leaf.piece.hf_shape, dtype))
            else:
                raise ValueError(f"save: params have no {'/'.join(p)}")
        return np.ascontiguousarray(np.concatenate(rows) if len(rows) > 1 else rows[0])

    pending: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        pending[name] = tensor(name)
        if i + 1 == len(names) or files[names[i + 1]] != files[name]:
            if writer:
                save_file(pending, str(path / files[name]), metadata={"format": "pt"})
            pending = {}
    if writer and files[names[0]] != SINGLE_FILE:
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": dict(sorted(files.items())),
        }
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
