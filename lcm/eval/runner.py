"""``evaluate(config, workdir)``: load a model, run ``config.eval.tasks``, write results and plots.

Parameters come from the newest readable checkpoint in ``workdir/checkpoints`` (train state
only, no data iterator) or, with ``config.eval.init = "random"``, from a fresh initialization
with ``config.train.seed``. The model is built from the *evaluation* config, so a training-free
context extension is a config override at eval time (``--config.model.positional.rope_scaling.
rope_type=yarn``, ``--config.model.positional.name=self_extend``, ...): those schemes have no
parameters of their own, so the tree matches a checkpoint trained with plain RoPE. Evaluation
runs on one device (no mesh), so ``ring`` attention is refused; ``blockwise`` (the default)
never builds a ``[T, S]`` matrix and runs at any length.

Outputs in ``workdir/eval/`` (or ``workdir/eval/<label>/``): ``results.json``,
``perplexity.png`` (this run plus every other ``results.json`` under ``workdir/eval`` and in
``config.eval.compare``), ``heatmap_<task>.png`` per depth-swept task. A table is printed.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcm import attention as attention_lib
from lcm import config as config_lib
from lcm import data as data_lib
from lcm import hf
from lcm import model as model_lib
from lcm.data import synthetic
from lcm.eval import perplexity, plots, tasks
from lcm.parallel import mesh as mesh_lib
from lcm.train import checkpoint, optimizer
from lcm.train import state as state_lib

RESULTS_FILE = "results.json"
MAX_CODE_LINES = 50_000  # haystack lines kept from the held-out documents


class Progress:
    """Prints a progress line at most every ``every`` seconds (and the first one)."""

    def __init__(self, log: Callable[[str], None], every: float = 5.0):
        self.log, self.every, self.last = log, every, -float("inf")

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.log(f"  {message}")
            self.last = now


def default_label(config) -> str:
    """``positional name`` plus ``+<rope_type><factor>`` when RoPE is rescaled."""
    p = config.model.positional
    label = p.name
    if p.name in ("rope", "self_extend", "lm_infinite") and p.rope_scaling.rope_type != "default":
        label += f"+{p.rope_scaling.rope_type}{p.rope_scaling.factor:g}"
    return label


def load_params(config, workdir: str, model, hf_params=None) -> tuple[object, int | None]:
    """``(params, checkpoint step or None)`` as ``config.eval.init`` says, on one device.

    With ``init = "checkpoint"`` the newest readable checkpoint in ``workdir`` wins; without
    one, ``hf_params`` (the weights of ``config.model.hf_path``) are used when given.
    """
    seq_len = config.seq_len
    if config.eval.init == "random":
        dummy = state_lib.dummy_inputs(1, seq_len)
        variables = model.init(jax.random.key(config.train.seed), *dummy)
        return nn.unbox(variables["params"]), None
    tx = optimizer.make_optimizer(config.train)
    one_device = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (1, 1, 1, 1), "axis_types": "auto"},
        devices=jax.devices()[:1],
    )
    abstract, _ = state_lib.state_shardings(
        model, tx, one_device, config.mesh.rules, batch_size=1, seq_len=seq_len
    )
    ckpt = checkpoint.Checkpointer(workdir, every=1, max_to_keep=config.train.max_checkpoints)
    step, state = ckpt.restore_latest_state(abstract)
    ckpt.close()
    if state is None and hf_params is not None:
        return jax.tree.map(jnp.asarray, hf_params), None
    if state is None:
        raise ValueError(
            f"config.eval.init = 'checkpoint': no readable checkpoint in {ckpt.directory}; "
            "train first or pass --config.eval.init=random"
        )
    return state.params, step


def _code_lines(tokenizer, documents) -> list[str]:
    lines = []
    for doc in documents:
        lines.extend(x for x in tokenizer.decode(doc.tokens).splitlines() if x.strip())
        if len(lines) >= MAX_CODE_LINES:
            break
    return lines[:MAX_CODE_LINES]


def evaluate(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
    """Runs the evaluation described by ``config.eval``; returns the results dict."""
    config_lib.validate(config)
    e = config.eval
    impl = attention_lib.ATTENTION.build(config.model.attention)
    if impl.capabilities.needs_mesh:
        raise ValueError(
            f"config.model.attention.impl = {impl.name!r}: evaluation runs on one device; use "
            "'blockwise' (any length, O(T) memory) or another single-device implementation"
        )
    label = e.label or default_label(config)
    out_dir = pathlib.Path(workdir) / "eval" / e.label
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_params = None
    if config.model.hf_path is not None:  # model fields and weights from a HF checkpoint
        config, hf_params = hf.with_checkpoint(config)
    model = model_lib.Transformer(model_lib.build_spec(config))
    params, step = load_params(config, workdir, model, hf_params)
    if step is not None:
        source = f"checkpoint step {step}"
    elif config.eval.init == "random":
        source = "random init"
    else:
        source = f"Hugging Face checkpoint {config.model.hf_path}"
    log(
        f"eval {label}: params from {source} (train.seed {config.train.seed})"
        + f"; attention {config.model.attention.impl}; lengths {list(e.lengths)}"
    )
    data = data_lib.load_data(config)
    progress = Progress(log)
    results = {
        "label": label,
        "workdir": str(pathlib.Path(workdir).resolve()),
        "init": e.init,
        "checkpoint_step": step,
        "seed": e.seed,
        "tokenizer": config.data.tokenizer,
        "training_length": config.seq_len,
        "positional": json.loads(config.model.positional.to_json()),
        "attention": json.loads(config.model.attention.to_json()),
        "config": json.loads(config.to_json()),
        "tasks": {},
    }
    span = max(e.lengths)
    documents = perplexity.select_documents(
        data.eval_documents(), min_tokens=span + 1, count=e.num_documents
    )
    if "perplexity" in e.tasks:
        if not documents:
            raise ValueError(
                f"config.eval.lengths = {tuple(e.lengths)}: no held-out document has more than "
                f"max(lengths) = {span} tokens"
            )
        start = time.perf_counter()
        records = perplexity.perplexity_vs_length(
            perplexity.make_nll_fn(model),
            params,
            documents,
            lengths=e.lengths,
            protocol=e.protocol,
            stride=e.stride,
            batch_size=e.batch_size,
            progress=progress,
        )
        results["perplexity"] = {
            "protocol": e.protocol,
            "stride": e.stride,
            "lengths": list(e.lengths),
            "num_documents": len(documents),
            "documents": [d.name for d in documents],
            "tokens_per_document": span + 1 if e.protocol == "sliding" else None,
            "results": records,
        }
        log(f"perplexity done in {time.perf_counter() - start:.1f}s")
    synthetic_tasks = [t for t in e.tasks if t != "perplexity"]
    if synthetic_tasks:
        nll_fn = perplexity.make_nll_fn(model)
        decode_fn = tasks.make_decode_fn(params, config)
        results["inference"] = json.loads(config.inference.to_json())
        needs_code = any(synthetic.TASKS[t].needs_code for t in synthetic_tasks)
        code_lines = _code_lines(data.tokenizer, data.eval_documents()) if needs_code else ()
    for task in synthetic_tasks:
        start = time.perf_counter()
        results["tasks"][task] = tasks.run_task(
            task,
            nll_fn,
            decode_fn,
            params,
            data.tokenizer,
            lengths=e.lengths,
            depths=e.depths,
            samples_per_cell=e.samples_per_cell,
            seed=e.seed,
            code_lines=code_lines,
            progress=progress,
        )
        log(f"{task} done in {time.perf_counter() - start:.1f}s")
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(results, indent=1) + "\n")
    results["files"] = [str(path)] + [str(p) for p in write_plots(results, out_dir, workdir, e)]
    log(format_table(results))
    log("wrote " + ", ".join(results["files"]))
    return results


def _other_runs(workdir: str, compare, own: pathlib.Path) -> list[dict]:
    found = sorted((pathlib.Path(workdir) / "eval").glob(f"**/{RESULTS_FILE}"))
    paths = [p for p in found if p.resolve() != own.resolve()] + [pathlib.Path(c) for c in compare]
    runs = []
    for p in paths:
        if not p.is_file():
            raise ValueError(f"config.eval.compare: {p} does not exist")
        run = json.loads(p.read_text())
        if "perplexity" in run:
            runs.append(run)
    return runs


def write_plots(results: dict, out_dir: pathlib.Path, workdir: str, e) -> list[pathlib.Path]:
    """Writes ``perplexity.png`` and one ``heatmap_<task>.png`` per depth-swept task."""
    files = []
    if "perplexity" in results:
        runs = [results, *_other_runs(workdir, e.compare, out_dir / RESULTS_FILE)]
        files.append(plots.perplexity_plot(runs, out_dir / "perplexity.png"))
    for task, record in results["tasks"].items():
        if synthetic.TASKS[task].uses_depth:
            title = f"{task} ({record['metric']}), {results['label']}"
            files.append(plots.heatmap(task, record, out_dir / f"heatmap_{task}.png", title=title))
    return files


def format_table(results: dict) -> str:
    """The printed summary: perplexity per length, then each task's score per length."""
    lines = []
    if "perplexity" in results:
        p = results["perplexity"]
        lines.append(
            f"perplexity [{results['label']}] protocol={p['protocol']} documents="
            f"{p['num_documents']}"
        )
        lines.append(f"{'length':>8} {'ppl':>10} {'nll':>8} {'tokens':>9} {'windows':>8}")
        for r in p["results"]:
            lines.append(
                f"{r['length']:>8} {r['perplexity']:>10.3f} {r['nll']:>8.4f} "
                f"{r['tokens_scored']:>9} {r['windows']:>8}"
            )
    if results["tasks"]:
        lengths = next(iter(results["tasks"].values()))["lengths"]
        lines.append("task scores (0-100, mean over depths; '-' = prompt does not fit)")
        lines.append(f"{'task':<18}{'metric':<18}" + "".join(f"{n:>8}" for n in lengths))
        for task, record in results["tasks"].items():
            row = f"{task:<18}{record['metric']:<18}"
            for n in lengths:
                scores = [c["score"] for c in record["cells"] if c["length"] == n]
                scores = [s for s in scores if s is not None]
                row += f"{sum(scores) / len(scores):>8.1f}" if scores else f"{'-':>8}"
            lines.append(row)
    return "\n".join(lines)
