"""Loading and validating ml_collections configs.

``configs/base.py:get_config()`` is the one place defaults live; experiment configs import it and
change what differs. ``validate`` runs before any work starts (no compilation, no data loading)
and raises a single ``ValueError`` that lists every problem, each naming the key, the bad value
and what is allowed::

    config.model.num_heads = 6: must be a multiple of model.num_kv_heads = 4

Command-line entry points load configs with ``config_flags.DEFINE_config_file(...,
lock_config=True)`` (so a misspelled ``--config.a.b`` override fails) and then call
``validate``; ``load_config`` is the same for notebooks and tests.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import pathlib
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ml_collections import ConfigDict, FieldReference

from lcm.attention import ATTENTION
from lcm.attention import ring as ring_lib
from lcm.attention import sparse as sparse_lib
from lcm.data import recipes as recipes_lib
from lcm.data import synthetic
from lcm.data.corpora import CORPORA
from lcm.data.packing import PACKINGS
from lcm.data.tokenizers import BYTE_VOCAB_SIZE
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.positional import POSITIONAL
from lcm.positional import rope_scaling as rope_scaling_lib
from lcm.positional import schedule as schedule_lib
from lcm.train import health

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "configs" / "base.py"

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "save_attention", "offload_attention")  # fmt: skip
ROPE_LAYOUTS = ("half", "interleaved")
NORMS = ("rms", "layernorm")  # lcm.model.layers.NORMS
MASKS = schedule_lib.MASKS
TOKENIZER_SUFFIXES = (".model", ".json")  # SentencePiece, Hugging Face
EVAL_PROTOCOLS = ("truncate", "sliding")
EVAL_INITS = ("checkpoint", "random")
DECODE_IMPLS = ("reference", "xla")  # lcm.inference decodes densely over the KV cache
CACHE_POLICIES = ("streaming_llm", "h2o", "snapkv", "caote")  # lcm.inference.POLICIES
CAOTE_BASES = ("h2o", "snapkv")
# Implementations that tile the sequence: their block sizes must divide the training length.
TILED_IMPLS = ("blockwise", "pallas", "ring")


def load_config(spec: str) -> ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config([arg])``; returns it locked."""
    path, _, arg = str(spec).partition(":")
    if str(REPO_ROOT) not in sys.path:  # experiment configs import `configs.base`
        sys.path.insert(0, str(REPO_ROOT))
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_lcm_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config


def base_config() -> ConfigDict:
    """The defaults from ``configs/base.py``."""
    return load_config(str(BASE_CONFIG))


class _Checker:
    """Collects problems as ``config.<key> = <value>: <what is allowed>`` lines."""

    def __init__(self, config: ConfigDict):
        self.config = config
        self.errors: list[str] = []

    def get(self, key: str) -> Any:
        node = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def fail(self, key: str, message: str) -> None:
        try:
            value = self.get(key)
        except (KeyError, AttributeError):
            value = "<missing>"
        self.errors.append(f"config.{key} = {value!r}: {message}")

    def check(self, key: str, ok: Callable[[Any], bool], message: str) -> bool:
        try:
            good = bool(ok(self.get(key)))
        except (TypeError, ValueError):
            good = False
        if not good:
            self.fail(key, message)
        return good

    def positive_int(self, *keys: str) -> None:
        for key in keys:
            self.check(key, _is_positive_int, "must be a positive integer")

    def non_negative(self, *keys: str) -> None:
        for key in keys:
            self.check(key, lambda v: _is_number(v) and v >= 0, "must be a number >= 0")

    def positive(self, *keys: str) -> None:
        for key in keys:
            self.check(key, lambda v: _is_number(v) and v > 0, "must be a number > 0")

    def one_of(self, key: str, allowed: tuple) -> bool:
        return self.check(
            key, lambda v: v in allowed, f"allowed: {', '.join(repr(a) for a in allowed)}"
        )


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _leaves(config: ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field_type(config: ConfigDict, key: str) -> type | None:
    """Declared type of a leaf: the placeholder's type for None-valued references."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    ref = node.get_ref(leaf) if hasattr(node, "get_ref") else None
    if isinstance(ref, FieldReference):
        return ref.get_type()
    value = node[leaf]
    return None if value is None else type(value)


def _check_schema(c: _Checker, base: ConfigDict) -> None:
    """Unknown keys, missing keys and wrong types, against ``configs/base.py``."""
    base_keys = dict(_leaves(base))
    own_keys = dict(_leaves(c.config))
    for key in sorted(set(own_keys) - set(base_keys)):
        parent = base
        for part in key.split(".")[:-1]:
            parent = parent.get(part) if isinstance(parent, ConfigDict) else None
        siblings = sorted(parent.keys()) if isinstance(parent, ConfigDict) else []
        c.fail(key, f"unknown key; allowed keys here: {', '.join(siblings)}")
    for key in sorted(set(base_keys) - set(own_keys)):
        c.errors.append(f"config.{key} is missing (configs/base.py defines it)")
    for key in sorted(set(base_keys) & set(own_keys)):
        want, value = _field_type(base, key), own_keys[key]
        if want is None or value is None:
            continue
        if want is float and _is_number(value):
            continue
        if want in (tuple, list) and isinstance(value, tuple | list):
            continue
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            c.fail(key, f"must be of type {want.__name__}")


def _check_model(c: _Checker) -> None:
    m = "model."
    c.positive_int(
        *(
            m + k
            for k in (
                "vocab_size",
                "d_model",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "mlp_dim",
            )
        )
    )
    heads, kv_heads = c.get(m + "num_heads"), c.get(m + "num_kv_heads")
    if _is_positive_int(heads) and _is_positive_int(kv_heads) and heads % kv_heads:
        c.fail(m + "num_heads", f"must be a multiple of model.num_kv_heads = {kv_heads}")
    c.check(m + "head_dim", lambda v: v % 2 == 0, "must be even (RoPE rotates pairs)")
    c.one_of(m + "norm", NORMS)
    c.positive(m + "norm_eps", m + "logit_scale")
    c.check(
        m + "hf_path",
        lambda v: v is None or (pathlib.Path(v) / "config.json").is_file(),
        "must be None or a directory holding a Hugging Face config.json",
    )
    c.one_of(m + "dtype", DTYPES)
    c.one_of(m + "param_dtype", DTYPES)
    c.one_of(m + "remat_policy", REMAT_POLICIES)
    c.check(
        m + "loss_chunk",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "must be an integer >= 0 (positions per loss chunk; 0 = full logits)",
    )

    _check_positional(c)

    a = m + "attention."
    c.one_of(a + "impl", tuple(ATTENTION.names()) + sparse_lib.MODULE_IMPLS)
    c.one_of(a + "ring_axis", mesh_lib.MESH_AXES)
    c.one_of(a + "ring_layout", ring_lib.LAYOUTS)
    c.one_of(a + "ring_inner", tuple(ring_lib.INNER))
    uses_kernel = (
        c.get(a + "impl") == "pallas"
        or (c.get(a + "impl") == "ring" and c.get(a + "ring_inner") == "pallas")
        or (
            c.get(a + "impl") in ("sink_window", "s2_attn")
            and c.get(a + "sparse_kernel") == "pallas"
        )
    )
    if uses_kernel and _is_positive_int(c.get("seq_len")):
        # The kernel's TPU tiling: kv blocks span whole 128-lane vregs, q blocks 8 sublanes.
        for key, multiple in (("block_q", 8), ("block_kv", 128)):
            block = c.get(a + key)
            if _is_positive_int(block) and block % multiple and block < c.get("seq_len"):
                c.fail(
                    a + key,
                    f"must be a multiple of {multiple} (or >= seq_len) for the Pallas kernel",
                )
    c.one_of(a + "mask", MASKS)
    c.check(a + "window", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    if c.get(a + "mask") in ("sliding_window", "chunked_causal"):
        c.check(a + "window", _is_positive_int, f"must be > 0 when {a}mask is not causal/full")
    c.positive_int(a + "block_q", a + "block_kv")
    c.positive_int(a + "sparse_block", a + "sparse_top_k", a + "recent")
    c.check(a + "sink", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    c.one_of(a + "hsa_weighting", sparse_lib.hsa.WEIGHTINGS)
    c.check(
        a + "sparse_dense_last", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"
    )
    if _is_positive_int(c.get(m + "num_layers")):
        n_layers = c.get(m + "num_layers")
        c.check(
            a + "sparse_dense_last",
            lambda v: v < n_layers,
            f"must be below model.num_layers = {n_layers}",
        )
    c.one_of(a + "sparse_dense_impl", tuple(ATTENTION.names()))
    c.one_of(a + "sparse_kernel", sparse_lib.kernel_slots.KERNELS)
    if c.get(a + "sparse_kernel") == "pallas" and _is_positive_int(c.get("seq_len")):
        # The block-sparse kernel's kv blocks span whole 128-lane vregs (or all keys).
        # (sink_window's block_q / block_kv are checked with the other kernel users above.)
        key = {"moba": "sparse_block", "hsa": "sparse_block", "nsa": "nsa_slc_block"}.get(
            c.get(a + "impl")
        )
        block = c.get(a + key) if key else None
        if _is_positive_int(block) and block % 128 and block < c.get("seq_len"):
            c.fail(
                a + key,
                f"must be a multiple of 128 (or >= seq_len) for model.attention.sparse_kernel "
                f"= 'pallas' with model.attention.impl = {c.get(a + 'impl')!r}",
            )
    nsa_keys = ("cmp_block", "cmp_stride", "slc_block", "top_n", "window")
    c.positive_int(*(a + "nsa_" + key for key in nsa_keys))
    for key in ("nsa_init_blocks", "nsa_local_blocks"):
        c.check(a + key, lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    stride = c.get(a + "nsa_cmp_stride")
    if _is_positive_int(stride):
        for key in ("nsa_cmp_block", "nsa_slc_block"):
            c.check(
                a + key,
                lambda v, stride=stride: v % stride == 0,
                f"must be a multiple of model.attention.nsa_cmp_stride = {stride}",
            )
    if c.get(a + "impl") == "s2_attn":
        c.check(
            a + "sparse_block",
            lambda v: v >= 2,
            "must be >= 2 for model.attention.impl = 's2_attn'",
        )
    seq_len = c.get("seq_len")
    if c.get(a + "impl") in TILED_IMPLS and _is_positive_int(seq_len):
        for key in ("block_q", "block_kv"):
            block = c.get(a + key)
            if _is_positive_int(block) and seq_len % block:
                c.fail(
                    "seq_len",
                    f"must be a multiple of model.attention.{key} = {block} "
                    f"for model.attention.impl = {c.get(a + 'impl')!r}",
                )


def _check_scheme_impl(c: _Checker) -> None:
    """Every layer's positional scheme and mask against the attention implementation."""
    from lcm.model import spec as spec_lib  # lcm.model imports this module

    try:
        spec = spec_lib.build_spec(c.config)
    except ValueError as e:
        c.fail("model.attention.impl", str(e))
        return
    a = "model.attention."
    if c.get(a + "impl") == "ring" and c.get(a + "ring_inner") == "pallas":
        hooked = sorted(
            {
                layer.positional
                for layer in spec.period_layers
                if spec.build_positional(layer).logits_fn
            }
        )
        if hooked:
            c.fail(
                a + "ring_inner",
                f"'pallas' cannot run the logits hook of positional scheme(s) {', '.join(hooked)}; "
                "allowed here: 'blockwise'",
            )


def _check_rope_scaling(c: _Checker) -> None:
    p = "model.positional."
    r = p + "rope_scaling."
    c.positive(r + "factor")
    if not c.one_of(r + "rope_type", rope_scaling_lib.ROPE_TYPES):
        return
    rope_type = c.get(r + "rope_type")
    used = rope_scaling_lib.SCALING_KEYS[rope_type]
    for key in rope_scaling_lib.ROPE_SCALING_KEYS[1:]:
        value = c.get(r + key)
        if key in rope_scaling_lib.REQUIRED_KEYS[rope_type] and value is None:
            c.fail(r + key, f"is required when {r}rope_type = {rope_type!r}")
        elif key not in used and value is not None and not (key == "factor" and value == 1.0):
            c.fail(
                r + key,
                f"is not read by {r}rope_type = {rope_type!r} (it reads: "
                f"{', '.join(used) or 'nothing'}); unset it",
            )
    if rope_type == "longrope":
        head_dim, fraction = c.get("model.head_dim"), c.get(p + "partial_rotary_factor")
        pairs = int(head_dim * fraction) // 2 if _is_number(fraction) else None
        for key in ("short_factor", "long_factor"):
            value = c.get(r + key)
            if value is not None and len(value) != pairs:
                c.fail(
                    r + key,
                    f"must have int(head_dim * partial_rotary_factor) / 2 = {pairs} entries",
                )


def _check_positional(c: _Checker) -> None:
    p = "model.positional."
    names = tuple(POSITIONAL.names())
    c.one_of(p + "name", names)
    c.positive(p + "base")
    c.one_of(p + "layout", ROPE_LAYOUTS)
    head_dim = c.get("model.head_dim")
    if c.check(
        p + "partial_rotary_factor",
        lambda v: _is_number(v) and 0 < v <= 1,
        "must be in (0, 1]",
    ) and _is_positive_int(head_dim):
        rotary_dim = int(head_dim * c.get(p + "partial_rotary_factor"))
        c.check(
            p + "partial_rotary_factor",
            lambda v: rotary_dim > 0 and rotary_dim % 2 == 0,
            f"int(model.head_dim * partial_rotary_factor) = {rotary_dim} must be even and > 0",
        )
    _check_rope_scaling(c)
    c.positive(p + "head_scale_init", p + "tapa_alpha")
    c.check(
        p + "tapa_theta",
        lambda v: 0 < v < 1 and float(v * head_dim).is_integer(),
        f"must be in (0, 1) with tapa_theta * model.head_dim ({head_dim}) an integer",
    )
    c.positive_int(
        p + "self_extend_group",
        p + "self_extend_window",
        p + "lm_infinite_local",
        p + "nope_every",
        p + "swa_window",
    )
    c.check(
        p + "lm_infinite_global", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"
    )
    c.check(
        p + "lm_infinite_max_distance",
        lambda v: v is None or _is_positive_int(v),
        "must be None (= lm_infinite_local) or a positive integer",
    )
    used = {c.get(p + "name")}
    if c.one_of(p + "schedule", schedule_lib.SCHEDULES) and c.get(p + "schedule") == "explicit":
        layers = c.get(p + "layers")
        if not layers:
            c.fail(p + "layers", "must be non-empty when model.positional.schedule = 'explicit'")
        for entry in layers:
            try:
                spec = schedule_lib.parse_layer(entry, c.get("model.attention.window"))
            except (ValueError, AttributeError) as e:
                c.fail(p + "layers", str(e))
                continue
            used.add(spec.positional)
            if spec.positional not in names:
                c.fail(p + "layers", f"scheme {spec.positional!r}; allowed: {', '.join(names)}")
    rope_type = c.get(p + "rope_scaling.rope_type")
    for name in sorted(used & {"self_extend", "lm_infinite"}):
        if rope_type in rope_scaling_lib.LENGTH_DEPENDENT:
            c.fail(
                p + "rope_scaling.rope_type",
                f"{name} needs length-independent frequencies; not allowed: "
                f"{', '.join(rope_scaling_lib.LENGTH_DEPENDENT)}",
            )


def _is_tokenizer(v: Any) -> bool:
    path = pathlib.Path(v).expanduser()
    return v == "byte" or (path.suffix in TOKENIZER_SUFFIXES and path.is_file())


def _holds_data(path: str) -> bool:
    """Whether ``path`` is a non-empty file or a directory holding one (not hidden)."""
    root = pathlib.Path(path).expanduser()
    if root.is_file():
        return root.stat().st_size > 0
    return any(
        p.is_file()
        and p.stat().st_size > 0
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        for p in root.rglob("*")
    )


def _check_curriculum(c: _Checker) -> None:
    stages, seq_len = c.get("data.curriculum"), c.get("seq_len")
    shape_ok = c.check(
        "data.curriculum",
        lambda v: all(len(s) == 2 and all(_is_positive_int(x) for x in s) for s in v),
        "must be a tuple of (length, steps) pairs of positive integers",
    )
    if not shape_ok or not _is_positive_int(seq_len):
        return
    lengths = [length for length, _ in stages]
    c.check(
        "data.curriculum",
        lambda v: all(a < b for a, b in itertools.pairwise(lengths)),
        "lengths must increase (shortest first)",
    )
    c.check(
        "data.curriculum",
        lambda v: all(length < seq_len and seq_len % length == 0 for length in lengths),
        f"lengths must be shorter than seq_len = {seq_len} and divide it",
    )
    impl = c.get("model.attention.impl")
    for key in ("block_q", "block_kv"):
        block = c.get(f"model.attention.{key}")
        if impl in TILED_IMPLS and _is_positive_int(block) and any(x % block for x in lengths):
            c.fail(
                "data.curriculum",
                f"lengths must be multiples of model.attention.{key} = {block} "
                f"for model.attention.impl = {impl!r}",
            )


def _check_data(c: _Checker) -> None:
    d = "data."
    c.positive_int("seq_len", d + "batch_size", d + "packing_bins")
    corpus_ok = c.one_of(d + "corpus", tuple(CORPORA.names()))
    if corpus_ok and c.get(d + "corpus") in ("text", "jsonl"):
        if c.check(d + "path", lambda v: bool(v), "is required when data.corpus is text or jsonl"):
            if c.check(
                d + "path",
                lambda v: pathlib.Path(v).expanduser().exists(),
                "no such file or directory (data.corpus text / jsonl reads it)",
            ):
                c.check(
                    d + "path",
                    _holds_data,
                    "is an empty corpus: no non-empty, non-hidden file there",
                )
    if corpus_ok and c.get(d + "corpus") == "jsonl":
        c.check(d + "text_field", lambda v: bool(v), "must be a non-empty field name")
    tokenizer_ok = c.check(
        d + "tokenizer",
        _is_tokenizer,
        "allowed: 'byte' or an existing SentencePiece *.model / Hugging Face *.json file",
    )
    if tokenizer_ok and c.get(d + "tokenizer") == "byte":
        c.check(
            "model.vocab_size",
            lambda v: v >= BYTE_VOCAB_SIZE,
            f"must be >= {BYTE_VOCAB_SIZE} for data.tokenizer = 'byte'",
        )
    c.check(d + "eval_fraction", lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)")
    c.check(d + "split_seed", lambda v: v >= 0, "must be an integer >= 0")
    c.one_of(d + "packing", PACKINGS)
    c.check(d + "synthetic_share", lambda v: _is_number(v) and 0 <= v <= 1, "must be in [0, 1]")
    c.check(
        d + "synthetic_tasks",
        lambda v: isinstance(v, (tuple, list)) and all(t in synthetic.TRAINABLE_TASKS for t in v),
        f"must be a tuple of task names (empty: all) from {', '.join(synthetic.TRAINABLE_TASKS)}",
    )
    c.check(d + "synthetic_documents", _is_positive_int, "must be an integer >= 1")
    c.one_of(d + "synthetic_loss", synthetic.SYNTHETIC_LOSSES)
    _check_curriculum(c)
    _check_recipe(c)


def _is_power_of_two(v: Any) -> bool:
    return _is_positive_int(v) and v & (v - 1) == 0


def _check_recipe(c: _Checker) -> None:
    d = "data."
    if not c.one_of(d + "recipe", recipes_lib.RECIPES):
        return
    recipe = c.get(d + "recipe")
    if recipe != "documents" and _is_number(c.get(d + "synthetic_share")):
        c.check(
            d + "synthetic_share",
            lambda v: v == 0,
            f"must be 0 with data.recipe = {recipe!r} (synthetic rows mix only into 'documents')",
        )
    if not c.get(d + "mask_first_token"):
        c.check(
            d + "packing",
            lambda v: v == "concat",
            "must be 'concat' when data.mask_first_token = False (the next document must "
            "follow in the row)",
        )
        c.check(
            d + "recipe",
            lambda v: v in ("documents", "concat_by_repo", "structured"),
            "mask_first_token = False applies to: 'documents', 'concat_by_repo', 'structured'",
        )
    c.check(
        d + "length_mix",
        lambda v: (
            len(v) > 0
            and all(len(b) == 2 and isinstance(b[0], int) and _is_number(b[1]) for b in v)
            and v[0][0] == 0
            and all(a[0] < b[0] for a, b in itertools.pairwise(v))
            and all(b[1] >= 0 for b in v)
            and math.isclose(sum(b[1] for b in v), 1.0)
        ),
        "must be ((0, w0), (min_tokens, w1), ...) with increasing min_tokens, weights >= 0 "
        "summing to 1",
    )
    c.one_of(d + "structured_relation", recipes_lib.STRUCTURED_RELATIONS)
    c.positive_int(d + "structured_top_k")
    c.check(
        d + "utk_chunk_probs",
        lambda v: (
            len(v) > 0 and all(_is_number(p) and p >= 0 for p in v) and math.isclose(sum(v), 1.0)
        ),
        "must be probabilities of 1, 2, ... chunks: numbers >= 0 summing to 1",
    )
    tokenizer, vocab = c.get(d + "tokenizer"), c.get("model.vocab_size")
    specials = len(recipes_lib.untie_knots.SPECIALS)
    if recipe == "untie_knots" and tokenizer == "byte" and _is_positive_int(vocab):
        c.check(
            "model.vocab_size",
            lambda v: v >= BYTE_VOCAB_SIZE + specials,
            f"must be >= {BYTE_VOCAB_SIZE + specials} for data.recipe = 'untie_knots' "
            f"(256 byte ids and {specials} markers)",
        )
    seq_len = c.get("seq_len")
    c.check(d + "decomposition_min", _is_power_of_two, "must be a power of two")
    if recipe != "decomposition" or not _is_positive_int(seq_len):
        return
    c.check("seq_len", _is_power_of_two, "must be a power of two for data.recipe = 'decomposition'")
    c.check(
        d + "decomposition_min",
        lambda v: v <= seq_len,
        f"must be <= seq_len = {seq_len}",
    )
    lowest = c.get(d + "decomposition_min")
    stages = [s[0] for s in c.get(d + "curriculum")]
    c.check(
        d + "curriculum",
        lambda v: all(_is_power_of_two(x) and x >= lowest for x in stages),
        f"lengths must be powers of two >= data.decomposition_min = {lowest} for "
        "data.recipe = 'decomposition'",
    )
    impl = c.get("model.attention.impl")
    for key in ("block_q", "block_kv"):
        block = c.get(f"model.attention.{key}")
        if impl in TILED_IMPLS and _is_positive_int(block) and _is_positive_int(lowest):
            c.check(
                d + "decomposition_min",
                lambda v, block=block: v % block == 0 or v >= seq_len,
                f"must be a multiple of model.attention.{key} = {block} for "
                f"model.attention.impl = {impl!r}",
            )


def _check_train_eval(c: _Checker) -> None:
    c.check("train.seed", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    c.positive_int(
        "train.num_steps",
        "train.log_every",
        "train.checkpoint_every",
        "train.max_checkpoints",
        "train.grad_accum_steps",
        "train.eval_batches",
    )
    c.positive("train.learning_rate")
    for key in ("train.warmup_steps", "train.eval_every"):
        c.check(key, lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    c.non_negative("train.weight_decay", "train.grad_clip", "train.z_loss", "train.peak_flops")
    c.check("train.min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    c.one_of("train.nonfinite", health.POLICIES)
    c.check(
        "train.spike_factor",
        lambda v: _is_number(v) and (v == 0 or v > 1),
        "must be 0 (off) or a number > 1",
    )
    c.check("train.spike_decay", lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)")
    for key in ("train.adam_b1", "train.adam_b2"):
        c.check(key, lambda v: 0 <= v < 1, "must be in [0, 1)")
    if c.get("train.init_from") is not None:
        c.check("train.init_from", lambda v: bool(v), "must be a workdir path or None")
        c.check(
            "model.hf_path",
            lambda v: v is None,
            "must be None when train.init_from is set (both give the initial weights)",
        )
    accum, batch = c.get("train.grad_accum_steps"), c.get("data.batch_size")
    if _is_positive_int(accum) and _is_positive_int(batch) and batch % accum:
        c.fail("data.batch_size", f"must be a multiple of train.grad_accum_steps = {accum}")
    c.check(
        "eval.lengths",
        lambda v: len(v) > 0 and all(_is_positive_int(x) for x in v),
        "must be a non-empty tuple of positive integers",
    )
    c.one_of("eval.protocol", EVAL_PROTOCOLS)
    c.positive_int("eval.num_documents", "eval.samples_per_cell", "eval.batch_size")
    c.one_of("eval.init", EVAL_INITS)
    c.check("eval.seed", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    lengths = c.get("eval.lengths")
    shortest = min(lengths) if lengths and all(_is_positive_int(x) for x in lengths) else None
    c.check(
        "eval.stride",
        lambda v: isinstance(v, int) and 0 <= v and (shortest is None or v <= shortest),
        f"must be an integer in [0, min(eval.lengths) = {shortest}] (0 = length // 8)",
    )
    tasks = ("perplexity", *synthetic.TASKS)
    c.check(
        "eval.tasks",
        lambda v: len(v) > 0 and all(t in tasks for t in v),
        f"must be a non-empty tuple of: {', '.join(tasks)}",
    )
    c.check(
        "eval.depths",
        lambda v: len(v) > 0 and all(_is_number(d) and 0 <= d <= 1 for d in v),
        "must be a non-empty tuple of numbers in [0, 1]",
    )
    c.check(
        "eval.label",
        lambda v: re.fullmatch(r"[A-Za-z0-9_.+=-]*", v) and v not in (".", ".."),
        "must be a directory name: letters, digits and _ . + = - only",
    )
    c.check(
        "eval.compare",
        lambda v: all(isinstance(p, str) for p in v),
        "must be a tuple of results.json paths",
    )


def _check_inference(c: _Checker) -> None:
    i = "inference."
    c.one_of(i + "attention_impl", DECODE_IMPLS)
    c.positive_int(i + "prefill_chunk", i + "max_new_tokens", i + "snapkv_window")
    for key in ("sink", "recent", "seed"):
        c.check(i + key, lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    c.check(i + "snapkv_kernel", lambda v: _is_positive_int(v) and v % 2, "must be odd and >= 1")
    c.one_of(i + "caote_base", CAOTE_BASES)
    c.non_negative(i + "temperature")
    c.check(i + "top_p", lambda v: _is_number(v) and 0 < v <= 1, "must be in (0, 1]")
    policy, budget = c.get(i + "cache_policy"), c.get(i + "budget")
    if policy is None:
        if budget is not None:
            c.fail(i + "budget", "must be None without inference.cache_policy (full cache)")
        return
    if not c.one_of(i + "cache_policy", CACHE_POLICIES):
        return
    if not c.check(i + "budget", _is_positive_int, f"must be a positive integer for {policy!r}"):
        return
    base = c.get(i + "caote_base") if policy == "caote" else policy
    forced = {
        "streaming_llm": ("inference.sink + 1", c.get(i + "sink") + 1),
        "h2o": ("inference.recent", c.get(i + "recent")),
        "snapkv": ("inference.snapkv_window", c.get(i + "snapkv_window")),
    }.get(base)
    if forced and isinstance(forced[1], int) and budget < forced[1]:
        c.fail(i + "budget", f"must be >= {forced[0]} = {forced[1]} for {policy!r}")


def _check_mesh(c: _Checker, num_devices: int | None) -> None:
    try:
        mesh_lib.check_axes(c.get("mesh.axes"), c.get("mesh.shape"), c.get("mesh.axis_types"))
        sharding.validate_rules(c.get("mesh.rules"), c.get("mesh.axes"))
        if num_devices is None:
            return
        shape = mesh_lib.resolve_shape(c.get("mesh.shape"), num_devices)
    except ValueError as e:
        c.errors.append(f"config.{e}")
        return
    sizes = dict(zip(c.get("mesh.axes"), shape, strict=True))
    batch_shards = sizes["data"] * sizes["fsdp"]
    batch, accum = c.get("data.batch_size"), c.get("train.grad_accum_steps")
    if _is_positive_int(batch) and batch % batch_shards:
        c.fail("data.batch_size", f"must be a multiple of mesh data*fsdp = {batch_shards}")
    elif _is_positive_int(batch) and _is_positive_int(accum) and (batch // accum) % batch_shards:
        c.fail(
            "data.batch_size",
            f"must be a multiple of train.grad_accum_steps x mesh data*fsdp = "
            f"{accum} x {batch_shards}: every micro-batch is sharded like the batch",
        )
    if c.get("model.attention.impl") == "ring" and _is_positive_int(c.get("seq_len")):
        axis, layout = c.get("model.attention.ring_axis"), c.get("model.attention.ring_layout")
        chunks = sizes[axis] * (2 if layout == "zigzag" else 1)
        if c.get("seq_len") % chunks:
            c.fail(
                "seq_len",
                f"must be a multiple of {chunks} for the {layout!r} ring layout over mesh "
                f"axis {axis!r} of size {sizes[axis]}",
            )
    if _is_positive_int(c.get("seq_len")) and c.get("seq_len") % sizes["context"]:
        c.fail("seq_len", f"must be a multiple of the mesh context size {sizes['context']}")
    stages = c.get("data.curriculum")
    lengths = [s[0] for s in stages if isinstance(s, tuple | list) and len(s) == 2]
    if any(_is_positive_int(x) and x % sizes["context"] for x in lengths):
        c.fail(
            "data.curriculum",
            f"lengths must be multiples of the mesh context size {sizes['context']}",
        )
    kv_heads = c.get("model.num_kv_heads")
    if _is_positive_int(kv_heads) and kv_heads % sizes["tensor"]:
        c.fail(
            "model.num_kv_heads", f"must be a multiple of the mesh tensor size {sizes['tensor']}"
        )


def validate(config: ConfigDict, *, num_devices: int | None = None) -> ConfigDict:
    """Checks ``config`` against the schema and rules; returns it unchanged or raises.

    Args:
      config: a config built from ``configs/base.py``.
      num_devices: when given, also checks the mesh against this many devices and the batch,
        sequence and head counts against the mesh axis sizes.

    Raises:
      ValueError: listing every problem, one per line, each naming the key.
    """
    c = _Checker(config)
    _check_schema(c, base_config())
    if not c.errors:  # the rules below assume every key exists with a sensible type
        _check_model(c)
        _check_data(c)
        _check_train_eval(c)
        _check_inference(c)
        _check_mesh(c, num_devices)
    if not c.errors:  # needs every model field valid
        _check_scheme_impl(c)
    if c.errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(c.errors))
    return config
