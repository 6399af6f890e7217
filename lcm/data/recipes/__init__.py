"""Long-context training-data recipes (reference notes §3), selected by ``config.data.recipe``.

Every recipe is a grain pipeline over the tokenized corpus, deterministic from
``config.train.seed`` (plus the curriculum stage), endless, and checkpointable like the plain
pipeline (``get_state`` / ``set_state`` resume exactly). Batches have the usual five int32
features (``lcm.data.packing``). Recipes change *training* batches only: held-out evaluation
batches always come from the plain pipeline, so losses stay comparable across recipes.

- ``documents`` (default): each corpus document is a unit, assembled into rows by
  ``config.data.packing`` (``lcm.data.packing``). ``packing = concat`` with
  ``document_masking = False`` is concat-and-chunk; ``first_fit`` / ``best_fit`` with document
  masking is document-masked packing.
- ``concat_by_repo`` (ProLong, Gao et al. 2024, arXiv 2410.02660): the files of each
  repository (``corpora.repository``) concatenated in path order into one unit; units are put in
  length buckets (``config.data.length_mix``, ``(min_tokens, weight)`` pairs) and each packed
  row is drawn from bucket ``b`` with probability ``weight_b`` (``grain.IterDataset.mix``), so
  long and short units appear at the configured proportions whatever the corpus holds.
- ``structured`` (SPLiCe, Staniszewski et al. 2025, arXiv 2312.17296): units built by a
  breadth-first walk over related documents (``lcm.data.recipes.structured``), each document used
  once.
- ``untie_knots`` (UtK, Tian et al. 2024, arXiv 2409.04774): rows of chunks of several documents
  shuffled, with boundary markers and an optional chunk-order task
  (``lcm.data.recipes.untie_knots``).
- ``decomposition`` (Dataset Decomposition, Pouransari et al. 2024): power-of-two length
  buckets, one bucket per step, constant tokens per step (``lcm.data.recipes.decomposition``).

Options shared by the unit recipes (``documents``, ``concat_by_repo``, ``structured``):
``document_masking`` (segments per unit, or one per row) and ``mask_first_token``. With
``mask_first_token = True`` (the plain pipeline's behavior, and ProLong's ``-100`` label on each
document's first token) a unit's first token is never a target. With ``False`` (requires
``packing = concat``) the units form one stream in a seeded order, each unit's last token
followed by the next unit's first: plain concat-and-chunk, every token of the stream predicted
from the one before it, each row one ``seq_len`` stretch (the stream's last partial row is
dropped). Units (or that stream) are cut into ``seq_len`` pieces that are shuffled across units
every epoch (``units.packed_rows``), so a batch holds pieces of many units. ``untie_knots`` rows
are one segment each and ``decomposition`` sequences come from one document each; both ignore
``packing`` and ``document_masking``.
"""

from __future__ import annotations

import hashlib
import weakref

import grain

from lcm.data.recipes import decomposition, structured, units, untie_knots

RECIPES = ("documents", "concat_by_repo", "structured", "untie_knots", "decomposition")
STRUCTURED_RELATIONS = structured.RELATIONS


def derive_seed(seed: int, *keys) -> int:
    """A 31-bit seed from ``seed`` and ``keys`` (stable across runs and machines)."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") >> 1


def is_recipe(data_config) -> bool:
    """Whether training batches come from this package (not the plain ``lcm.data.packing``)."""
    return data_config.recipe != "documents" or not data_config.mask_first_token


_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Data -> {key: dataset}


def train_batches(data, length: int, *, seed: int, host: int) -> grain.IterDataset:
    """``_build`` once per ``(data, length, seed, host)``: plans are costly, datasets immutable."""
    built = _BUILT.setdefault(data, {})
    if (length, seed, host) not in built:
        built[length, seed, host] = _build(data, length, seed=seed, host=host)
    return built[length, seed, host]


def _build(data, length: int, *, seed: int, host: int) -> grain.IterDataset:
    """Host ``host``'s endless training batches of ``config.data.recipe`` at row ``length``.

    Args:
      data: an ``lcm.data.pipeline.Data`` (corpus, training split, tokenizer, config).
      length: row length (the curriculum stage's, else ``seq_len``); ``decomposition``: the
        longest bucket.
      seed: the stage's seed.
      host: this host's index in ``[0, data.process_count)``.
    """
    config, d = data.config, data.config.data
    count = data.process_count
    step_tokens = d.batch_size * d.seq_len // count  # tokens per step on this host
    if d.recipe == "decomposition":
        return decomposition.batches(
            data.corpus,
            data.train_ids,
            min_length=d.decomposition_min,
            max_length=length,
            step_tokens=d.batch_size * d.seq_len,
            seed=seed,
            process_index=host,
            process_count=count,
        )
    if d.recipe == "untie_knots":
        return untie_knots.batches(
            data.corpus,
            data.train_ids,
            length=length,
            rows=step_tokens // length,
            options=untie_knots.Options(
                chunk_probs=tuple(d.utk_chunk_probs),
                keep_order=d.utk_keep_order,
                sort_task=d.utk_sort_task,
            ),
            tokenizer=data.tokenizer,
            vocab_size=config.model.vocab_size,
            seed=seed,
            process_index=host,
            process_count=count,
        )
    if d.recipe == "structured":
        plan = structured.units(
            data.corpus,
            data.train_ids,
            target=length + 1,
            relation=d.structured_relation,
            top_k=d.structured_top_k,
            seed=derive_seed(seed, "structured"),
        )
        buckets, weights = [plan], [1.0]
    elif d.recipe == "concat_by_repo":
        buckets, weights = units.by_length(
            units.repositories(data.corpus, data.train_ids), tuple(d.length_mix)
        )
    else:
        buckets, weights = [units.documents(data.corpus, data.train_ids)], [1.0]
    streams = [
        units.packed_rows(
            data.corpus,
            plan,
            length=length,
            packing=d.packing,
            packing_bins=d.packing_bins,
            mask_first_token=d.mask_first_token,
            seed=derive_seed(seed, "bucket", b),
            process_index=host,
            process_count=count,
        )
        for b, plan in enumerate(buckets)
    ]
    return units.finish(streams, weights, rows=step_tokens // length, length=length, d=d)


__all__ = [
    "RECIPES",
    "STRUCTURED_RELATIONS",
    "decomposition",
    "derive_seed",
    "is_recipe",
    "structured",
    "train_batches",
    "units",
    "untie_knots",
]
