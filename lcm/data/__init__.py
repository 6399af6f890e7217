"""Data: tokenizer, corpora, token cache and grain pipelines with document-aware packing.

Public API (``config`` is a validated config; see ``config.data`` in ``configs/base.py``)::

    data = lcm.data.load_data(config, workdir=workdir)   # tokenizes once, then reads the cache
    data.manifest        # dict logged and written to workdir/data_manifest.json (process 0)
    it = data.train_iterator()          # endless; == lcm.data.make_train_iterator(config, ...)
    batch = next(it)     # dict of int32 numpy arrays [batch_size // process_count, seq_len]:
                         # inputs, targets, segment_ids, positions, loss_mask
    state = it.get_state(); it.set_state(state)   # small JSON dict; exact resume
    # orbax: ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it)) / CheckpointRestore
    for batch in data.eval_iterator(): ...        # one pass over the held-out split, same keys
                                                  # and shapes; padded with empty rows/batches so
                                                  # every host runs the same number of steps
    docs = data.eval_documents()   # [EvalDocument(name, tokens int32 [n])], whole held-out docs

Batch semantics (``lcm.data.packing``): ``targets`` are the next tokens of ``inputs`` within the
same document; ``segment_ids`` number the documents of a row 1, 2, ... (0 = padding) with
``config.data.document_masking`` (default), else one segment per row; ``positions`` restart at
0 per document (per row without document masking); ``loss_mask = segment_ids != 0``. With a
curriculum (``config.data.curriculum``) early batches have shape
``[batch_size * seq_len // length // process_count, length]``.

Modules: ``tokenizers`` (byte default, SentencePiece / Hugging Face files), ``corpora`` (stdlib,
stdlib_files, text, jsonl; the ``CORPORA`` registry; the held-out split), ``cache`` (tensorstore
zarr token cache), ``packing`` (pieces, per-host shard, grain packers), ``recipes`` (training-data
recipes selected by ``config.data.recipe``: concat-by-repository, structured packing, Untie the
Knots, dataset decomposition), ``pipeline`` (the entry points).
"""

from lcm.data import synthetic  # registers the synthetic_tasks corpus
from lcm.data.cache import TokenizedCorpus, tokenize_corpus
from lcm.data.corpora import CORPORA, Corpus, Document
from lcm.data.pipeline import (
    Data,
    EvalDocument,
    TrainIterator,
    load_data,
    make_eval_documents,
    make_eval_iterator,
    make_train_iterator,
)
from lcm.data.tokenizers import ByteTokenizer, load_tokenizer

__all__ = [
    "CORPORA",
    "ByteTokenizer",
    "Corpus",
    "Data",
    "Document",
    "EvalDocument",
    "TokenizedCorpus",
    "TrainIterator",
    "load_data",
    "load_tokenizer",
    "make_eval_documents",
    "make_eval_iterator",
    "make_train_iterator",
    "synthetic",
    "tokenize_corpus",
]
