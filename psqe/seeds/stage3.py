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


def _neighbour_lists(entities: torch.Tensor, nb: tuple[torch.Tensor, torch.Tensor],
                     used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each entity's unused neighbours (an entity without neighbours stands for
    itself), concatenated in entity order: ``(members, ptr)``, entity ``i``'s
    list being ``members[ptr[i]:ptr[i + 1]]`` in neighbour order."""
    indptr, idx = nb
    start, stop = indptr[entities], indptr[entities + 1]
    count = stop - start
    lonely = count == 0
    count = torch.where(lonely, 1, count)
    owner = torch.repeat_interleave(torch.arange(entities.numel()), count)
    first = torch.cumsum(count, 0) - count
    pos = torch.arange(int(count.sum())) - first[owner] + start[owner]
    if idx.numel():
        members = torch.where(lonely[owner], entities[owner], idx[pos.clamp(max=idx.numel() - 1)])
    else:  # no edges at all: everyone stands for itself
        members = entities[owner]
    keep = ~used[members]
    members, owner = members[keep], owner[keep]
    ptr = torch.zeros(entities.numel() + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(owner, minlength=entities.numel()), 0, out=ptr[1:])
    return members, ptr


#: Rows (kg1 + kg2 neighbours) gathered per chunk of seeds in Stage III (bounds the memory held at once).
_CHUNK_ROWS = 8192


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
    """New pairs ``[P, 2]`` (kg1 local, kg2 local) found around the seeds.

    All seeds' neighbour blocks are scored into one flat buffer (one matrix
    product per seed, nothing else in the loop), then thresholded at once:
    thousands of tiny operations per run would each wait for the other
    thread on a busy 2-core machine.
    """
    if schedule not in ("paper", "script"):
        raise ValueError(f"stage3: schedule must be 'paper' or 'script', got {schedule!r}")
    w = {m: v for m, v in weights.items() if m in original1 and m in tuned1 and m in original2 and m in tuned2}
    if not w:
        raise ValueError(f"stage3: no weighted modality has both original and tuned features (weights {sorted(weights)})")
    n1, n2 = next(iter(original1.values())).shape[0], next(iter(original2.values())).shape[0]
    seeds = seeds.long().cpu()
    s = seeds.shape[0]
    used1 = torch.zeros(n1, dtype=torch.bool)
    used2 = torch.zeros(n2, dtype=torch.bool)
    used1[seeds[:, 0]] = True
    used2[seeds[:, 1]] = True
    a_all, a_ptr = _neighbour_lists(seeds[:, 0], neighbours1, used1)
    b_all, b_ptr = _neighbour_lists(seeds[:, 1], neighbours2, used2)
    # The joined tables only for the entities some block reads (row-wise, so
    # the same numbers as the full tables).
    need1, a_row = torch.unique(a_all, return_inverse=True)
    need2, b_row = torch.unique(b_all, return_inverse=True)
    left, right = weighted_pair_tables(joined_tables({m: original1[m][need1] for m in w}, {m: tuned1[m][need1] for m in w}),
                                       joined_tables({m: original2[m][need2] for m in w}, {m: tuned2[m][need2] for m in w}), w)
    na, nb = a_ptr.diff(), b_ptr.diff()
    size = na * nb  # block of seed i: na[i] x nb[i] scores, row-major
    offset = torch.zeros(s + 1, dtype=torch.long)
    torch.cumsum(size, 0, out=offset[1:])
    flat = torch.empty(int(offset[-1]), dtype=left.dtype)
    busy = (size > 0).nonzero().squeeze(1).tolist()
    na_l, nb_l, a_l, b_l, off_l = na.tolist(), nb.tolist(), a_ptr.tolist(), b_ptr.tolist(), offset.tolist()
    k = 0
    while k < len(busy):  # chunks of seeds: gather their rows once, then one product per seed
        first = busy[k]
        last = k
        while last + 1 < len(busy) and a_l[busy[last + 1] + 1] - a_l[first] + b_l[busy[last + 1] + 1] - b_l[first] <= _CHUNK_ROWS:
            last += 1
        stop = busy[last]
        rows_a = left[a_row[a_l[first]:a_l[stop + 1]]]
        rows_b = right[b_row[b_l[first]:b_l[stop + 1]]]
        for i in busy[k:last + 1]:
            pa, pb = a_l[i] - a_l[first], b_l[i] - b_l[first]
            out = flat[off_l[i]:off_l[i + 1]].view(na_l[i], nb_l[i])
            torch.mm(rows_a[pa:pa + na_l[i]], rows_b[pb:pb + nb_l[i]].T, out=out)
        k = last + 1
    owner_of = torch.repeat_interleave(torch.arange(s), size)
    if schedule == "paper":
        hit = (flat > eta).nonzero().squeeze(1)
    else:  # eta_i = eta + 0.1 * i / s, in double as Python computes it, compared in float32
        threshold = (eta + 0.1 * torch.arange(s, dtype=torch.float64) / s).to(flat.dtype)
        hit = (flat > threshold[owner_of]).nonzero().squeeze(1)
    if hit.numel() == 0:
        return torch.empty(0, 2, dtype=torch.long)
    owner = owner_of[hit]
    local = hit - offset[owner]
    scores = flat[hit]
    rows = a_all[a_ptr[owner] + local // nb[owner]]
    cols = b_all[b_ptr[owner] + local % nb[owner]]
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
