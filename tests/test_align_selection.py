"""psqe.align.selection (label-free scores) and ``fit``'s ``monitor``: against
brute force and the run without a monitor."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from psqe.align import AlignData, TrainConfig, embed, fit
from psqe.align.selection import free_entities, label_free_scores, mutual_nearest
from psqe.data.synthetic import make_pair

from test_align_train import Tiny

pytestmark = pytest.mark.one_thread


def brute_mutual(joint, n1, used):
    """Mutual nearest neighbours by a dense cosine matrix over the entities outside ``used``."""
    free = [i for i in range(joint.shape[0]) if i not in used]
    left, right = [i for i in free if i < n1], [i for i in free if i >= n1]
    s = F.normalize(joint[left].double(), dim=1) @ F.normalize(joint[right].double(), dim=1).t()
    a, b = s.argmax(1), s.argmax(0)
    return [(left[i], right[int(a[i])], float(s[i, a[i]])) for i in range(len(left)) if int(b[a[i]]) == i]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_free_scores_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n1, n2, d = 70, 90, 12
    base = torch.randn(n2, d, generator=g)
    joint = torch.cat([base[:n1] + 0.8 * torch.randn(n1, d, generator=g), base])  # kg1 i ~ kg2 n1 + i, noisy
    train = torch.tensor([[0, n1], [5, n1 + 7], [9, n1 + 40]])
    val = torch.tensor([[12, n1 + 12]])
    want = brute_mutual(joint, n1, set(train.flatten().tolist()) | set(val.flatten().tolist()))
    left, right, cos = mutual_nearest(joint, *free_entities(n1 + n2, n1, train, val))
    assert sorted(zip(left.tolist(), right.tolist())) == sorted((l, r) for l, r, _ in want)
    scores = label_free_scores(joint, n1, train, None, val)
    assert scores["mnn"] == len(want) > 10
    assert scores["mnn_rate"] == pytest.approx(len(want) / (n1 - 4))
    assert scores["mnn_cos"] == pytest.approx(sum(c for *_, c in want) / len(want), abs=1e-5)
    added = torch.tensor([[l, r] for l, r, _ in want[::3]] + [[1, n1 + 2], [want[1][0], want[0][1]]])
    marked = label_free_scores(joint, n1, train, None, val, added=added)
    mutual = {(l, r) for l, r, _ in want}
    assert marked["mnn_added"] == sum((l, r) in mutual for l, r in added.tolist()) == len(want[::3])
    assert {k: marked[k] for k in scores} == scores


def test_label_free_scores_with_nothing_free():
    joint = torch.randn(4, 3)
    every = torch.tensor([[0, 2], [1, 3]])
    assert label_free_scores(joint, 2, every) == {"mnn": 0, "mnn_rate": 0.0, "mnn_cos": 0.0}


@pytest.fixture(scope="module")
def pair_data():
    pair = make_pair(300, seed=1, noise={"visual": 0.5, "attribute": 1.0, "relation": 1.0})
    return AlignData.from_pair(pair, modalities=["visual"])


def test_monitor_sees_each_evaluation_and_changes_nothing(pair_data):
    data = pair_data
    seeds, val = data.links[:60], data.links[60:90]
    cfg = TrainConfig(epochs=7, lr=1e-2, batch_size=512, eval_every=3)
    seen = []

    def monitor(epoch, model, d):
        seen.append(epoch)
        return {"mnn": label_free_scores(embed(model, d)["joint"], d.n1, seeds)["mnn"]}

    bare = fit(Tiny(data), data, seeds, cfg, val_pairs=val, progress=False)
    watched = fit(Tiny(data), data, seeds, cfg, val_pairs=val, progress=False, monitor=monitor)
    assert seen == [2, 5, 6]  # every 3 epochs and the last
    assert watched.losses == bare.losses and watched.best_epoch == bare.best_epoch
    assert [{k: v for k, v in h.items() if k != "mnn"} for h in watched.val_history] == bare.val_history
    assert all(h["mnn"] > 0 for h in watched.val_history)
    # without validation pairs the monitor still runs, and nothing is selected or restored
    seen.clear()
    alone = fit(Tiny(data), data, seeds, cfg, progress=False, monitor=monitor)
    assert seen == [2, 5, 6] and alone.best_epoch is None and alone.losses == bare.losses
    assert [h["epoch"] for h in alone.val_history] == [2, 5, 6]



class WithExtra(Tiny):
    """Tiny with pairs of its own (as PCMEA's pseudo-links): trained on, yet counted (the set is fixed at the start)."""

    def __init__(self, data, extra):
        super().__init__(data)
        self.extra = extra

    def extra_train_pairs(self):
        return self.extra


def best_is_not_last(values) -> bool:
    return values.index(max(values)) < len(values) - 1


def test_label_free_selection_picks_and_restores_the_most_mutual_epoch(pair_data):
    data = pair_data
    seeds, extra = data.links[:60], data.links[200:210]
    cfg = TrainConfig(epochs=12, lr=3e-2, batch_size=512, eval_every=2, select_metric="mnn")
    model = WithExtra(data, extra)
    res = fit(model, data, seeds, cfg, progress=False)
    counts = [h["mnn"] for h in res.val_history]
    assert [h["epoch"] for h in res.val_history] == [1, 3, 5, 7, 9, 11]
    assert best_is_not_last(counts)  # so that restoring is tested
    best = counts.index(max(counts))
    assert res.best_epoch == res.val_history[best]["epoch"] and res.best_score == max(counts)
    joint = embed(model, data)["joint"]
    keys = ("mnn", "mnn_rate", "mnn_cos", "mnn_added")  # mnn_added: the model's extra pairs among them
    assert label_free_scores(joint, data.n1, seeds, added=extra) == {k: res.val_history[best][k] for k in keys}
    assert res.best_state is None  # restored
    kept = WithExtra(data, extra)
    res2 = fit(kept, data, seeds, TrainConfig(**{**cfg.__dict__, "restore_best": False}), progress=False)
    final = label_free_scores(embed(kept, data)["joint"], data.n1, seeds)["mnn"]
    assert final == counts[-1] and res2.best_epoch == res.best_epoch
    kept.load_state_dict(res2.best_state)
    assert label_free_scores(embed(kept, data)["joint"], data.n1, seeds)["mnn"] == max(counts)
    with pytest.raises(ValueError, match="select_metric"):
        TrainConfig(select_metric="mnn_rate")
    with pytest.raises(ValueError, match="select_metric"):  # reported, but it ran against test accuracy
        TrainConfig(select_metric="mnn_cos")


def test_label_free_selection_warns_when_training_adds_pairs(pair_data, caplog):
    """The count includes the pairs a run adds (stop 26: PCMEA's pick is then its last check): fit says so."""
    data, seeds = pair_data, pair_data.links[:60]
    cfg = TrainConfig(epochs=2, lr=3e-2, batch_size=512, eval_every=2, select_metric="mnn")
    with caplog.at_level(logging.WARNING, logger="psqe.align.train"):
        fit(Tiny(data), data, seeds, cfg, progress=False)
        assert "adds itself" not in caplog.text
        fit(WithExtra(data, data.links[200:210]), data, seeds, cfg, progress=False)
        assert "counts the pairs this run adds itself (the model's extra_train_pairs)" in caplog.text
        caplog.clear()
        fit(Tiny(data), data, seeds, TrainConfig(**{**cfg.__dict__, "il": True}), progress=False)
        assert "iterative learning's merges" in caplog.text
        caplog.clear()
        fit(Tiny(data), data, seeds, TrainConfig(**{**cfg.__dict__, "il": True, "select_metric": "mrr"}),
            val_pairs=data.links[60:65], progress=False)
        assert "adds itself" not in caplog.text  # ranked on held-out pairs: nothing to say
        fit(WithExtra(data, data.links[200:210]), data, seeds, TrainConfig(**{**cfg.__dict__, "eval_every": 0}),
            progress=False)
        assert "adds itself" not in caplog.text  # no checks, nothing selected
        fit(WithExtra(data, data.links[200:210]), data, seeds, cfg, val_pairs=data.links[60:65], progress=False)
        assert "extra_train_pairs" in caplog.text  # the count ignores val_pairs' ranks: it still warns


def test_label_free_selection_counts_one_set_while_iterative_learning_merges(pair_data):
    """The entities the score counts are fixed when training starts: pairs merged later stay counted."""
    data = pair_data
    seeds = data.links[:60]
    cfg = TrainConfig(epochs=12, lr=3e-2, batch_size=512, eval_every=2, select_metric="mnn", il=True, il_start=2,
                      il_every=2, il_persist=1, restore_best=False)
    model = Tiny(data)
    res = fit(model, data, seeds, cfg, progress=False)
    assert res.il_added and res.train_pairs.shape[0] > seeds.shape[0]  # pairs were merged
    merged = res.train_pairs[seeds.shape[0]:]
    last = label_free_scores(embed(model, data)["joint"], data.n1, seeds, added=merged)
    assert res.val_history[-1]["mnn"] == last["mnn"]
    assert res.val_history[-1]["mnn_added"] == last["mnn_added"] > 0  # merged pairs are among those counted
