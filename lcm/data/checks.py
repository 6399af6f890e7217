"""``config.data`` checks (and ``seq_len``): corpus, tokenizer, packing, curriculum, recipes.

Names come from their owners: corpora from the ``CORPORA`` registry, packings from
``packing``, recipes from ``recipes``, synthetic tasks from ``synthetic``. Lengths the data
feeds the model must divide into the attention tiles (``lcm.attention.checks.tile_blocks``).
"""

from __future__ import annotations

import itertools
import math
import pathlib
from typing import Any

from lcm import checks
from lcm.attention import checks as attention_checks
from lcm.data import recipes as recipes_lib
from lcm.data import synthetic
from lcm.data.corpora import CORPORA
from lcm.data.packing import PACKINGS
from lcm.data.tokenizers import BYTE_VOCAB_SIZE, SUFFIXES

D = "data."


def _is_tokenizer(v: Any) -> bool:
    path = pathlib.Path(v).expanduser()
    return v == "byte" or (path.suffix in SUFFIXES and path.is_file())


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


def _check_curriculum(e: checks.Errors) -> None:
    stages, seq_len = e.get(D + "curriculum"), e.get("seq_len")
    shape_ok = e.check(
        D + "curriculum",
        lambda v: all(len(s) == 2 and all(checks.is_positive_int(x) for x in s) for s in v),
        "must be a tuple of (length, steps) pairs of positive integers",
    )
    if not shape_ok or not checks.is_positive_int(seq_len):
        return
    lengths = [length for length, _ in stages]
    e.check(
        D + "curriculum",
        lambda v: all(a < b for a, b in itertools.pairwise(lengths)),
        "lengths must increase (shortest first)",
    )
    e.check(
        D + "curriculum",
        lambda v: all(length < seq_len and seq_len % length == 0 for length in lengths),
        f"lengths must be shorter than seq_len = {seq_len} and divide it",
    )
    impl = e.get("model.attention.impl")
    for key, block in attention_checks.tile_blocks(e.config).items():
        if any(x % block for x in lengths):
            e.fail(
                D + "curriculum",
                f"lengths must be multiples of model.attention.{key} = {block} "
                f"for model.attention.impl = {impl!r}",
            )


def check_config(e: checks.Errors) -> None:
    e.positive_int("seq_len", D + "batch_size", D + "packing_bins")
    corpus_ok = e.one_of(D + "corpus", CORPORA.names())
    if corpus_ok and e.get(D + "corpus") in ("text", "jsonl"):
        if e.check(D + "path", lambda v: bool(v), "is required when data.corpus is text or jsonl"):
            if e.check(
                D + "path",
                lambda v: pathlib.Path(v).expanduser().exists(),
                "no such file or directory (data.corpus text / jsonl reads it)",
            ):
                e.check(
                    D + "path",
                    _holds_data,
                    "is an empty corpus: no non-empty, non-hidden file there",
                )
    if corpus_ok and e.get(D + "corpus") == "jsonl":
        e.check(D + "text_field", lambda v: bool(v), "must be a non-empty field name")
    tokenizer_ok = e.check(
        D + "tokenizer",
        _is_tokenizer,
        "allowed: 'byte' or an existing SentencePiece *.model / Hugging Face *.json file",
    )
    if tokenizer_ok and e.get(D + "tokenizer") == "byte":
        e.check(
            "model.vocab_size",
            lambda v: v >= BYTE_VOCAB_SIZE,
            f"must be >= {BYTE_VOCAB_SIZE} for data.tokenizer = 'byte'",
        )
    e.check(D + "eval_fraction", lambda v: checks.is_number(v) and 0 <= v < 1, "must be in [0, 1)")
    e.check(D + "split_seed", lambda v: v >= 0, "must be an integer >= 0")
    e.one_of(D + "packing", PACKINGS)
    e.check(
        D + "synthetic_share", lambda v: checks.is_number(v) and 0 <= v <= 1, "must be in [0, 1]"
    )
    e.check(
        D + "synthetic_tasks",
        lambda v: isinstance(v, (tuple, list)) and all(t in synthetic.TRAINABLE_TASKS for t in v),
        f"must be a tuple of task names (empty: all) from {', '.join(synthetic.TRAINABLE_TASKS)}",
    )
    e.check(D + "synthetic_documents", checks.is_positive_int, "must be an integer >= 1")
    e.one_of(D + "synthetic_loss", synthetic.SYNTHETIC_LOSSES)
    _check_curriculum(e)
    _check_recipe(e)


def _check_recipe(e: checks.Errors) -> None:
    if not e.one_of(D + "recipe", recipes_lib.RECIPES):
        return
    recipe = e.get(D + "recipe")
    if recipe != "documents" and checks.is_number(e.get(D + "synthetic_share")):
        e.check(
            D + "synthetic_share",
            lambda v: v == 0,
            f"must be 0 with data.recipe = {recipe!r} (synthetic rows mix only into 'documents')",
        )
    if not e.get(D + "mask_first_token"):
        e.check(
            D + "packing",
            lambda v: v == "concat",
            "must be 'concat' when data.mask_first_token = False (the next document must "
            "follow in the row)",
        )
        e.check(
            D + "recipe",
            lambda v: v in ("documents", "concat_by_repo", "structured"),
            "mask_first_token = False applies to: 'documents', 'concat_by_repo', 'structured'",
        )
    e.check(
        D + "length_mix",
        lambda v: (
            len(v) > 0
            and all(len(b) == 2 and isinstance(b[0], int) and checks.is_number(b[1]) for b in v)
            and v[0][0] == 0
            and all(a[0] < b[0] for a, b in itertools.pairwise(v))
            and all(b[1] >= 0 for b in v)
            and math.isclose(sum(b[1] for b in v), 1.0)
        ),
        "must be ((0, w0), (min_tokens, w1), ...) with increasing min_tokens, weights >= 0 "
        "summing to 1",
    )
    e.one_of(D + "structured_relation", recipes_lib.STRUCTURED_RELATIONS)
    e.positive_int(D + "structured_top_k")
    e.check(
        D + "utk_chunk_probs",
        lambda v: (
            len(v) > 0
            and all(checks.is_number(p) and p >= 0 for p in v)
            and math.isclose(sum(v), 1.0)
        ),
        "must be probabilities of 1, 2, ... chunks: numbers >= 0 summing to 1",
    )
    tokenizer, vocab = e.get(D + "tokenizer"), e.get("model.vocab_size")
    specials = len(recipes_lib.untie_knots.SPECIALS)
    if recipe == "untie_knots" and tokenizer == "byte" and checks.is_positive_int(vocab):
        e.check(
            "model.vocab_size",
            lambda v: v >= BYTE_VOCAB_SIZE + specials,
            f"must be >= {BYTE_VOCAB_SIZE + specials} for data.recipe = 'untie_knots' "
            f"({BYTE_VOCAB_SIZE} byte ids and {specials} markers)",
        )
    seq_len = e.get("seq_len")
    e.check(D + "decomposition_min", checks.is_power_of_two, "must be a power of two")
    if recipe != "decomposition" or not checks.is_positive_int(seq_len):
        return
    e.check(
        "seq_len",
        checks.is_power_of_two,
        "must be a power of two for data.recipe = 'decomposition'",
    )
    e.check(D + "decomposition_min", lambda v: v <= seq_len, f"must be <= seq_len = {seq_len}")
    lowest = e.get(D + "decomposition_min")
    stages = [s[0] for s in e.get(D + "curriculum")]
    e.check(
        D + "curriculum",
        lambda v: all(checks.is_power_of_two(x) and x >= lowest for x in stages),
        f"lengths must be powers of two >= data.decomposition_min = {lowest} for "
        "data.recipe = 'decomposition'",
    )
    if not checks.is_positive_int(lowest):
        return
    for key, block in attention_checks.tile_blocks(e.config).items():
        e.check(
            D + "decomposition_min",
            lambda v, block=block: v % block == 0 or v >= seq_len,
            attention_checks.tile_message(e.config, key, block),
        )
