"""``config.data.synthetic_share``: synthetic retrieval rows mixed into every training batch."""

import numpy as np
import pytest

from lcm import config as config_lib
from lcm import data as data_lib
from lcm.data import tokenizers

PASSKEY_LINE = "The pass key is"


def _rows_text(batch):
    tok = tokenizers.ByteTokenizer()
    return [tok.decode(x[m > 0]) for x, m in zip(batch["inputs"], batch["loss_mask"], strict=True)]


def test_share_puts_synthetic_rows_last_and_resumes(make_config, text_docs):
    config = make_config(seq_len=256, data__synthetic_share=0.5, data__batch_size=4)
    data = data_lib.load_data(config)
    assert data.manifest["synthetic"]["share"] == 0.5
    assert data.manifest["synthetic"]["documents"] == 64  # only passkey fits 256 bytes
    it = data.train_iterator()
    batches = [next(it) for _ in range(3)]
    letters = set("abcdefghijklmnopqrstuvwxyz")
    for batch in batches:
        assert batch["inputs"].shape == (4, 256)
        texts = _rows_text(batch)
        for text in texts[:2]:  # corpus rows: the fixture's lowercase documents only
            assert set(text) <= letters and text
        for text in texts[2:]:  # synthetic rows: passkey prompts with their answer
            assert PASSKEY_LINE in text
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = data.train_iterator()
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(2)], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for batch in data.eval_iterator():  # held-out batches never hold synthetic rows
        assert not any(PASSKEY_LINE in t for t in _rows_text(batch))


def test_share_too_small_for_the_batch_or_no_task_fits(make_config):
    data = data_lib.load_data(make_config(seq_len=256, data__synthetic_share=0.1))
    with pytest.raises(ValueError, match=r"config.data.synthetic_share = 0.1: gives 0 of the 4"):
        data.train_iterator()
    with pytest.raises(ValueError, match=r"no synthetic task fits config.data.seq_len = 16"):
        data_lib.load_data(make_config(data__synthetic_share=0.5))


@pytest.mark.parametrize("share", [1.0, -0.1, True])
def test_share_outside_unit_interval_is_refused(share):
    config = config_lib.base_config()
    config.unlock()
    config.data._fields["synthetic_share"] = share
    message = "config.data.synthetic_share = " if share is True else "must be in [0, 1)"
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        config_lib.validate(config)
