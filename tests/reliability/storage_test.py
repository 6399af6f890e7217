"""Storage faults: a save that hits a full disk or an unwritable directory fails loudly, naming the
step and the path, and leaves the earlier checkpoints intact; a damaged latest checkpoint (any of
its files truncated, emptied, deleted or overwritten) is never read as good data.

"Disk full" is a real filesystem condition, not a mock: the process's file-size limit
(``RLIMIT_FSIZE``, the same ``EFBIG`` error path a quota hits) is lowered below the checkpoint's
size during the save. "Unwritable" is a regular file where the checkpoint directory should be
(which stops root too, unlike ``chmod``).
"""

import contextlib
import logging
import resource
import shutil
import signal

import grain
import jax
import numpy as np
import pytest

from lcm.train import loop
from lcm.train.checkpoint import Checkpointer, CheckpointSaveError

SIZE = 50_000  # float32 values per checkpoint: ~200 KB of incompressible data


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset())


def _state(step):
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal(SIZE).astype(np.float32), "step": np.int32(step)}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


@contextlib.contextmanager
def _file_size_limit(nbytes):
    """Writes past ``nbytes`` fail with EFBIG (as on a full disk) instead of killing us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _save(directory, steps, it=None):
    it = it or _iterator()
    ckpt = Checkpointer(directory, every=1, max_to_keep=10)
    for step in steps:
        next(it)
        ckpt.save(step, _state(step), it, health={"skipped": step})
    ckpt.close()


def test_disk_full_during_save_names_step_and_path_and_keeps_previous(tmp_path):
    it = _iterator()
    ckpt = Checkpointer(tmp_path, every=1, max_to_keep=10)
    next(it)
    ckpt.save(1, _state(1), it)
    ckpt.wait()
    next(it)
    with _file_size_limit(20_000), pytest.raises(CheckpointSaveError) as err:
        ckpt.save(2, _state(2), it)
        ckpt.wait()
    message = str(err.value)
    assert f"saving the checkpoint of step 2 under {tmp_path.resolve() / 'checkpoints'}" in message
    assert "File too large" in message and "(newest: step 1)" in message
    with contextlib.suppress(CheckpointSaveError):
        ckpt.close()
    step, state, _ = Checkpointer(tmp_path, every=1, max_to_keep=10).restore_latest(
        _abstract(), _iterator()
    )
    assert step == 1
    np.testing.assert_array_equal(state["w"], _state(1)["w"])


def test_unwritable_checkpoint_directory_fails_before_training(tmp_path, tiny):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(CheckpointSaveError, match=r"checkpoint directory .*/run/checkpoints is "):
        Checkpointer(tmp_path / "run", every=1, max_to_keep=2).check_writable()
    with pytest.raises(CheckpointSaveError, match="is not writable"):
        loop.train(tiny(), str(tmp_path / "run"), log=lambda s: None)


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    else:  # garbage of the same length in the middle of the file
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(len(data) - mid))


@pytest.mark.parametrize("how", ["truncate", "empty", "delete", "overwrite"])
def test_damaged_latest_checkpoint_is_never_read_as_good(tmp_path, caplog, how):
    """Every file of the newest checkpoint in turn: restore gives step 3 intact or falls back to
    step 2 with a warning naming step 3; never wrong numbers."""
    template = tmp_path / "template"
    _save(template, (1, 2, 3))
    files = sorted(p.relative_to(template) for p in template.rglob("*") if p.is_file())
    step3 = [f for f in files if f.parts[:2] == ("checkpoints", "3")]
    assert len(step3) >= 8, step3
    outcomes = {}
    for rel in step3:
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        _damage(work / rel, how)
        caplog.clear()
        reader = Checkpointer(work, every=1, max_to_keep=10)
        with caplog.at_level(logging.WARNING):
            step, state, saved_health = reader.restore_latest(_abstract(), _iterator())
        reader.close()
        assert step in (2, 3), rel
        np.testing.assert_array_equal(state["w"], _state(step)["w"], err_msg=str(rel))
        assert int(state["step"]) == step and saved_health == {"skipped": step}, rel
        if step == 2:
            assert "checkpoint at step 3" in caplog.text and "unreadable" in caplog.text, rel
        outcomes[str(rel)] = step
    # Some damage is harmless (e.g. to metadata restore does not read); the rest falls back.
    assert 2 in outcomes.values(), outcomes
    print(how, outcomes)
