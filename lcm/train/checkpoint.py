"""Checkpointing with orbax: train state AND data-iterator state, async and atomic.

Each save writes ``<workdir>/checkpoints/<step>/{state,data}`` through one
``ocp.CheckpointManager``: orbax writes into a temporary directory and renames it when complete,
so a crash mid-save leaves the previous checkpoints untouched and the partial one invisible.
Restore walks the saved steps newest first; a checkpoint that fails to restore (truncated or
corrupted files) is skipped with a warning naming its step, and the previous one is used.
"""

from __future__ import annotations

import logging
import pathlib

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


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

    def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
        """Starts an async save at ``step`` if due (or ``force``); returns whether it saved."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            force=force,
        )

    def restore_latest(self, abstract_state, data_iterator):
        """Restores the newest readable checkpoint into ``data_iterator`` (in place).

        Returns:
          ``(step, state)``, or ``(None, None)`` when there is no checkpoint.
        """
        return self._restore_newest(
            lambda: ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            )
        )

    def restore_latest_state(self, abstract_state):
        """Restores only the train state of the newest readable checkpoint (no data iterator).

        For evaluation: the ``data`` item is not read. ``abstract_state`` carries the target
        shardings, which may differ from the ones the checkpoint was saved with.

        Returns:
          ``(step, state)``, or ``(None, None)`` when there is no checkpoint.
        """
        return self._restore_newest(
            lambda: ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )

    def _restore_newest(self, make_args):
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(step, args=make_args())
            except Exception as err:
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one",
                    step,
                    self.directory,
                    type(err).__name__,
                    str(err).splitlines()[0][:200] if str(err) else "",
                )
                continue
            return step, restored["state"]
        return None, None

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
