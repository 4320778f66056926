"""Preference losses on per-sequence log-probs: AOT (paired and unpaired) and the DPO/IPO baselines.

Every function takes 1-D tensors of per-sequence *summed* completion log-probs (policy and
reference, chosen/positive and rejected/negative) and returns a differentiable scalar. Pure tensor
math: no I/O, no globals, so the training loop can call it on the global batch (the sort set).

AOT (Melnyk et al., 2024, arXiv 2406.05882) asks that the distribution of a "positive" quantity
dominate a "negative" one in the first order. For empirical measures with n samples each, the
relaxed dominance violation is an optimal-transport cost with a convex cost ``h``, and in one
dimension the optimal plan matches quantiles, i.e. sorted values:

    loss = 1/n * sum_i h( sort(u)_i - sort(v)_i )           (both sorted ascending)

- paired (TRL ``loss_type="aot"``):       u = policy_chosen - policy_rejected   (policy margins)
                                           v = ref_chosen - ref_rejected         (reference margins)
- unpaired (TRL ``"aot_unpaired"``):       u = policy_chosen - ref_chosen        (positives' log-ratios)
                                           v = policy_rejected - ref_rejected    (negatives' log-ratios)

Surrogates ``h(z)`` (``beta`` > 0; ``ls`` = label smoothing, logistic only):

- ``logistic``:       -(1 - ls) * log sigmoid(beta z) - ls * log sigmoid(-beta z)   (TRL's formula)
- ``squared_hinge``:  max(0, beta - z)^2       (beta is the margin)
- ``least_squares``:  (beta - z)^2

With ``n == 1`` the sort is the identity and the logistic AOT loss equals DPO for either mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("aot", "aot_unpaired", "dpo", "ipo")
SURROGATES = ("logistic", "squared_hinge", "least_squares")
SORTS = ("hard", "soft")


def aot_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    paired: bool = True,
    beta: float = 0.01,
    surrogate: str = "logistic",
    label_smoothing: float = 0.0,
    sort: str = "hard",
    soft_sort_eps: float | None = None,
) -> torch.Tensor:
    """AOT loss ``mean_i h(sort(u)_i - sort(v)_i)``; see the module docstring for u, v and h.

    In unpaired mode the chosen and rejected vectors may come from different samples (positives
    and negatives of a labelled data set) but must have the same length, since quantiles are
    matched one to one. ``sort="soft"`` replaces both sorts by :func:`soft_sort` with
    ``soft_sort_eps``; ``soft_sort_eps`` is ignored by the hard sort.
    """
    _check_hparams(beta=beta, surrogate=surrogate, label_smoothing=label_smoothing)
    _check_sort(sort, soft_sort_eps)
    _check_logps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, paired=paired)
    if paired:
        u = chosen_logps - rejected_logps
        v = ref_chosen_logps - ref_rejected_logps
    else:
        u = chosen_logps - ref_chosen_logps
        v = rejected_logps - ref_rejected_logps
    z = _sorted(u, sort, soft_sort_eps) - _sorted(v, sort, soft_sort_eps)
    return surrogate_loss(z, surrogate=surrogate, beta=beta, label_smoothing=label_smoothing).mean()


def surrogate_loss(
    z: torch.Tensor, *, surrogate: str, beta: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Elementwise surrogate ``h(z)`` of the 0/1 violation indicator ``z < 0`` (formulas above)."""
    _check_hparams(beta=beta, surrogate=surrogate, label_smoothing=label_smoothing)
    if surrogate == "logistic":
        return -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    if surrogate == "squared_hinge":
        return torch.relu(beta - z).square()
    return (beta - z).square()


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO (TRL ``loss_type="sigmoid"``, conservative DPO when ``label_smoothing`` > 0):
    ``mean_i [-(1-ls) log sigmoid(beta x_i) - ls log sigmoid(-beta x_i)]`` with
    ``x = (chosen - rejected) - (ref_chosen - ref_rejected)``."""
    _check_hparams(beta=beta, surrogate="logistic", label_smoothing=label_smoothing)
    _check_logps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, paired=True)
    x = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    return surrogate_loss(x, surrogate="logistic", beta=beta, label_smoothing=label_smoothing).mean()


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """IPO (Azar et al. 2023; TRL ``loss_type="ipo"``): ``mean_i (x_i - 1/(2 beta))^2`` with the
    DPO ``x``. TRL feeds IPO log-probs *averaged* over completion tokens; this function uses
    whatever per-sequence log-probs it is given (summed ones in ``aot train``), so pass
    length-averaged log-probs to reproduce TRL exactly."""
    _check_hparams(beta=beta, surrogate="logistic", label_smoothing=0.0)
    _check_logps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, paired=True)
    x = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    return (x - 1 / (2 * beta)).square().mean()


def preference_loss(
    name: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    surrogate: str = "logistic",
    label_smoothing: float = 0.0,
    sort: str = "hard",
    soft_sort_eps: float | None = None,
) -> torch.Tensor:
    """The one entry point of the training loop: ``name`` in :data:`LOSSES`.

    ``surrogate`` and ``sort`` only mean something for the AOT losses; asking DPO or IPO for
    anything but the defaults is an error rather than a silent no-op.
    """
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {name!r}")
    if name in ("aot", "aot_unpaired"):
        return aot_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected,
            paired=name == "aot", beta=beta, surrogate=surrogate, label_smoothing=label_smoothing,
            sort=sort, soft_sort_eps=soft_sort_eps,
        )
    if surrogate != "logistic":
        raise ValueError(f"surrogate applies to the aot losses only; got surrogate={surrogate!r} with loss {name!r}")
    if sort != "hard":
        raise ValueError(f"sort applies to the aot losses only; got sort={sort!r} with loss {name!r}")
    if name == "dpo":
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                        beta=beta, label_smoothing=label_smoothing)
    if label_smoothing:
        raise ValueError(f"label_smoothing is not defined for ipo; got label_smoothing={label_smoothing}")
    return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)


@torch.no_grad()
def reward_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> dict[str, float]:
    """Per-step numbers, with TRL's names where TRL has them.

    Implicit rewards are ``beta * (policy - ref)`` log-ratios. ``rewards/violation_fraction`` is
    the share of quantile positions where the sorted chosen reward is below the sorted rejected
    one: 0 means the chosen rewards dominate the rejected ones in the first order on this batch.
    """
    chosen = beta * (policy_chosen - ref_chosen).detach().float()
    rejected = beta * (policy_rejected - ref_rejected).detach().float()
    violations = torch.sort(chosen).values < torch.sort(rejected).values
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/violation_fraction": violations.float().mean().item(),
        "logps/chosen": policy_chosen.detach().float().mean().item(),
        "logps/rejected": policy_rejected.detach().float().mean().item(),
    }


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
    seg = torch.tensor(_pav_blocks((z + a.detach().double().cpu()).tolist()))
    counts = torch.bincount(seg)
    ramp = (torch.zeros(len(counts), dtype=torch.float64).index_add(0, seg, z) / counts)[seg] - z
    seg, counts, ramp = seg.to(x.device), counts.to(x.device, a.dtype), ramp.to(x.device, a.dtype)
    mean_a = torch.zeros_like(counts).index_add(0, seg, a) / counts
    return mean_a[seg] + ramp


def _pav_blocks(y: list[float]) -> list[int]:
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


def _sorted(x: torch.Tensor, sort: str, eps: float | None) -> torch.Tensor:
    if sort == "hard":
        return torch.sort(x).values
    return soft_sort(x, eps)


def _check_hparams(*, beta: float, surrogate: str, label_smoothing: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0; got {beta!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}; got {surrogate!r}")
    if not 0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5]; got {label_smoothing!r}")
    if label_smoothing and surrogate != "logistic":
        raise ValueError(
            f"label_smoothing applies to surrogate 'logistic' only; got surrogate={surrogate!r} "
            f"with label_smoothing={label_smoothing}"
        )


def _check_sort(sort: str, soft_sort_eps: float | None) -> None:
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
    if sort == "soft" and (soft_sort_eps is None or not soft_sort_eps > 0):
        raise ValueError(f"sort='soft' needs soft_sort_eps > 0; got soft_sort_eps={soft_sort_eps!r}")


def _check_logps(chosen, rejected, ref_chosen, ref_rejected, *, paired: bool) -> None:
    named = {"chosen_logps": chosen, "rejected_logps": rejected,
             "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    for name, t in named.items():
        if t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor; got shape {tuple(t.shape)}")
    if chosen.shape != ref_chosen.shape or rejected.shape != ref_rejected.shape:
        raise ValueError(
            "policy and reference log-probs must have the same length; got "
            f"chosen {chosen.numel()} vs ref_chosen {ref_chosen.numel()}, "
            f"rejected {rejected.numel()} vs ref_rejected {ref_rejected.numel()}"
        )
    if chosen.shape != rejected.shape:
        what = "pairs" if paired else "unpaired AOT matches quantiles one to one, so positives and negatives"
        raise ValueError(
            f"{what} must have the same count; got {chosen.numel()} chosen and {rejected.numel()} rejected"
        )
