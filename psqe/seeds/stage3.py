"""PSQE Stage III: neighbourhood expansion (paper §4.3.1, Eq. 7).

For every seed ``(e1, e2)`` the pairs ``N(e1) x N(e2)`` of their neighbours
are scored by the weighted sum of per-modality cosines on
``norm([h_m, norm(H_m)])`` (original feature joined with its tuned one); an
entity without neighbours stands for itself. Pairs above the safety
threshold ``eta`` whose entities are both unused become candidates.

- ``schedule="paper"`` (default): one threshold ``eta``; conflicts between
  candidates are resolved by the greedy one-to-one walk over all of them.
- ``schedule="script"``: the authors' script: for the seed at position ``i``
  of ``S2``, ``eta_i = eta + 0.1 * i / |S2|`` and at most
  ``int(6 - 3 * i / |S2|)`` new pairs, seeds taken in order.

The recheck (MIC on the expanded list) is the caller's (see pipeline).

>>> import torch
>>> from psqe.seeds.stage3 import expand
>>> t = {"visual": torch.eye(4)}
>>> nb = (torch.tensor([0, 1, 2, 2, 2]), torch.tensor([1, 0]))  # 0-1 linked
>>> expand(torch.tensor([[0, 0]]), nb, nb, t, t, t, t, {"visual": 1.0}, eta=0.5).tolist()
[[1, 1]]
"""
from __future__ import annotations

import logging

import torch
from torch.nn.functional import normalize

from .. import ops
from .fusion import weighted_pair_tables

log = logging.getLogger(__name__)


def joined_tables(original: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``norm([h_m, norm(H_m)])`` per modality present in both."""
    return {
        m: normalize(torch.cat([original[m].float(), normalize(tuned[m].float(), dim=1)], dim=1), dim=1)
        for m in original
        if m in tuned
    }


def _neighbourhood(entity: int, nb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    indptr, idx = nb
    found = idx[indptr[entity] : indptr[entity + 1]]
    return found if found.numel() else torch.tensor([entity])


def expand(
    seeds: torch.Tensor,
    neighbours1: tuple[torch.Tensor, torch.Tensor],
    neighbours2: tuple[torch.Tensor, torch.Tensor],
    original1: dict[str, torch.Tensor],
    original2: dict[str, torch.Tensor],
    tuned1: dict[str, torch.Tensor],
    tuned2: dict[str, torch.Tensor],
    weights: dict[str, float],
    eta: float = 0.8,
    schedule: str = "paper",
) -> torch.Tensor:
    """New pairs ``[P, 2]`` (kg1 local, kg2 local) found around the seeds."""
    if schedule not in ("paper", "script"):
        raise ValueError(f"stage3: schedule must be 'paper' or 'script', got {schedule!r}")
    j1, j2 = joined_tables(original1, tuned1), joined_tables(original2, tuned2)
    w = {m: v for m, v in weights.items() if m in j1 and m in j2}
    if not w:
        raise ValueError(f"stage3: no weighted modality has both original and tuned features (weights {sorted(weights)})")
    left, right = weighted_pair_tables(j1, j2, w)
    n1, n2 = left.shape[0], right.shape[0]
    used1 = torch.zeros(n1, dtype=torch.bool)
    used2 = torch.zeros(n2, dtype=torch.bool)
    used1[seeds[:, 0]] = True
    used2[seeds[:, 1]] = True
    scores, rows, cols, owner = [], [], [], []
    s = seeds.shape[0]
    for i, (e1, e2) in enumerate(seeds.tolist()):
        a, b = _neighbourhood(e1, neighbours1), _neighbourhood(e2, neighbours2)
        a, b = a[~used1[a]], b[~used2[b]]
        if a.numel() == 0 or b.numel() == 0:
            continue
        sim = left[a] @ right[b].T
        threshold = eta if schedule == "paper" else eta + 0.1 * i / s
        hit = (sim > threshold).nonzero()
        scores.append(sim[hit[:, 0], hit[:, 1]])
        rows.append(a[hit[:, 0]])
        cols.append(b[hit[:, 1]])
        owner.append(torch.full((hit.shape[0],), i, dtype=torch.long))
    if not scores:
        return torch.empty(0, 2, dtype=torch.long)
    scores, rows, cols, owner = torch.cat(scores), torch.cat(rows), torch.cat(cols), torch.cat(owner)
    if schedule == "paper":
        pos = ops.greedy_match(scores, rows, cols)
        new = torch.stack([rows[pos], cols[pos]], dim=1)
    else:
        new = _script_walk(scores, rows, cols, owner, s)
    log.info("stage III: %d candidate pairs above eta, %d new pairs", scores.numel(), new.shape[0])
    return new


def _script_walk(scores, rows, cols, owner, s: int) -> torch.Tensor:
    """Seeds in order; each takes its best unused candidates, at most int(6 - 3 i / s)."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]  # by seed, then score desc
    taken1, taken2, per_seed, out = set(), set(), {}, []
    for p in order.tolist():
        i, r, c = int(owner[p]), int(rows[p]), int(cols[p])
        cap = int(6 - 3 * i / s)
        if per_seed.get(i, 0) >= cap or r in taken1 or c in taken2:
            continue
        taken1.add(r)
        taken2.add(c)
        per_seed[i] = per_seed.get(i, 0) + 1
        out.append((r, c))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)
