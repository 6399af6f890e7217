"""The training loop: ``train(config, workdir)``.

One process per host runs this; every host feeds its own slice of the global batch
(``jax.make_array_from_process_local_data``). The loop resumes automatically from the newest
readable checkpoint in ``workdir`` (train state, data-iterator position, health counters), so a
run killed at any point and restarted reproduces the uninterrupted run exactly
(tests/reliability/preemption_test.py). SIGTERM and SIGINT finish the current step, save, and
exit cleanly; with several processes the stop step comes from JAX's preemption sync point, so
every host saves the same step. A fresh run starts from random weights, from
``config.model.hf_path``, or from another workdir's newest checkpoint
(``config.train.init_from``, e.g. fine-tuning with PI or YaRN at a longer length).

Per-step metrics stay on device until a log or checkpoint step, when they are fetched together
and reviewed by ``lcm.train.health`` (non-finite steps, loss spikes): no host sync per step.
"""

from __future__ import annotations

import contextlib
import itertools
import pathlib
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from lcm import attention as attention_lib
from lcm import config as config_lib
from lcm import data as data_lib
from lcm import hf
from lcm.attention import layouts
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import checkpoint, health, metrics, optimizer, program
from lcm.train import state as state_lib
from lcm.train import step as step_lib


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps.

    Not installed (``enabled=False``) with several processes: there JAX's preemption service
    owns SIGTERM and ``reached_preemption_sync_point`` tells every host the same step to stop at.
    """

    def __init__(self, *, enabled: bool = True):
        self.signal = None
        self.enabled = enabled
        self._previous = {}

    def __enter__(self):
        if self.enabled:
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
    """``fn(host batch) -> global device batch``: this host's rows, in the token order the
    attention implementation asks for (``config.model.attention.context_layout`` for the
    context-parallel ones, so causal work is balanced over the devices); nothing else in the
    step depends on token order.
    """
    impl = attention_lib.ATTENTION.build(config.model.attention)

    def to_device(batch: dict) -> dict:
        batch = layouts.lay_out_batch(batch, impl, mesh)
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


def _review(pending: list, monitor: health.Health, schedule, log, log_step: int | None) -> list:
    """Fetches the pending steps' metrics (one host sync) and applies the health policy.

    Returns:
      ``(step, record)`` for ``log_step`` and for every skipped or spiking step, in order.
      ``pending`` is emptied.
    """
    fetched = jax.device_get([out for _, out in pending])
    records = []
    for (s, _), out in zip(pending, fetched, strict=True):
        updates_before = s - 1 - monitor.skipped  # the schedule does not count dropped updates
        extras, message = monitor.review(
            s, float(out["loss"]), bool(out["finite"]), out["leaf_finite"]
        )
        if message:
            log(message)
        if extras or s == log_step:
            record = {
                "loss": float(out["loss"]),
                "grad_norm": float(out["grad_norm"]),
                "lr": float(schedule(updates_before)),
                "skipped_steps": monitor.skipped,
                **extras,
            }
            records.append((s, record))
    pending.clear()
    return records


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

    Raises:
      ValueError: an invalid config or unusable data, before anything is compiled.
      lcm.train.checkpoint.CheckpointSaveError: the workdir is not writable or a save failed.
      lcm.train.health.NonFiniteError: a non-finite step under ``train.nonfinite = "stop"``.
    """
    if config.model.hf_path is not None:  # model fields (weights below) from a HF checkpoint
        config = hf.checkpoint_config(config)
    config_lib.validate(config, num_devices=jax.device_count())
    t = config.train
    ckpt = checkpoint.Checkpointer(workdir, every=t.checkpoint_every, max_to_keep=t.max_checkpoints)
    ckpt.check_writable()
    data = data_lib.load_data(config, workdir=workdir)
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    schedule = optimizer.learning_rate_schedule(config.train)
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    peak = metrics.peak_flops(mesh.devices.flat, config.model.dtype, t.peak_flops)
    multihost = jax.process_count() > 1

    with sharding.use_mesh(mesh, rules):
        prog = program.build_program(config, mesh, rules)
        model, tx, abstract, shardings = prog.model, prog.tx, prog.abstract, prog.shardings
        flops_per_token = metrics.train_flops_per_token(prog.spec, seq_len)
        to_device = batch_to_device(config, mesh, prog.batch_sharding)
        m = data.manifest
        log(
            f"data: {config.data.corpus} corpus, {m['train_documents']} train / "
            f"{m['eval_documents']} eval documents, {m['train_tokens']:,} train tokens "
            f"(manifest in {workdir}/data_manifest.json)"
            + (
                f"; skipped {m['malformed_lines']} malformed line(s), first: "
                + ", ".join(m["malformed_examples"])
                if m.get("malformed_lines")
                else ""
            )
        )
        data_iterator = data.train_iterator()
        monitor = health.Health(
            policy=t.nonfinite,
            spike_factor=t.spike_factor,
            spike_decay=t.spike_decay,
            param_names=health.param_paths(abstract.params),
        )
        start, state, saved_health = ckpt.restore_latest(abstract, data_iterator)
        if state is None:
            start = 0
            if t.init_from is not None:
                source_step, params = params_from_workdir(t.init_from, abstract)
                state = state_lib.state_from_params(params, tx, abstract, shardings)
                log(
                    f"mesh {mesh_lib.describe(mesh)}; starting from the weights of "
                    f"{t.init_from} (step {source_step}) in {workdir}"
                )
            elif config.model.hf_path is None:
                state = state_lib.init_state(
                    model, tx, shardings, t.seed, batch_size=batch_size, seq_len=seq_len
                )
                log(f"mesh {mesh_lib.describe(mesh)}; starting from scratch in {workdir}")
            else:
                # Each param straight into its sharding: no device holds a whole sharded tensor.
                params = hf.load_sharded(
                    config.model.hf_path, config, abstract.params, shardings.params
                )
                state = state_lib.state_from_params(params, tx, abstract, shardings)
                log(f"mesh {mesh_lib.describe(mesh)}; starting from {config.model.hf_path}")
        else:
            if saved_health is not None:
                monitor.load(saved_health)
            log(f"mesh {mesh_lib.describe(mesh)}; resumed from step {start} in {workdir}")
        writer = metrics.MetricWriter(workdir, resume_step=start)
        train_step, eval_fn = prog.train_step, prog.eval_step
        eval_batches = (
            list(itertools.islice(data.eval_iterator(), t.eval_batches)) if t.eval_every else []
        )
        if eval_batches:
            log(
                f"eval: {len(eval_batches)} held-out batches; unigram entropy of their targets "
                f"{unigram_entropy(eval_batches):.4f} nats/token (a context-free baseline)"
            )

        last: dict = {"step": start}
        pending: list = []  # (step, metrics still on device) since the last review
        window_start, window_tokens = time.perf_counter(), 0.0
        try:
            with _StopFlag(enabled=not multihost) as stop:
                step = start
                while step < t.num_steps:
                    local = next(data_iterator)
                    state, step_metrics = train_step(state, to_device(local))
                    step += 1
                    pending.append((step, step_metrics))
                    window_tokens += local["inputs"].size * jax.process_count()
                    if multihost:  # every host calls this every step; all agree on when to stop
                        preempted = multihost_utils.reached_preemption_sync_point(step)
                    else:
                        preempted = stop.signal is not None
                    stopping = preempted or (stop_after is not None and step - start >= stop_after)
                    final = step == t.num_steps or stopping
                    due_eval = t.eval_every and (step % t.eval_every == 0 or step == t.num_steps)
                    due_log = step % t.log_every == 0 or step == t.num_steps or due_eval
                    due_save = final or step % t.checkpoint_every == 0
                    if due_log or due_save:  # reviewed before any save: no checkpoint past a stop
                        records = _review(
                            pending, monitor, schedule, log, step if due_log else None
                        )
                        for s, record in records:
                            if s == step and due_log:
                                elapsed = time.perf_counter() - window_start
                                record["tokens_per_sec"] = window_tokens / elapsed
                                record["mfu"] = record["tokens_per_sec"] * flops_per_token / peak
                                if due_eval:
                                    record["eval_loss"] = evaluate(
                                        eval_fn, state.params, eval_batches, to_device
                                    )
                                last = {"step": s, **record}
                                log(
                                    f"step {s}/{t.num_steps} | loss {record['loss']:.4f}"
                                    + (f" | eval {record['eval_loss']:.4f}" if due_eval else "")
                                    + f" | {record['tokens_per_sec']:,.0f} tok/s"
                                    + f" | mfu {record['mfu']:.2f} | lr {record['lr']:.2e}"
                                    + (f" | skipped {monitor.skipped}" if monitor.skipped else "")
                                )
                                window_start, window_tokens = time.perf_counter(), 0.0
                            writer.write(s, record)
                    if due_save:  # the loop decides (orbax alone would also save step 1 unreviewed)
                        ckpt.save(step, state, data_iterator, health=monitor.state(), force=True)
                    if stopping:
                        reason = "preemption" if multihost else stop.signal or "stop_after"
                        log(f"{reason}: saved step {step}, exiting")
                        break
        except BaseException:
            # Let the saves already started (all of finite, reviewed states) finish first.
            with contextlib.suppress(Exception):
                ckpt.close()
            writer.close()
            raise
        ckpt.close()
        writer.close()
    last["state"] = state
    return last
