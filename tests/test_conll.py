"""The CoNLL / IOB reader: separators, -DOCSTART-, field choice, errors naming file:line, round trip."""

from __future__ import annotations

import hashlib

import pytest

from components.lib.core.errors import DataError, UserError
from components.lib.sources.conll import iter_conll, read_conll, write_conll


def write(tmp_path, text: str | bytes, name: str = "ner.txt"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_separators_docstart_and_spacing(tmp_path):
    path = write(tmp_path, (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "EU  \t NNP B-ORG\n"            # a run of spaces and tabs is one separator
        "rejects\tVBZ\tO\n"
        "\t\n"                          # WNUT-16: a lone TAB ends the sentence
        "\n"                            # extra blank lines make no empty sentences
        "Peter NNP B-PER\r\n"            # CRLF line ends
        "Blackburn NNP I-PER\r\n"
        "   \n"                         # spaces only
        "-DOCSTART- -X- -X- O\n"
        "BRUSSELS NNP B-LOC\n"
        "1996-08-22 CD O"               # the last sentence needs no final blank line (nor newline)
    ))
    assert read_conll(path) == [
        (["EU", "rejects"], ["B-ORG", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    ]
    assert [s.line for s in iter_conll(path)] == [3, 7, 11]


def test_custom_fields_and_token_only(tmp_path):
    path = write(tmp_path, "1 EU NNP B-NP B-ORG\n2 rejects VBZ B-VP O\n\n1 German JJ B-NP B-MISC\n")
    assert read_conll(path, token_field=1, tag_field=2) == [(["EU", "rejects"], ["NNP", "VBZ"]), (["German"], ["JJ"])]
    assert read_conll(path, token_field=1, tag_field=-1)[1] == (["German"], ["B-MISC"])
    words_only = write(tmp_path, "hello\nworld\n\nagain\n", "raw.txt")
    sents = list(iter_conll(words_only, tag_field=None))
    assert [(s.words, s.tags) for s in sents] == [(["hello", "world"], None), (["again"], None)]
    with pytest.raises(UserError, match="name the same field"):
        list(iter_conll(path, token_field=-1, tag_field=-1))


def test_bad_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "EU B-ORG\nrejects O\n\nfoo\nbar O\n")
    with pytest.raises(DataError) as err:
        read_conll(path)
    msg = str(err.value)
    assert msg == f"{path}:4: expected at least 2 fields, got 1 ('foo')" and "\n" not in msg
    # a tag field further right needs more fields
    with pytest.raises(DataError, match=r"ner.txt:1: expected at least 4 fields, got 2"):
        read_conll(path, tag_field=3)


def test_bad_encoding_and_missing_file(tmp_path):
    path = write(tmp_path, "caf\xc3\xa9 O\n\nna\xefve O\n".encode("latin-1"), "latin.conll")
    with pytest.raises(DataError, match=r"latin.conll:3: not valid utf-8"):
        read_conll(path)
    assert read_conll(path, encoding="latin-1")[1] == (["na\xefve"], ["O"])
    with pytest.raises(DataError, match="missing.conll: file not found"):
        read_conll(tmp_path / "missing.conll")
    with pytest.raises(DataError, match="found a directory"):
        read_conll(tmp_path)


def test_bom_and_digest(tmp_path):
    raw = "\ufeffHello O\nWorld B-LOC\n".encode()
    path = write(tmp_path, raw)
    digest = hashlib.sha256()
    assert [s.words for s in iter_conll(path, digest=digest)] == [["Hello", "World"]]
    assert digest.hexdigest() == hashlib.sha256(raw).hexdigest()  # hashed while streaming


def test_round_trip(tmp_path):
    sentences = [(["Alice", "flew", "to", "New", "York"], ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
                 (["ok"], ["O"]), (["Zoë", "«", "東京", "»"], ["B-PER", "O", "B-LOC", "O"])]
    path = tmp_path / "out" / "rt.conll"
    write_conll(sentences, path)
    assert read_conll(path) == sentences
    assert path.read_text(encoding="utf-8").endswith("O\n\n")
    with pytest.raises(ValueError, match="holds whitespace"):
        write_conll([(["New York"], ["B-LOC"])], tmp_path / "bad.conll")
    with pytest.raises(ValueError, match="1 words and 2 tags"):
        write_conll([(["a"], ["O", "O"])], tmp_path / "bad.conll")
    assert not (tmp_path / "bad.conll").exists()
