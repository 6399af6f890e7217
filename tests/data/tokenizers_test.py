import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcm.data import tokenizers


@given(st.text())
def test_byte_roundtrip_is_utf8(text):
    tok = tokenizers.ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))  # oracle: the UTF-8 bytes themselves
    assert tok.decode(ids) == text


def test_byte_tokenizer_ids_and_vocab():
    tok = tokenizers.load_tokenizer("byte")
    assert isinstance(tok, tokenizers.ByteTokenizer)
    assert tok.vocab_size == 256 and tok.fingerprint == "byte"
    assert tok.encode("aé").tolist() == [97, 0xC3, 0xA9]
    with pytest.raises(ValueError, match=r"ids must be in \[0, 256\)"):
        tok.decode(np.array([65, 256]))


@pytest.mark.parametrize(
    "filename, module, package",
    [
        ("spm.model", "sentencepiece", "sentencepiece"),
        ("tokenizer.json", "tokenizers", "tokenizers"),
    ],
)
def test_file_tokenizer_without_package_says_what_to_install(
    tmp_path, monkeypatch, filename, module, package
):
    path = tmp_path / filename
    path.write_text("{}")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=f"pip install {package}"):
        tokenizers.load_tokenizer(str(path))


@pytest.mark.parametrize("spec", ["bytes", "vocab.txt", "missing.model", "missing/tokenizer.json"])
def test_bad_tokenizer_spec_names_the_field(spec):
    with pytest.raises(ValueError, match=r"config.data.tokenizer = .*allowed: 'byte'"):
        tokenizers.load_tokenizer(spec)
