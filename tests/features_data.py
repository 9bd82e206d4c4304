"""Test helpers for psqe.features: small generated pairs, tiny encoders, and the
DBP15K zh_en pair read directly from the shared files (independent of the
loaders in psqe.data)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from psqe.data import KGPair, KnowledgeGraph

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "france", "banana", "bread",
              "city", "of", "the", "river", "##s", "born", "in", "a", "b", "c"]


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer, 32-wide BERT with a WordPiece vocabulary, saved to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    if len(tokenizer) != len(TINY_VOCAB):  # transformers 5 ignores vocab_file (every word became [UNK]); it takes vocab=
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(TINY_VOCAB)}, do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids("paris") == TINY_VOCAB.index("paris"), "the tiny vocabulary did not load"
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def random_pair(n: int = 3000, links: int = 2400, triples: int = 12000, relations: int = 40,
                seed: int = 0) -> KGPair:
    """Two graphs of ``n`` entities with power-law-ish random triples; the first
    ``links`` entities of each side are linked (kg2 is a noisy copy of kg1's
    structure on the linked part, so classes and degrees correlate)."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, n + 1).float() ** 0.8
    heads = torch.multinomial(weights, triples, replacement=True, generator=g)
    tails = torch.multinomial(weights, triples, replacement=True, generator=g)
    rels = torch.multinomial(1.0 / torch.arange(1, relations + 1).float(), triples, replacement=True, generator=g)
    perm = torch.randperm(n, generator=g)  # kg2's local order differs from kg1's
    t1 = torch.stack([heads, rels, tails], 1)
    keep = torch.rand(triples, generator=g) < 0.8
    t2 = torch.stack([perm[heads[keep]] + n, rels[keep] + relations, perm[tails[keep]] + n], 1)
    kg1 = KnowledgeGraph(torch.arange(n), [f"e{i}" for i in range(n)], t1,
                         relation_names={r: f"http://x/rel_{r}" for r in range(relations)})
    kg2 = KnowledgeGraph(torch.arange(n, 2 * n), [f"f{i}" for i in range(n)], t2,
                         relation_names={r + relations: f"http://y/rel_{r}" for r in range(relations)})
    linked = torch.randperm(n, generator=g)[:links]
    return KGPair(kg1, kg2, links=torch.stack([linked, perm[linked] + n], 1), name="random")


def _rows(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dbp15k_pair(data: Path, code: str = "zh_en") -> tuple[KGPair, dict[int, list[str]]]:
    """DBP15K ``code`` as a KGPair (with relation names) and its translated name tokens."""
    folder = data / "DBP15K" / code
    kgs = []
    for k in (1, 2):
        ents = _rows(folder / f"ent_ids_{k}")
        triples = torch.tensor([[int(x) for x in r] for r in _rows(folder / f"triples_{k}")])
        rel_names = {int(r[0]): r[1] for r in _rows(folder / f"rel_ids_{k}")}
        kgs.append(KnowledgeGraph(torch.tensor([int(r[0]) for r in ents]), [r[1] for r in ents], triples,
                                  relation_names=rel_names))
    links = torch.tensor([[int(x) for x in r] for r in _rows(folder / "ill_ent_ids")])
    names = {int(i): toks for i, toks in json.loads((data / "DBP15K" / "translated_ent_name" /
                                                     f"dbp_{code}.json").read_text(encoding="utf-8"))}
    return KGPair(kgs[0], kgs[1], links=links, name=f"DBP15K {code}"), names
