"""Sorting for the one-dimensional optimal-transport losses: hard and soft sorts, and the optimal
coupling of two sorted samples of different sizes on their merged quantile grid.

Pure tensor math shared by :mod:`aot_cli.losses` (the objectives) and the metrics; no I/O.
"""

from __future__ import annotations

import torch


def soft_sort(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Differentiable ascending sort of a 1-D tensor: the L2-regularized soft sort of Blondel et al.
    (2020, "Fast Differentiable Sorting and Ranking"), computed exactly by pool-adjacent-violators.

    Why this one: it is the Euclidean projection of a scaled ranking vector onto the permutahedron
    of ``x`` (the convex hull of its permutations), so (1) the output is sorted, keeps the mean of
    ``x`` and is a contraction of ``sort(x)``: runs of sorted values whose gaps exceed ``1/eps``
    are pulled together into evenly spaced ramps (spacing ``1/eps``) around their mean; (2) it is
    *exactly* the hard sort as soon as ``eps * (largest gap between neighbouring sorted values)
    <= 1``, so the limit ``eps -> 0`` is reached, not only approached, and ``eps -> inf`` gives
    ``mean(x)`` everywhere; (3) it costs O(n log n) and is numerically plain (block means, no
    exponentials, no temperature-scaled softmax over n^2 entries). ``eps`` is in units of 1/x.

    Formula: with ``a = sort(x)`` and ``z_i = (n - i)/eps`` (i = 0..n-1), fit the non-increasing
    isotonic regression to ``y = z + a``; on its blocks B the output is ``mean_B(a) + mean_B(z) - z``.
    The block structure is piecewise constant in ``x``, so it is found on detached values and the
    gradient flows through the block means of ``a`` (the exact Jacobian of the projection).
    """
    if x.dim() != 1:
        raise ValueError(f"soft_sort expects a 1-D tensor; got shape {tuple(x.shape)}")
    if not eps > 0:
        raise ValueError(f"soft_sort_eps must be > 0; got {eps}")
    n = x.numel()
    a = torch.sort(x).values
    # Block structure and the ramp mean_B(z) - z do not depend on gradients: plain float64 on the
    # CPU (z reaches n/eps, which float32 could not resolve), one transfer back.
    z = torch.arange(n - 1, -1, -1, dtype=torch.float64) / eps
    seg = torch.tensor(pav_blocks((z + a.detach().double().cpu()).tolist()))
    counts = torch.bincount(seg)
    ramp = (torch.zeros(len(counts), dtype=torch.float64).index_add(0, seg, z) / counts)[seg] - z
    seg, counts, ramp = seg.to(x.device), counts.to(x.device, a.dtype), ramp.to(x.device, a.dtype)
    mean_a = torch.zeros_like(counts).index_add(0, seg, a) / counts
    return mean_a[seg] + ramp


def pav_blocks(y: list[float]) -> list[int]:
    """Block index of each element in the non-increasing isotonic regression of ``y`` (L2).

    Pool adjacent violators: a new block is merged into the previous one while the previous block's
    mean is strictly smaller (ties stay separate, so the hard-sort limit keeps its gradient).
    """
    sums: list[float] = []
    sizes: list[int] = []
    for value in y:
        sums.append(value)
        sizes.append(1)
        while len(sums) > 1 and sums[-2] * sizes[-1] < sums[-1] * sizes[-2]:
            last_sum, last_size = sums.pop(), sizes.pop()
            sums[-1] += last_sum
            sizes[-1] += last_size
    return [block for block, size in enumerate(sizes) for _ in range(size)]


def merged_grid(n: int, m: int) -> tuple[torch.Tensor, ...]:
    """The optimal coupling of n and m sorted values, as cells of the merged quantile grid.

    The quantile function of n sorted values a_0 <= ... <= a_{n-1} is the step function equal to
    a_i on (i/n, (i+1)/n]; that of m sorted values b is b_j on (j/m, (j+1)/m]. Both are constant on
    every cell between consecutive points of {i/n} U {j/m}, so matching the quantile functions
    (the optimal plan, below) sends the mass of each cell from its a_i to its b_j. In units of
    1/(n m) the points are the integers i*m and j*n, so the grid is exact (no float comparisons):
    cell k = (s_k, s_{k+1}] has i_k = s_k // m, j_k = s_k // n. At most n + m - 1 cells.

    Why matching quantiles is optimal for ``cost(x, y) = h(x - y)`` with h convex: the cost is
    submodular, i.e. for x1 <= x2 and y1 <= y2, ``c(x1, y1) + c(x2, y2) <= c(x1, y2) + c(x2, y1)``
    (the arguments x1 - y1 and x2 - y2 lie between x1 - y2 and x2 - y1 and have the same sum, and a
    convex h is larger at the two outer points than at two inner points with the same sum). So any
    plan that sends mass from a smaller x to a larger y while a larger x goes to a smaller y can be
    uncrossed without raising its cost, and the one plan with no crossing is the monotone one, the
    north-west corner rule on sorted values, which is this grid.

    Returns ``(i, j, lengths, ends)``, int64 tensors over the cells: the index of each side's value
    on the cell, the cell's length and its right end, both in units of 1/(n m). They depend on n and
    m only, so they are built on the CPU (no device sync for the data-dependent ``unique``); the
    caller moves them, and divides by n m in float64 (exact ratios, which float32 could not keep).
    """
    points = torch.unique(torch.cat([torch.arange(n + 1) * m, torch.arange(m + 1) * n]))
    starts = points[:-1]
    return starts // m, starts // n, points.diff(), points[1:]


def sort_values(x: torch.Tensor, sort: str, eps: float | None) -> torch.Tensor:
    """Ascending sort, hard or :func:`soft_sort` with regularization `eps`."""
    if sort == "hard":
        return torch.sort(x).values
    return soft_sort(x, eps)
