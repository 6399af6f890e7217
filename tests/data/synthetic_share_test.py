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
    with pytest.raises(ValueError, match=r"no task of \[.*\] fits config.data.seq_len = 16"):
        data_lib.load_data(make_config(data__synthetic_share=0.5))


@pytest.mark.parametrize("share", [1.5, -0.1, True])
def test_share_outside_unit_interval_is_refused(share):
    config = config_lib.base_config()
    config.unlock()
    config.data._fields["synthetic_share"] = share
    message = "config.data.synthetic_share = " if share is True else "must be in [0, 1]"
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("synthetic_tasks", ("passkey", "niah_single_2"), "from passkey, niah_single_1,"),
        ("synthetic_tasks", "passkey", "must be of type tuple"),
        ("synthetic_documents", 0, "must be an integer >= 1"),
        ("synthetic_loss", "prompt", "allowed: 'all', 'answer'"),
    ],
)
def test_synthetic_fields_are_checked(field, value, message):
    config = config_lib.base_config()
    config.unlock()
    config.data._fields[field] = value
    with pytest.raises(ValueError, match=f"config.data.{field} = .*{message}"):
        config_lib.validate(config)


def _answers(batch):
    """Per row, the targets under the loss mask, decoded."""
    tok = tokenizers.ByteTokenizer()
    return [tok.decode(t[m > 0]) for t, m in zip(batch["targets"], batch["loss_mask"], strict=True)]


@pytest.mark.parametrize("packing", ["first_fit", "concat"])
def test_answer_loss_masks_everything_but_the_key(make_config, packing):
    """``synthetic_loss = "answer"`` with share 1: every row is a passkey document whose loss
    mask covers exactly the answer ``" <key>\\n"``, the key that the prompt's needle states."""
    config = make_config(
        seq_len=256,
        data__batch_size=4,
        data__packing=packing,
        data__synthetic_share=1.0,
        data__synthetic_tasks=("passkey",),
        data__synthetic_documents=40,
        data__synthetic_loss="answer",
    )
    data = data_lib.load_data(config)
    assert data.manifest["synthetic"]["tasks"] == ["passkey"]
    assert data.manifest["synthetic"]["documents"] == 40
    it = data.train_iterator()
    tok = tokenizers.ByteTokenizer()
    seen = 0
    for _ in range(3):
        batch = next(it)
        for row, answer in zip(batch["inputs"], _answers(batch), strict=True):
            text = tok.decode(row[row > 0])
            key = text.split(PASSKEY_LINE)[1].split(".")[0].strip()
            if packing == "first_fit":  # one whole document per row
                assert answer == f" {key}\n", (answer, key)
            else:  # rows cut across documents: the answer bytes are a prefix/suffix of a key
                assert answer.strip() in text, answer
            seen += len(answer)
    assert seen > 0
    full = data_lib.load_data(make_config(
        seq_len=256, data__batch_size=4, data__synthetic_share=1.0,
        data__synthetic_tasks=("passkey",), data__synthetic_documents=40,
    ))  # fmt: skip
    batch = next(full.train_iterator())
    np.testing.assert_array_equal(batch["loss_mask"], batch["segment_ids"] != 0)
