"""From ``config.data`` to training and evaluation batches (see ``lcm.data`` for the API).

The sequence-length curriculum (``config.data.curriculum``, e.g. ``((64, 100), (128, 100))``)
trains the first 100 steps on rows of 64 tokens, the next 100 on rows of 128, and the rest at
``config.data.seq_len``; shortest first, like the power-of-two length buckets of Dataset
Decomposition (Pouransari et al., NeurIPS 2024). Each stage keeps the tokens per step constant:
``batch_size * seq_len / length`` rows of ``length``, its documents cut into ``length`` pieces and
reshuffled with the stage's own seed. Batch shapes change at stage boundaries (one compile per
stage).

With ``config.data.synthetic_share = s > 0``, ``round(s * rows)`` rows of every training batch
are packed from the ``synthetic_tasks`` corpus (``lcm.data.synthetic``: passkey and RULER-style
retrieval documents at ``seq_len`` bytes, each about one row) and the rest from
``config.data.corpus``; the two streams are shuffled and checkpointed together. Evaluation
batches and documents never contain synthetic rows.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from lcm.data import packing as packing_lib
from lcm.data import recipes as recipes_lib
from lcm.data.cache import TokenizedCorpus, tokenize_corpus
from lcm.data.corpora import CORPORA, repository, split_by_name
from lcm.data.tokenizers import load_tokenizer

MANIFEST_FILE = "data_manifest.json"  # written to the workdir by process 0


class EvalDocument(NamedTuple):
    name: str  # corpus document name (stdlib: the package)
    tokens: np.ndarray  # int32 [n], the whole document


class TrainIterator(grain.DatasetIterator):
    """Endless training batches; a grain iterator, so orbax checkpoints it.

    ``get_state()`` is a small JSON-able dict (the step and the current stage's grain state);
    ``set_state`` of it continues with exactly the batches that would have followed. Save it
    with ``grain.checkpoint.CheckpointSave(it)`` inside ``ocp.args.Composite``.
    """

    def __init__(self, data: Data, stages: list[tuple[int, int | None]]):
        super().__init__()
        self._data = data
        self._stages = stages  # (length, last step of the stage, exclusive; None = endless)
        self._step = 0
        self._stage = 0
        self._it = self._open(0)

    def _open(self, stage: int) -> grain.DatasetIterator:
        length = self._stages[stage][0]
        return iter(self._data.batches(length, train=True, seed_offset=stage))

    def _stage_of(self, step: int) -> int:
        return next(i for i, (_, end) in enumerate(self._stages) if end is None or step < end)

    def __next__(self) -> dict[str, np.ndarray]:
        stage = self._stage_of(self._step)
        if stage != self._stage:
            self._it.close()
            self._stage, self._it = stage, self._open(stage)
        batch = next(self._it)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, "stage": self._stage, "stage_state": self._it.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.close()
        self._step, self._stage = int(state["step"]), int(state["stage"])
        self._it = self._open(self._stage)
        self._it.set_state(state["stage_state"])

    def start_prefetch(self) -> None:
        self._it.start_prefetch()

    def close(self) -> None:
        self._it.close()
        super().close()

    @property
    def manifest(self) -> dict[str, Any]:
        return self._data.manifest


class Data:
    """A corpus tokenized (through the cache), split, and ready to batch; see ``load_data``."""

    def __init__(
        self,
        config: ConfigDict,
        *,
        workdir: str | pathlib.Path | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        data = config.data
        self.config = config
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if data.batch_size % self.process_count:
            raise ValueError(
                f"config.data.batch_size = {data.batch_size}: must be a multiple of the "
                f"{self.process_count} hosts"
            )
        tokenizer = load_tokenizer(data.tokenizer)
        if tokenizer.vocab_size > config.model.vocab_size:
            raise ValueError(
                f"config.model.vocab_size = {config.model.vocab_size}: must be >= "
                f"{tokenizer.vocab_size}, the vocabulary of config.data.tokenizer = "
                f"{data.tokenizer!r}"
            )
        self.tokenizer = tokenizer
        self.corpus: TokenizedCorpus = tokenize_corpus(
            CORPORA.get(data.corpus)(data), tokenizer, data.cache_dir
        )
        self.synthetic: TokenizedCorpus | None = None
        self.answer_tokens: np.ndarray | None = None  # per synthetic document, answer-only loss
        if data.synthetic_share > 0:
            synthetic_corpus = CORPORA.get("synthetic_tasks")(data)
            self.synthetic = tokenize_corpus(synthetic_corpus, tokenizer, data.cache_dir)
            if not len(self.synthetic):
                raise ValueError(
                    f"config.data.synthetic_share = {data.synthetic_share}: no task of "
                    f"{synthetic_corpus.manifest['tasks']} fits config.data.seq_len = "
                    f"{data.seq_len} tokens (passkey needs about 250)"
                )
            if data.synthetic_loss == "answer":
                self.answer_tokens = _answer_tokens(synthetic_corpus, self.synthetic, tokenizer)
        names = self.corpus.names
        by_repo = self.corpus.manifest.get("split_by") == "repository"  # file-level corpora
        groups = [repository(n) for n in names] if by_repo else None
        held_out = split_by_name(names, data.eval_fraction, data.split_seed, groups=groups)
        self.train_ids = np.flatnonzero(~held_out)
        self.eval_ids = np.flatnonzero(held_out)
        self.manifest = {
            **self.corpus.manifest,
            "split_seed": data.split_seed,
            "eval_fraction": data.eval_fraction,
            "train_documents": len(self.train_ids),
            "eval_documents": len(self.eval_ids),
            "train_tokens": int(self.corpus.lengths[self.train_ids].sum()),
            "eval_tokens": int(self.corpus.lengths[self.eval_ids].sum()),
            "eval_names": [self.corpus.names[i] for i in self.eval_ids],
        }
        if self.synthetic is not None:
            self.manifest["synthetic"] = {
                **self.synthetic.manifest,
                "share": data.synthetic_share,
                "tokens": int(self.synthetic.lengths.sum()),
            }
        self._eval_steps: int | None = None
        logging.info("data manifest: %s", json.dumps(self.manifest))
        if workdir is not None and self.process_index == 0:
            path = pathlib.Path(workdir)
            path.mkdir(parents=True, exist_ok=True)
            (path / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2) + "\n")

    def batches(
        self, length: int, *, train: bool, seed_offset: int = 0, host: int | None = None
    ) -> grain.IterDataset:
        """Host ``host``'s (default: this host's) share of batches of rows of ``length`` tokens.

        A global batch holds ``batch_size * seq_len`` tokens, ``1 / process_count`` per host.
        Training batches follow ``config.data.recipe`` (``lcm.data.recipes``).
        """
        data = self.config.data
        ids = self.train_ids if train else self.eval_ids
        if not len(ids):
            split = "training" if train else "held-out"
            raise ValueError(
                f"config.data.eval_fraction = {data.eval_fraction}: no {split} documents "
                f"among the corpus's {len(self.corpus)}"
            )
        seed = self.config.train.seed + seed_offset
        host = self.process_index if host is None else host
        if train and recipes_lib.is_recipe(data):
            return recipes_lib.train_batches(self, length, seed=seed, host=host)
        rows = data.batch_size * data.seq_len // length // self.process_count
        synthetic_rows = self._synthetic_rows(length) if train else 0

        def packed(
            corpus: TokenizedCorpus, doc_ids: np.ndarray, rows: int, answer_tokens=None
        ) -> grain.IterDataset:
            return packing_lib.batches(
                corpus,
                doc_ids,
                length=length,
                rows=rows,
                packing=data.packing,
                document_masking=data.document_masking,
                packing_bins=data.packing_bins,
                seed=seed,
                train=train,
                process_index=host,
                process_count=self.process_count,
                answer_tokens=answer_tokens,
            )

        if not synthetic_rows:
            return packed(self.corpus, ids, rows)
        extra = packed(
            self.synthetic, np.arange(len(self.synthetic)), synthetic_rows, self.answer_tokens
        )
        if synthetic_rows == rows:
            return extra
        main = packed(self.corpus, ids, rows - synthetic_rows)
        return grain.experimental.ZipIterDataset([main, extra]).map(_stack_rows)

    def _synthetic_rows(self, length: int) -> int:
        """Synthetic rows per host batch of rows of ``length`` (0 when the share is 0)."""
        share = self.config.data.synthetic_share
        if self.synthetic is None:
            return 0
        rows = self.config.data.batch_size * self.config.data.seq_len // length
        rows //= self.process_count
        synthetic_rows = round(share * rows)
        if not (0 < synthetic_rows < rows or share == 1):
            raise ValueError(
                f"config.data.synthetic_share = {share}: gives {synthetic_rows} of the {rows} "
                f"rows per host batch at length {length}; must give between 1 and {rows - 1} "
                "(or be 1: every row synthetic)"
            )
        return synthetic_rows

    def train_iterator(self) -> TrainIterator:
        """Endless training batches following ``config.data.curriculum``."""
        stages: list[tuple[int, int | None]] = []
        end = 0
        for length, steps in self.config.data.curriculum:
            end += steps
            stages.append((int(length), end))
        stages.append((self.config.data.seq_len, None))
        for length, _ in stages:  # a bad synthetic share fails here, not at a later stage
            self._synthetic_rows(length)
        return TrainIterator(self, stages)

    def eval_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        """One ordered pass over the held-out documents at ``seq_len``; a fresh one per call.

        Every host yields the same number of batches (the most any host's share packs into),
        topping its own up with empty ones (``loss_mask`` all 0), so multi-host evaluation
        steps stay in lockstep. The count is computed once, by packing every host's share.
        """
        length = self.config.data.seq_len
        if self._eval_steps is None:
            self._eval_steps = max(
                sum(1 for _ in self.batches(length, train=False, host=h))
                for h in range(self.process_count)
            )
        return self._eval_stream(self.batches(length, train=False), self._eval_steps)

    def _eval_stream(self, batches: grain.IterDataset, steps: int) -> Iterator[dict[str, Any]]:
        count = 0
        for batch in batches:
            count += 1
            yield batch
        rows = self.config.data.batch_size // self.process_count
        length, masking = self.config.data.seq_len, self.config.data.document_masking
        for _ in range(steps - count):
            yield packing_lib.empty_batch(rows, length, masking)

    def eval_documents(self) -> list[EvalDocument]:
        """Every held-out document, whole, sorted by name."""
        return [EvalDocument(self.corpus.names[i], self.corpus.document(i)) for i in self.eval_ids]


def _answer_tokens(corpus, tokenized: TokenizedCorpus, tokenizer) -> np.ndarray:
    """Per document, the trailing tokens that encode its ``answer`` (beyond its prompt's)."""
    assert [d.name for d in corpus.documents] == tokenized.names
    return np.array(
        [
            n - len(tokenizer.encode(d.text[: len(d.text) - len(d.answer)]))
            for d, n in zip(corpus.documents, tokenized.lengths, strict=True)
        ],
        dtype=np.int64,
    )


def _stack_rows(pair: tuple[dict, dict]) -> dict[str, np.ndarray]:
    """grain map: a corpus batch and a synthetic batch -> one batch, synthetic rows last."""
    main, extra = pair
    return {k: np.concatenate([main[k], extra[k]]) for k in main}


def load_data(
    config: ConfigDict,
    *,
    workdir: str | pathlib.Path | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Data:
    """Loads, tokenizes (or reads from the cache) and splits the corpus of ``config.data``.

    Args:
      config: a validated config.
      workdir: when given, process 0 writes the data manifest to ``workdir/data_manifest.json``.
      process_index: this host (default ``jax.process_index()``).
      process_count: number of hosts (default ``jax.process_count()``).
    """
    return Data(config, workdir=workdir, process_index=process_index, process_count=process_count)


def make_train_iterator(
    config: ConfigDict, *, workdir: str | pathlib.Path | None = None
) -> TrainIterator:
    """``load_data(config, workdir=workdir).train_iterator()``."""
    return load_data(config, workdir=workdir).train_iterator()


def make_eval_iterator(
    config: ConfigDict, *, workdir: str | pathlib.Path | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """``load_data(config, workdir=workdir).eval_iterator()``."""
    return load_data(config, workdir=workdir).eval_iterator()


def make_eval_documents(config: ConfigDict) -> list[EvalDocument]:
    """``load_data(config).eval_documents()``."""
    return load_data(config).eval_documents()
