"""Checkpointing with orbax: train state AND data-iterator state, async and atomic.

Each save writes ``<workdir>/checkpoints/<step>/{state,data,health}`` through one
``ocp.CheckpointManager`` (``health``: the JSON counters of ``lcm.train.health``, optional):
orbax writes into a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints untouched and the partial one invisible. Restore walks the saved steps
newest first; a checkpoint that fails to restore (truncated or corrupted files) is skipped with a
warning naming its step, and the previous one is used.

A save that fails (disk full, directory not writable) raises ``CheckpointSaveError`` naming the
step, the directory and the cause, at the next save or wait (saves are asynchronous); the
complete checkpoints already on disk are left as they were.
"""

from __future__ import annotations

import logging
import os
import pathlib

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the complete ones on disk are intact."""


class Checkpointer:
    """Saves and restores ``(state, data_iterator)`` under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | pathlib.Path, *, every: int, max_to_keep: int):
        self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=every,
                max_to_keep=max_to_keep,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            ),
        )
        self.every = every
        self._in_flight: int | None = None  # step of the save started last, until waited for

    def check_writable(self) -> None:
        """Raises ``CheckpointSaveError`` unless this process can create files in the directory."""
        probe = self.directory / f".write-probe-{jax.process_index()}-{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise CheckpointSaveError(
                f"checkpoint directory {self.directory} is not writable "
                f"({type(err).__name__}: {err}); use another --workdir or fix its permissions"
            ) from err

    def save(
        self, step: int, state, data_iterator, *, health: dict | None = None, force: bool = False
    ) -> bool:
        """Starts an async save at ``step`` if due (or ``force``); returns whether it saved.

        ``health`` (a JSON-able dict) is saved alongside when given.

        Raises:
          CheckpointSaveError: this save, or the previous asynchronous one, failed.
        """
        items = {
            "state": ocp.args.StandardSave(state),
            "data": grain.checkpoint.CheckpointSave(data_iterator),
        }
        if health is not None:
            items["health"] = ocp.args.JsonSave(health)
        if force or step % self.every == 0:
            self.wait()  # a failure of the previous save surfaces here, under its own step
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as err:
            raise self._save_error(step, err) from err
        if saved:
            self._in_flight = step
        return saved

    def complete_steps(self) -> list[int]:
        """Steps of the complete (renamed, not temporary) checkpoints on disk, ascending."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def _save_error(self, failed: int, err: Exception) -> CheckpointSaveError:
        done = [s for s in self.complete_steps() if s != failed]
        cause = (str(err).splitlines() or [""])[0][:500]
        return CheckpointSaveError(
            f"saving the checkpoint of step {failed} under {self.directory} failed "
            f"({type(err).__name__}: {cause}); the complete checkpoints there are intact "
            f"(newest: {f'step {done[-1]}' if done else 'none'}); free space or fix "
            "permissions, then rerun to resume from it"
        )

    def restore_latest(self, abstract_state, data_iterator):
        """Restores the newest readable checkpoint into ``data_iterator`` (in place).

        Returns:
          ``(step, state, health)`` (``health`` None when that checkpoint has none), or
          ``(None, None, None)`` when there is no checkpoint.
        """

        def make_args(step):
            items = {
                "state": ocp.args.StandardRestore(abstract_state),
                "data": grain.checkpoint.CheckpointRestore(data_iterator),
            }
            if (self.directory / str(step) / "health").is_dir():
                items["health"] = ocp.args.JsonRestore()
            return ocp.args.Composite(**items)

        step, restored = self._restore_newest(make_args)
        if restored is None:
            return None, None, None
        return step, restored["state"], restored.get("health")

    def restore_latest_state(self, abstract_state):
        """Restores only the train state of the newest readable checkpoint (no data iterator).

        For evaluation: the ``data`` item is not read. ``abstract_state`` carries the target
        shardings, which may differ from the ones the checkpoint was saved with.

        Returns:
          ``(step, state)``, or ``(None, None)`` when there is no checkpoint.
        """
        step, restored = self._restore_newest(
            lambda step: ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return step, None if restored is None else restored["state"]

    def _restore_newest(self, make_args):
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(step, args=make_args(step))
            except Exception as err:
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one",
                    step,
                    self.directory,
                    type(err).__name__,
                    str(err).splitlines()[0][:200] if str(err) else "",
                )
                continue
            return step, restored
        return None, None

    def wait(self) -> None:
        """Blocks until pending async saves are on disk.

        Raises:
          CheckpointSaveError: the pending save failed.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            raise self._save_error(self._in_flight, err) from err
        self._in_flight = None

    def close(self) -> None:
        """Waits for pending saves (raising ``CheckpointSaveError`` if one failed) and closes."""
        try:
            self.wait()
        finally:
            self.manager.close()
