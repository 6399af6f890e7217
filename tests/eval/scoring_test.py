"""RULER and passkey scorers against hand-computed values."""

import pytest

from lcm.eval import scoring


def test_string_match_all_hand_computed():
    preds = ["The values are 123 and 456.", "only 123\n\n", "NOTHING"]
    refs = [["123", "456"], ["123", "456", "789"], ["x"]]
    # per sample: 2/2, 1/3, 0/1 -> mean (1 + 0.3333 + 0) / 3 = 0.4444 -> 44.44
    assert scoring.score("string_match_all", preds, refs) == 44.44


def test_string_match_part_hand_computed_and_case_insensitive():
    preds = ["ABC-def is it", "none", "x"]
    refs = [["abc-DEF", "zzz"], ["q"], ["x", "y"]]
    assert scoring.score("string_match_part", preds, refs) == 66.67  # 2 of 3


def test_passkey_first_number_must_equal_key():
    preds = [" 12345. Remember", " 1234 5", "key 12345", " 123456"]
    refs = [["12345"], ["12345"], ["12345"], ["12345"]]
    assert scoring.score("passkey", preds, refs) == 50.0


def test_bad_metric_and_lengths():
    with pytest.raises(ValueError, match="metric = 'bleu'; allowed: string_match_all"):
        scoring.score("bleu", ["a"], [["a"]])
    with pytest.raises(ValueError, match="one reference list per prediction"):
        scoring.score("passkey", ["a", "b"], [["a"]])
