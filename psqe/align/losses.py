"""Losses shared by the aligners: EVA's NCA, MCLEA's ICL and IAL, uncertainty weighting.

Every loss takes the embeddings of one batch of training pairs, ``h1[i]``
(kg1 entity) and ``h2[i]`` (kg2 entity) being pair ``i``, and returns a
float32 scalar (inputs of lower precision are up-cast, so the losses are safe
under autocast).

>>> import torch
>>> h = torch.eye(4)
>>> round(nca_loss(h, h).item(), 3)  # 2 log(1 + 3) / 15 - 10 log 2
-6.747
>>> round(contrastive_loss(h, h, tau=0.1).item(), 4)  # log(1 + 6 e^-10)
0.0003
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..seeds.stage2_train import _logsumexp_others, icl_loss

#: A finite stand-in for -inf on masked logits (KL needs finite inputs), as in MCLEA's code.
_LARGE = 1e9


def _batch(h1: Tensor, h2: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if h1.dim() != 2 or h1.shape != h2.shape or h1.size(0) == 0:
        raise ValueError(f"{name}: h1 and h2 must be non-empty [B, d] of one shape, got {tuple(h1.shape)} and {tuple(h2.shape)}")
    return h1.float(), h2.float()


def nca_loss(h1: Tensor, h2: Tensor, alpha: float = 15.0, beta: float = 10.0, ep: float = 0.0) -> Tensor:
    """EVA's NCA loss (``NCA_loss`` of the EVA code), batch mean.

    With ``x``, ``y`` the L2-normalised rows of ``h1``, ``h2`` and
    ``S = x y^T`` (``B x B`` cosines)::

        loss = 1/B sum_i [ 1/alpha log(1 + sum_{j != i} exp(alpha (S_ji - ep)))     (column i)
                         + 1/alpha log(1 + sum_{j != i} exp(alpha (S_ij - ep)))     (row i)
                         - beta log(1 + relu(S_ii)) ]

    i.e. a multi-similarity-style soft maximum over each pair's in-batch
    negatives in both directions, and a reward for the positive's cosine.
    EVA's values: ``alpha=5, beta=10, ep=0`` on the graph embedding and
    ``alpha=15, beta=10, ep=0`` on every other modality and the joint one
    (``src/run_dbp15k.py``). ``log(1 + sum exp(l))`` is computed as
    ``softplus(logsumexp(l))``: the same value, stable for any alpha.

    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(nca_loss(x, x, alpha=1.0, beta=0.0).item(), 4)  # 2 * log(1 + e^0) per pair
    1.3863
    """
    x, y = _batch(h1, h2, "nca_loss")
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    # B x B is the only large tensor: built once, diagonal masked in place, reduced twice
    # (no eye mask, no concatenation: at B = 4500 these element-wise passes dominate the time).
    logits = (alpha * x) @ y.t()
    if ep:
        logits = logits - alpha * ep
    logits.diagonal().fill_(-math.inf)
    rows = F.softplus(torch.logsumexp(logits, dim=1))  # log(1 + sum_j exp(l_ij))
    cols = F.softplus(torch.logsumexp(logits, dim=0))
    reward = torch.log1p(F.relu((x * y).sum(dim=1)))
    return ((rows + cols) / alpha - beta * reward).mean()


class NCALoss(nn.Module):
    """:func:`nca_loss` with fixed ``alpha``, ``beta``, ``ep``."""

    def __init__(self, alpha: float = 15.0, beta: float = 10.0, ep: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.ep = alpha, beta, ep

    def forward(self, h1: Tensor, h2: Tensor) -> Tensor:
        return nca_loss(h1, h2, self.alpha, self.beta, self.ep)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, ep={self.ep}"


def contrastive_loss(h1: Tensor, h2: Tensor, tau: float = 0.1, normalize: bool = True, combine: str = "log") -> Tensor:
    """MCLEA's / MEAformer's intra-modal contrastive loss (ICL) on one batch.

    The rows are L2-normalised (``normalize``, as the MCLEA code does) and
    passed to :func:`psqe.seeds.stage2_train.icl_loss` with temperature
    ``tau``: in-batch negatives from both graphs, both directions.
    ``combine="log"`` averages the two directions' cross-entropies (MCLEA's
    ``ab_weight=0.5``); ``"prob"`` is the PSQE paper's Eq. 2.
    """
    x, y = _batch(h1, h2, "contrastive_loss")
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return icl_loss(x, y, temperature=tau, combine=combine)


def _pair_logits(a: Tensor, b: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """MCLEA's ``[a b^T, a a^T]`` and ``[b a^T, b b^T]`` logits, self-similarity masked."""
    sa = a / tau  # scale the [B, d] factors, not the [B, B] products
    ab, aa, bb = sa @ b.t(), sa @ a.t(), (b / tau) @ b.t()
    aa.diagonal().sub_(_LARGE)  # mm's backward reads its inputs only: the products may change in place
    bb.diagonal().sub_(_LARGE)
    return torch.cat([ab, aa], 1), torch.cat([ab.t(), bb], 1)


def ial_loss(src1: Tensor, src2: Tensor, tgt1: Tensor, tgt2: Tensor, tau: float = 4.0, zoom: float = 0.1,
             ab_weight: float = 0.5) -> Tensor:
    """MCLEA's inter-modal alignment loss (IAL): KL from a uni-modal to the joint in-batch distribution.

    ``src1/src2``: one modality's embeddings of the batch's kg1 / kg2 entities;
    ``tgt1/tgt2``: the joint embeddings (the target, detached). All rows are
    L2-normalised. For entity ``i`` of kg1 the candidate logits are
    ``[s(a_i, b_j) for all j] + [s(a_i, a_j) for j != i]`` divided by ``tau``
    (likewise for kg2), and::

        loss = zoom * (ab_weight * mean KL(q_ab || p_ab) + (1 - ab_weight) * mean KL(q_ba || p_ba))

    with ``p`` the source's softmax, ``q`` the target's, and the mean over all
    ``B x 2B`` entries (MCLEA's ``reduction="mean"``). MCLEA: ``tau=4.0``
    (its ``tau2``), ``zoom=0.1``, ``ab_weight=0.5``. MCLEA trains with
    :func:`icl_ial_losses` (the same value from ICL's product).

    >>> import torch
    >>> a = torch.randn(5, 8)
    >>> float(ial_loss(a, a + 1, a, a + 1))  # same distributions: no loss
    0.0
    """
    s1, s2 = _batch(src1, src2, "ial_loss")
    t1, t2 = _batch(tgt1, tgt2, "ial_loss")
    if s1.size(0) != t1.size(0):
        raise ValueError(f"ial_loss: {s1.size(0)} source rows but {t1.size(0)} target rows")
    s1, s2 = F.normalize(s1, dim=1), F.normalize(s2, dim=1)
    t1, t2 = F.normalize(t1.detach(), dim=1), F.normalize(t2.detach(), dim=1)
    p_ab, p_ba = _pair_logits(s1, s2, tau)
    q_ab, q_ba = _pair_logits(t1, t2, tau)
    kl_a = F.kl_div(F.log_softmax(p_ab, 1), F.log_softmax(q_ab, 1), reduction="none", log_target=True).mean()
    kl_b = F.kl_div(F.log_softmax(p_ba, 1), F.log_softmax(q_ba, 1), reduction="none", log_target=True).mean()
    return zoom * (ab_weight * kl_a + (1 - ab_weight) * kl_b)


def ial_target(tgt1: Tensor, tgt2: Tensor, tau: float = 4.0) -> Tensor:
    """The IAL target of a batch for :func:`icl_ial_losses`: ``[2B, 2B]`` row log-softmaxes of the
    L2-normalised joint embeddings' in-batch logits (rows and columns: the kg1 entities, then the kg2
    ones; self-similarity masked), detached.

    >>> import torch
    >>> [round(float(x), 5) for x in ial_target(torch.eye(2), torch.eye(2)).exp().sum(1)]  # each row a distribution
    [1.0, 1.0, 1.0, 1.0]
    """
    t1, t2 = _batch(tgt1, tgt2, "ial_target")
    t = F.normalize(torch.cat([t1, t2]).detach(), dim=1)
    logits = (t / tau) @ t.t()
    logits.diagonal().fill_(-_LARGE)
    return F.log_softmax(logits, dim=1)


def icl_ial_losses(h1: Tensor, h2: Tensor, log_q: Tensor, tau: float = 0.1, tau2: float = 4.0, zoom: float = 0.1,
                   ab_weight: float = 0.5) -> tuple[Tensor, Tensor]:
    """One modality's ICL and IAL terms of MCLEA on a batch, from one product.

    Returns ``contrastive_loss(h1, h2, tau, combine="log")`` and ``ial_loss(h1,
    h2, t1, t2, tau2, zoom, ab_weight)`` where ``log_q = ial_target(t1, t2,
    tau2)``: both terms read the same cosines of the batch's normalised rows
    (IAL's logits are ICL's candidates at another temperature), so one
    ``[2B, 2B]`` product serves both, and the backward is one pair of
    products for the two (:class:`_ICLIAL`), where the separate terms take
    three products forward and six backward for IAL alone.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b, t = (torch.randn(6, 8, generator=g) for _ in range(3))
    >>> icl, ial = icl_ial_losses(a, b, ial_target(t, t + 1))
    >>> abs(float(icl) - float(contrastive_loss(a, b))) < 1e-6
    True
    >>> abs(float(ial) / float(ial_loss(a, b, t, t + 1)) - 1) < 1e-4
    True
    """
    x, y = _batch(h1, h2, "icl_ial_losses")
    if log_q.shape != (2 * x.size(0), 2 * x.size(0)):
        raise ValueError(f"icl_ial_losses: log_q must be [{2 * x.size(0)}, {2 * x.size(0)}] (ial_target of the "
                         f"batch), got {tuple(log_q.shape)}")
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return _ICLIAL.apply(x, y, log_q.detach().float(), float(tau), float(tau2), float(zoom), float(ab_weight))


class _ICLIAL(torch.autograd.Function):
    """:func:`icl_ial_losses` with a hand-written backward (the cosines ``S = H H^T``, ``H = [h1; h2]``:
    ``dH = (G + G^T) H`` with ``G`` the two terms' gradients with respect to ``S``)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, h1, h2, log_q, tau, tau2, zoom, ab_weight):
        b = h1.size(0)
        h = torch.cat([h1, h2])
        cos = h @ h.t()
        pos = (h1 * h2).sum(dim=1)
        lse, p = _logsumexp_others(cos / tau)  # ICL: the candidates' softmax, in place of a copy
        icl = (lse - pos.repeat(2) / tau).mean()
        log_p2 = cos.div_(tau2)  # IAL: the source's distribution at tau2, in place of the cosines
        log_p2.diagonal().fill_(-_LARGE)
        log_p2 = torch.log_softmax(log_p2, dim=1)
        q = log_q.exp()
        rows = torch.full((2 * b,), zoom / (2 * b * b), device=h.device)  # the mean over B x 2B entries per side
        rows[:b] *= ab_weight
        rows[b:] *= 1 - ab_weight
        ial = (rows * (q * (log_q - log_p2)).sum(dim=1)).sum()
        diff = log_p2.exp_().sub_(q)  # dKL_i / d(logit_ij) = p_ij - q_ij
        diff.diagonal().zero_()  # the masked self-similarity takes no gradient
        ctx.tau, ctx.tau2 = tau, tau2
        ctx.save_for_backward(h, p, diff, rows)
        return icl, ial

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_icl, g_ial):
        h, p, diff, rows = ctx.saved_tensors
        c = g_icl / h.size(0)  # d icl / d log_p_i = -1 / 2B for each of the 2B rows
        g = p * (c / ctx.tau) + diff * (rows * (g_ial / ctx.tau2))[:, None]  # saved tensors stay as they are
        dh1, dh2 = _cosine_backward(h, g, c / ctx.tau)
        return dh1, dh2, None, None, None, None, None


def _cosine_backward(h: Tensor, g: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of ``h1``, ``h2`` (``h = [h1; h2]``) for ``g``, the gradient with respect to the
    cosines ``h h^T``, plus ``-2 c`` on each positive cosine ``h1_i . h2_i`` (ICL's numerators: each
    appears in two of the ``2B`` rows, each row's weight ``-c``)."""
    b = h.size(0) // 2
    dh = torch.mm(g, h) + torch.mm(g.t(), h)
    dh[:b].sub_(h[b:] * (2 * c))
    dh[b:].sub_(h[:b] * (2 * c))
    return dh[:b], dh[b:]


def icl_with_target(h1: Tensor, h2: Tensor, tau: float = 0.1, tau2: float = 4.0) -> tuple[Tensor, Tensor]:
    """MCLEA's joint ICL term and the batch's IAL target, from one product.

    Returns ``contrastive_loss(h1, h2, tau, combine="log")`` and ``ial_target(h1,
    h2, tau2)``: the joint embeddings' cosines give both the joint ICL and
    the distribution every modality's IAL is pulled to, so one ``[2B, 2B]``
    product forward serves both (the target is detached).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    >>> icl, log_q = icl_with_target(a, b)
    >>> abs(float(icl) - float(contrastive_loss(a, b))) < 1e-6, torch.allclose(log_q, ial_target(a, b), atol=1e-6)
    (True, True)
    """
    x, y = _batch(h1, h2, "icl_with_target")
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return _ICLTarget.apply(x, y, float(tau), float(tau2))


class _ICLTarget(torch.autograd.Function):
    """:func:`icl_with_target` with a hand-written backward (that of :class:`_ICLIAL` without IAL)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, h1, h2, tau, tau2):
        h = torch.cat([h1, h2])
        cos = h @ h.t()
        log_q = cos / tau2
        log_q.diagonal().fill_(-_LARGE)
        log_q = torch.log_softmax(log_q, dim=1)
        lse, p = _logsumexp_others(cos.div_(tau))  # the cosines are not needed again
        icl = (lse - (h1 * h2).sum(dim=1).repeat(2) / tau).mean()
        ctx.tau = tau
        ctx.save_for_backward(h, p)
        ctx.mark_non_differentiable(log_q)
        return icl, log_q

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_icl, _g_log_q):
        h, p = ctx.saved_tensors
        c = g_icl / h.size(0)
        dh1, dh2 = _cosine_backward(h, p * (c / ctx.tau), c / ctx.tau)
        return dh1, dh2, None, None


class UncertaintyWeighting(nn.Module):
    """Learned loss weights (Kendall, Gal & Cipolla, CVPR 2018), as MCLEA/MEAformer use them.

    One learnable log-variance ``s_k`` per loss (initialised to 0)::

        total = sum_k exp(-s_k) * loss_k + s_k

    >>> import torch
    >>> w = UncertaintyWeighting(2)
    >>> w([torch.tensor(1.0), torch.tensor(3.0)]).item()
    4.0
    """

    def __init__(self, num_losses: int) -> None:
        super().__init__()
        if num_losses < 1:
            raise ValueError(f"UncertaintyWeighting: num_losses must be >= 1, got {num_losses}")
        self.log_vars = nn.Parameter(torch.zeros(num_losses))

    def forward(self, losses: Sequence[Tensor]) -> Tensor:
        if len(losses) != self.log_vars.numel():
            raise ValueError(f"UncertaintyWeighting: expected {self.log_vars.numel()} losses, got {len(losses)}")
        stacked = torch.stack([loss.float().reshape(()) for loss in losses])
        return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()


__all__ = ["NCALoss", "UncertaintyWeighting", "contrastive_loss", "ial_loss", "ial_target", "icl_ial_losses",
           "icl_loss", "icl_with_target", "nca_loss"]
