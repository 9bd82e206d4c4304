"""K-means on the device of the data (Lloyd iterations, k-means++ start).

Deterministic by seed (on CUDA the cluster sums are a one-hot GEMM, since
``index_add_``'s atomic adds there sum in no fixed order). Distances come from one ``[N, K]`` GEMM per iteration
(``|x|^2 - 2 x.c + |c|^2``), so 1M points x 2,816 dims x 5 clusters is a few
seconds on a 2-core CPU. scikit-learn's KMeans is the other backend
(``backend="sklearn"``); bench/ compares the two.

>>> import torch
>>> from psqe.seeds.kmeans import kmeans
>>> x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
>>> labels = kmeans(x, 2, seed=0)
>>> len(set(labels[:5].tolist())), len(set(labels[5:].tolist())), bool(labels[0] != labels[5])
(1, 1, True)
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _sq_distances(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(1)[None, :]).clamp_min_(0)


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int, gemm: bool | None = None) -> torch.Tensor:
    """``[k, d]`` sums of the rows of ``x`` per label: ``index_add_`` on CPU (deterministic there), a one-hot
    GEMM where ``gemm`` (default: on CUDA, whose atomic adds would make the sums order-dependent)."""
    if x.is_cuda if gemm is None else gemm:
        return torch.nn.functional.one_hot(labels, k).to(x.dtype).T @ x
    return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)


def _plus_plus(x: torch.Tensor, x_sq: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = x[first : first + 1]
    closest = _sq_distances(x, x_sq, centres).squeeze(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than clusters: repeat one
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial((closest / total).cpu(), 1, generator=gen))
        centres = torch.cat([centres, x[idx : idx + 1]])
        closest = torch.minimum(closest, _sq_distances(x, x_sq, x[idx : idx + 1]).squeeze(1))
    return centres


def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-6, backend: str = "torch") -> torch.Tensor:
    """Cluster labels (int64 ``[N]``) of the rows of ``x`` into ``k`` clusters."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans: x must be a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: k must be in [1, {x.shape[0]}] (the number of points), got {k}")
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, random_state=seed, n_init=1, max_iter=max_iter, tol=tol)
        return torch.as_tensor(model.fit_predict(x.detach().cpu().float().numpy()), dtype=torch.long, device=x.device)
    if backend != "torch":
        raise ValueError(f"kmeans: backend must be 'torch' or 'sklearn', got {backend!r}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    x_sq = (x * x).sum(1)
    centres = _plus_plus(x, x_sq, k, gen)
    labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    for it in range(max_iter):
        new = _sq_distances(x, x_sq, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = _cluster_sums(x, labels, k)
        moved = sums / counts.clamp_min(1)[:, None]
        moved[counts == 0] = centres[counts == 0]  # an emptied cluster keeps its centre
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        if shift <= tol:
            labels = _sq_distances(x, x_sq, centres).argmin(1)
            break
    log.debug("kmeans: %d points, k=%d, %d iterations", x.shape[0], k, it + 1)
    return labels
