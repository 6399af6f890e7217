import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np

from lcm.train.checkpoint import Checkpointer


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset())


def _state(step):
    return {"w": jnp.full((4, 3), float(step)), "step": jnp.int32(step)}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def test_save_restore_state_and_data_position(tmp_path):
    it = _iterator()
    ckpt = Checkpointer(tmp_path, every=1, max_to_keep=5)
    for step in (1, 2):
        next(it)
        ckpt.save(step, _state(step), it)
    expected_next = [next(it) for _ in range(3)]
    ckpt.close()

    fresh = _iterator()
    step, state, health = Checkpointer(tmp_path, every=1, max_to_keep=5).restore_latest(
        _abstract(), fresh
    )
    assert step == 2 and health is None
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
    assert [next(fresh) for _ in range(3)] == expected_next


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    it = _iterator()
    ckpt = Checkpointer(tmp_path, every=1, max_to_keep=5)
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it)
    ckpt.close()
    # Corrupt every array file of step 3 (truncate to zero bytes).
    for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file() and "ocdbt" not in f.name and f.stat().st_size > 0:
            f.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        step, state, _ = Checkpointer(tmp_path, every=1, max_to_keep=5).restore_latest(
            _abstract(), _iterator()
        )
    assert step == 2
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
    assert "checkpoint at step 3" in caplog.text and "unreadable" in caplog.text


def test_empty_workdir_restores_nothing(tmp_path):
    assert Checkpointer(tmp_path, every=1, max_to_keep=2).restore_latest(
        _abstract(), _iterator()
    ) == (None, None, None)


def test_restore_latest_state_skips_data_and_corrupt_steps(tmp_path, caplog):
    it = _iterator()
    ckpt = Checkpointer(tmp_path, every=1, max_to_keep=5)
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it)
    ckpt.close()
    reader = Checkpointer(tmp_path, every=1, max_to_keep=5)
    step, state = reader.restore_latest_state(_abstract())
    assert step == 3
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 3.0))
    for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file() and "ocdbt" not in f.name and f.stat().st_size > 0:
            f.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        step, state = Checkpointer(tmp_path, every=1, max_to_keep=5).restore_latest_state(
            _abstract()
        )
    assert step == 2 and "checkpoint at step 3" in caplog.text
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
    assert Checkpointer(tmp_path / "none", every=1, max_to_keep=2).restore_latest_state(
        _abstract()
    ) == (None, None)
