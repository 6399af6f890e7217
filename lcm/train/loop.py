"""The training loop: ``train(config, workdir)``.

One process per host runs this; every host feeds its own slice of the global batch
(``jax.make_array_from_process_local_data``). The loop resumes automatically from the newest
readable checkpoint in ``workdir`` (train state and data-iterator position), so a run killed at
any point and restarted reproduces the uninterrupted run exactly. A fresh run starts from random
weights, from ``config.model.hf_path``, or from another workdir's newest checkpoint
(``config.train.init_from``, e.g. fine-tuning with PI or YaRN at a longer length). SIGTERM and
SIGINT finish the current step, save, and exit cleanly.
"""

from __future__ import annotations

import itertools
import pathlib
import signal
import time

import jax
import numpy as np

from lcm import config as config_lib
from lcm import data as data_lib
from lcm import model as model_lib
from lcm.attention import ring
from lcm.model import hf
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import checkpoint, metrics, optimizer
from lcm.train import state as state_lib
from lcm.train import step as step_lib


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def batch_to_device(config, mesh, batch_sharding):
    """``fn(host batch) -> global device batch``: this host's rows, put in the ring layout.

    With ``impl = "ring"`` tokens are reordered (``config.model.attention.ring_layout``) so
    causal work is balanced over the ring; nothing else in the step depends on token order.
    """
    attention = config.model.attention
    shards = mesh.shape[attention.ring_axis] if attention.impl == "ring" else 1

    def to_device(batch: dict) -> dict:
        batch = ring.permute_batch(batch, layout=attention.ring_layout, num_shards=shards)
        return {
            key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(batch[key]))
            for key in step_lib.BATCH_KEYS
        }

    return to_device


def evaluate(eval_fn, params, batches, to_device) -> float:
    """Mean held-out token loss over ``batches``."""
    nll, tokens = 0.0, 0.0
    for batch in batches:
        out = eval_fn(params, to_device(batch))
        nll += float(out["nll_sum"])
        tokens += float(out["tokens"])
    return nll / max(tokens, 1.0)


def unigram_entropy(batches) -> float:
    """Entropy (nats/token) of the empirical token distribution of the batches' targets.

    The best loss any context-free (unigram) model could reach on these exact tokens: a model
    that learned anything from context must go below it.
    """
    counts = {}
    for batch in batches:
        targets = np.asarray(batch["targets"])[np.asarray(batch["loss_mask"]) > 0]
        ids, n = np.unique(targets, return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist(), strict=True):
            counts[i] = counts.get(i, 0) + c
    p = np.array(list(counts.values()), np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def params_from_workdir(workdir: str, abstract: state_lib.TrainState):
    """The parameters of the newest readable checkpoint in ``workdir`` (``config.train.init_from``).

    ``abstract`` is this run's abstract state: the checkpoint must hold the same parameter tree
    (a training-free positional change such as PI or YaRN keeps it).
    """
    if not (pathlib.Path(workdir) / "checkpoints").is_dir():
        raise ValueError(f"config.train.init_from = {workdir!r}: no checkpoints/ directory there")
    ckpt = checkpoint.Checkpointer(workdir, every=1, max_to_keep=1)
    step, state = ckpt.restore_latest_state(abstract)
    ckpt.close()
    if state is None:
        raise ValueError(
            f"config.train.init_from = {workdir!r}: no checkpoint there restores into this "
            "model's parameters (see the warnings above)"
        )
    return step, state.params


def train(config, workdir: str, *, log=print, stop_after: int | None = None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints).

    ``stop_after`` ends this invocation (with a checkpoint) after that many steps, as a
    preemption would; a later call resumes.

    Returns:
      The last logged metrics, with ``step`` and, when evaluated, ``eval_loss``.
    """
    hf_params = None
    if config.model.hf_path is not None:  # model fields and initial weights from a HF checkpoint
        config, hf_params = hf.with_checkpoint(config)
    config_lib.validate(config, num_devices=jax.device_count())
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    spec = model_lib.build_spec(config)
    model = model_lib.Transformer(spec)
    tx = optimizer.make_optimizer(config.train)
    schedule = optimizer.learning_rate_schedule(config.train)
    t = config.train
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    flops_per_token = metrics.train_flops_per_token(spec, seq_len)
    peak = t.peak_flops or metrics.measure_peak_flops()

    with sharding.use_mesh(mesh, rules):
        batch_sharding = sharding.named_sharding(mesh, ("batch", "length"), rules)
        to_device = batch_to_device(config, mesh, batch_sharding)
        abstract, shardings = state_lib.state_shardings(
            model, tx, mesh, rules, batch_size=batch_size, seq_len=seq_len
        )
        data = data_lib.load_data(config, workdir=workdir)
        m = data.manifest
        log(
            f"data: {config.data.corpus} corpus, {m['train_documents']} train / "
            f"{m['eval_documents']} eval documents, {m['train_tokens']:,} train tokens "
            f"(manifest in {workdir}/data_manifest.json)"
        )
        data_iterator = data.train_iterator()
        ckpt = checkpoint.Checkpointer(
            workdir, every=t.checkpoint_every, max_to_keep=t.max_checkpoints
        )
        start, state = ckpt.restore_latest(abstract, data_iterator)
        if state is None:
            start = 0
            if t.init_from is not None:
                source_step, params = params_from_workdir(t.init_from, abstract)
                state = state_lib.state_from_params(params, tx, abstract, shardings)
                log(
                    f"mesh {mesh_lib.describe(mesh)}; starting from the weights of "
                    f"{t.init_from} (step {source_step}) in {workdir}"
                )
            elif hf_params is None:
                state = state_lib.init_state(
                    model, tx, shardings, t.seed, batch_size=batch_size, seq_len=seq_len
                )
                log(f"mesh {mesh_lib.describe(mesh)}; starting from scratch in {workdir}")
            else:
                state = state_lib.state_from_params(hf_params, tx, abstract, shardings)
                log(f"mesh {mesh_lib.describe(mesh)}; starting from {config.model.hf_path}")
        else:
            log(f"mesh {mesh_lib.describe(mesh)}; resumed from step {start} in {workdir}")
        writer = metrics.MetricWriter(workdir, resume_step=start)
        train_step = step_lib.jit_train_step(
            step_lib.make_train_step(
                model, tx, z_loss=t.z_loss, grad_accum_steps=t.grad_accum_steps
            ),
            shardings,
            batch_sharding,
        )
        eval_fn = jax.jit(step_lib.make_eval_step(model))
        eval_batches = (
            list(itertools.islice(data.eval_iterator(), t.eval_batches)) if t.eval_every else []
        )
        if eval_batches:
            log(
                f"eval: {len(eval_batches)} held-out batches; unigram entropy of their targets "
                f"{unigram_entropy(eval_batches):.4f} nats/token (a context-free baseline)"
            )

        last: dict = {"step": start}
        window_start, window_tokens = time.perf_counter(), 0.0
        with _StopFlag() as stop:
            step = start
            while step < t.num_steps:
                local = next(data_iterator)
                state, step_metrics = train_step(state, to_device(local))
                step += 1
                window_tokens += local["inputs"].size * jax.process_count()
                due_eval = t.eval_every and (step % t.eval_every == 0 or step == t.num_steps)
                if step % t.log_every == 0 or step == t.num_steps or due_eval:
                    loss = float(step_metrics["loss"])  # waits for the step
                    if not np.isfinite(loss):
                        ckpt.wait()
                        raise FloatingPointError(f"loss is {loss} at step {step}; stopping")
                    elapsed = time.perf_counter() - window_start
                    tokens_per_sec = window_tokens / elapsed
                    last = {
                        "step": step,
                        "loss": loss,
                        "grad_norm": float(step_metrics["grad_norm"]),
                        "lr": float(schedule(step - 1)),
                        "tokens_per_sec": tokens_per_sec,
                        "mfu": tokens_per_sec * flops_per_token / peak,
                    }
                    if due_eval:
                        last["eval_loss"] = evaluate(eval_fn, state.params, eval_batches, to_device)
                    writer.write(step, {k: v for k, v in last.items() if k != "step"})
                    log(
                        f"step {step}/{t.num_steps} | loss {loss:.4f}"
                        + (f" | eval {last['eval_loss']:.4f}" if due_eval else "")
                        + f" | {tokens_per_sec:,.0f} tok/s | mfu {last['mfu']:.2f}"
                        + f" | lr {last['lr']:.2e}"
                    )
                    window_start, window_tokens = time.perf_counter(), 0.0
                ckpt.save(step, state, data_iterator, force=step == t.num_steps)
                if stop.signal or (stop_after is not None and step - start >= stop_after):
                    ckpt.save(step, state, data_iterator, force=True)
                    log(f"{stop.signal or 'stop_after'}: saved step {step}, exiting")
                    break
        ckpt.close()
        writer.close()
    last["state"] = state
    return last
