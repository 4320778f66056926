"""Preference losses on per-sequence log-probs: AOT (paired and unpaired), the DPO/IPO baselines, KTO.

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

Unpaired AOT also takes n positives and m != n negatives: the two quantile functions are matched on
the merged grid of their breakpoints (:func:`aot_cli.sorting.merged_grid`). ``dominance="second"`` compares lower-tail
means (integrated quantile functions divided by the level) instead of quantiles (:func:`aot_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aot_cli.sorting import merged_grid, sort_values
from aot_cli.vocab import AOT_LOSSES, DOMINANCE, LOSSES, SORTS, SURROGATES


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
    dominance: str = "first",
) -> torch.Tensor:
    """AOT loss ``mean_i h(sort(u)_i - sort(v)_i)``; see the module docstring for u, v and h.

    In unpaired mode the chosen and rejected vectors may come from different samples (positives
    and negatives of a labelled data set) and may differ in length: with n positives and m
    negatives the loss is the 1-D optimal-transport cost between the two empirical measures,
    ``sum_k w_k h(a_{i_k} - b_{j_k})`` over the cells k of the merged grid of quantile levels
    ``{i/n} U {j/m}`` (cell length w_k, on which the quantile functions are the sorted values
    a_{i_k} and b_{j_k}; see :func:`aot_cli.sorting.merged_grid`). With equal counts every cell is one level
    1/n long and this is the mean above, computed as such.

    ``dominance="second"`` asks for second-order dominance: at every level t the mean of the lowest
    t-fraction of u must exceed that of v, ``(1/t) int_0^t Q_u >= (1/t) int_0^t Q_v``. The
    integrated quantile functions are piecewise linear with kinks on the grid only, so checking the
    grid's right ends t_k is exact, and the loss is ``sum_k w_k h(D(t_k) / t_k)`` with
    ``D(t) = int_0^t (Q_u - Q_v)``; with equal counts ``mean_i h(cumsum(a - b)_i / i)``. Dividing by
    t (rather than taking ``D(t_k)`` itself, the cumulative sum / n) keeps h's argument in the units
    of a first-order gap, so beta and the squared-hinge margin mean the same in both orders and the
    total gradient weight on u is 1 as in first order, where ``D(t_k)`` alone would scale the lowest
    levels, which second-order dominance is about, down by t.

    ``sort="soft"`` replaces both sorts by :func:`aot_cli.sorting.soft_sort` with ``soft_sort_eps`` (each side
    soft-sorted on its own, then coupled as above); ``soft_sort_eps`` is ignored by the hard sort.
    """
    _check_hparams(beta=beta, surrogate=surrogate, label_smoothing=label_smoothing)
    _check_sort(sort, soft_sort_eps)
    if dominance not in DOMINANCE:
        raise ValueError(f"dominance must be one of {', '.join(DOMINANCE)}; got {dominance!r}")
    _check_logps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, paired=paired)
    if paired:
        u = chosen_logps - rejected_logps
        v = ref_chosen_logps - ref_rejected_logps
    else:
        u = chosen_logps - ref_chosen_logps
        v = rejected_logps - ref_rejected_logps
    a, b = sort_values(u, sort, soft_sort_eps), sort_values(v, sort, soft_sort_eps)
    n, m = a.numel(), b.numel()
    if n == m:  # the coupling is the identity and every cell weighs 1/n
        z = a - b
        if dominance == "second":
            z = z.cumsum(0) / torch.arange(1, n + 1, device=z.device, dtype=z.dtype)
        return surrogate_loss(z, surrogate=surrogate, beta=beta, label_smoothing=label_smoothing).mean()
    i, j, lengths, ends = merged_grid(n, m)
    w, t = ((x.double() / (n * m)).to(a.device, a.dtype) for x in (lengths, ends))
    z = a[i.to(a.device)] - b[j.to(a.device)]
    if dominance == "second":
        z = (w * z).cumsum(0) / t
    return (w * surrogate_loss(z, surrogate=surrogate, beta=beta, label_smoothing=label_smoothing)).sum()


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
    dominance: str = "first",
    kl: tuple[torch.Tensor, torch.Tensor] | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """The one entry point of the training loop: ``name`` in :data:`LOSSES`.

    ``surrogate``, ``sort`` and ``dominance`` only mean something for the AOT losses, ``kl`` (the
    policy and reference log-probs of KTO's mismatched pairs) and the two weights only for KTO;
    asking another loss for anything but the defaults is an error rather than a silent no-op.
    For KTO, chosen/rejected are the desirable/undesirable samples.
    """
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {name!r}")
    if name != "kto":
        if kl is not None:
            raise ValueError(f"kl (the reference-point log-probs) applies to kto only, not loss {name!r}")
        for what, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
            if weight != 1.0:
                raise ValueError(f"{what} applies to kto only; got {what}={weight} with loss {name!r}")
    if name in AOT_LOSSES:
        return aot_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected,
            paired=name == "aot", beta=beta, surrogate=surrogate, label_smoothing=label_smoothing,
            sort=sort, soft_sort_eps=soft_sort_eps, dominance=dominance,
        )
    if surrogate != "logistic":
        raise ValueError(f"surrogate applies to the aot losses only; got surrogate={surrogate!r} with loss {name!r}")
    if sort != "hard":
        raise ValueError(f"sort applies to the aot losses only; got sort={sort!r} with loss {name!r}")
    if dominance != "first":
        raise ValueError(f"dominance applies to the aot losses only; got dominance={dominance!r} with loss {name!r}")
    if name == "dpo":
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                        beta=beta, label_smoothing=label_smoothing)
    if label_smoothing:
        raise ValueError(f"label_smoothing is not defined for {name}; got label_smoothing={label_smoothing}")
    if name == "ipo":
        return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    if kl is None:
        raise ValueError("kto needs kl: the policy and reference log-probs of the mismatched pairs")
    return kto_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *kl, beta=beta,
                    desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)


def kto_reference_point(policy_kl: torch.Tensor, ref_kl: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: the batch estimate of KL(policy || reference), as TRL makes it.

    The mean log-ratio ``policy - ref`` over *mismatched* (prompt, completion) pairs of the batch
    (completions the policy was not asked for, so the mean is a KL estimate rather than a reward),
    detached (KTO treats z0 as a constant baseline; no gradient flows through it) and clamped at 0
    (a KL is >= 0, its estimate on a few samples need not be).
    """
    for name, t in (("policy_kl", policy_kl), ("ref_kl", ref_kl)):
        if t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor; got shape {tuple(t.shape)}")
    if policy_kl.shape != ref_kl.shape:
        raise ValueError(f"policy_kl and ref_kl must have the same length; got {policy_kl.numel()} and "
                         f"{ref_kl.numel()}")
    return (policy_kl - ref_kl).mean().detach().clamp(min=0)


def kto_loss(
    policy_pos: torch.Tensor,
    policy_neg: torch.Tensor,
    ref_pos: torch.Tensor,
    ref_neg: torch.Tensor,
    policy_kl: torch.Tensor,
    ref_kl: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306) as TRL's ``KTOTrainer`` (loss_type "kto") computes it.

    With log-ratios ``r = policy - ref`` and z0 = :func:`kto_reference_point` of the KL pairs:

        desirable (positive):    w_d * (1 - sigmoid(beta * (r - z0)))
        undesirable (negative):  w_u * (1 - sigmoid(beta * (z0 - r)))

    and the loss is the plain mean of these n_pos + n_neg numbers, not a mean per side: a side's
    share of the loss grows with its count, which is what the weights are there to balance (the KTO
    paper suggests ``w_d n_pos / (w_u n_neg)`` in [1, 4/3]). One side may be empty (it then adds
    nothing, as in TRL); both empty is an error where TRL would return NaN. TRL reduces with
    ``nanmean``, skipping NaN losses; here a NaN propagates, since it means a broken log-prob.
    """
    _check_hparams(beta=beta, surrogate="logistic", label_smoothing=0.0)
    for name, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {weight!r}")
    named = {"policy_pos": policy_pos, "policy_neg": policy_neg, "ref_pos": ref_pos, "ref_neg": ref_neg}
    for name, t in named.items():
        if t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor; got shape {tuple(t.shape)}")
    if policy_pos.shape != ref_pos.shape or policy_neg.shape != ref_neg.shape:
        raise ValueError(
            "policy and reference log-probs must have the same length; got "
            f"policy_pos {policy_pos.numel()} vs ref_pos {ref_pos.numel()}, "
            f"policy_neg {policy_neg.numel()} vs ref_neg {ref_neg.numel()}"
        )
    if policy_pos.numel() + policy_neg.numel() == 0:
        raise ValueError("kto_loss needs at least one desirable or undesirable sample; got none")
    z0 = kto_reference_point(policy_kl, ref_kl)
    desirable = 1 - torch.sigmoid(beta * ((policy_pos - ref_pos) - z0))
    undesirable = 1 - torch.sigmoid(beta * (z0 - (policy_neg - ref_neg)))
    return torch.cat([desirable_weight * desirable, undesirable_weight * undesirable]).mean()


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

    Implicit rewards are ``beta * (policy - ref)`` log-ratios; ``rewards/margins`` is the mean chosen
    reward minus the mean rejected one (as the mean of pair differences when counts are equal).
    ``rewards/violation_fraction`` is the share of quantile levels t in (0, 1] where the chosen
    rewards' quantile is below the rejected ones' (measured on the merged grid of
    :func:`aot_cli.sorting.merged_grid`; with equal counts, the share of sorted positions where
    the sorted chosen reward is below the sorted rejected one): 0 means the chosen rewards dominate
    the rejected ones in the first order on this batch.

    ``rewards/accuracies`` is TRL's share of pairs (chosen_i, rejected_i) with the chosen reward
    strictly above the rejected one when the counts are equal; with unequal counts there are no
    pairs, and it is the share of all n*m (chosen, rejected) couples ordered so (the AUC, ties
    counting 0 like TRL's strict comparison; ``aot eval`` counts ties half).
    """
    chosen = beta * (policy_chosen - ref_chosen).detach().float()
    rejected = beta * (policy_rejected - ref_rejected).detach().float()
    a, b = torch.sort(chosen).values, torch.sort(rejected).values
    n, m = a.numel(), b.numel()
    if n == m:
        margin = (chosen - rejected).mean().item()
        accuracy = (chosen > rejected).float().mean().item()
        violation = (a < b).float().mean().item()
    else:  # no pairs: every (chosen, rejected) couple, and the merged quantile grid
        margin = (chosen.mean() - rejected.mean()).item()
        accuracy = torch.searchsorted(b, chosen, side="left").sum().item() / (n * m)
        i, j, lengths, _ = merged_grid(n, m)
        violation = lengths[a.cpu()[i] < b.cpu()[j]].sum().item() / (n * m)
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": margin,
        "rewards/accuracies": accuracy,
        "rewards/violation_fraction": violation,
        "logps/chosen": policy_chosen.detach().float().mean().item(),
        "logps/rejected": policy_rejected.detach().float().mean().item(),
    }


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
    if paired and chosen.shape != rejected.shape:
        raise ValueError(
            f"pairs must have the same count; got {chosen.numel()} chosen and {rejected.numel()} rejected "
            "(use unpaired AOT for unequal counts)"
        )
