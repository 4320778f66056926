"""aot_cli.losses, unequal counts and second-order dominance: hand-computed values, an independent
OT solver (POT's exact network simplex), an independent integrated-quantile computation, gradients."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import ot
import pytest
import torch

from aot_cli.losses import DOMINANCE, SORTS, SURROGATES, aot_loss, preference_loss, reward_metrics, surrogate_loss
from aot_cli.sorting import soft_sort

# Unpaired, u = chosen - ref_chosen = [2, 0] (n = 2), v = rejected - ref_rejected = [1, -1, 3] (m = 3).
# sorted a = [0, 2], b = [-1, 1, 3]; levels in units of 1/6: {0, 3, 6} U {0, 2, 4, 6} = {0, 2, 3, 4, 6}
# cells (0,2] a0-b0 = 1, (2,3] a0-b1 = -1, (3,4] a1-b1 = 1, (4,6] a1-b2 = -1; lengths [2, 1, 1, 2] / 6
U2, V3 = [2.0, 0.0], [1.0, -1.0, 3.0]
# second order: cumsum(lengths * gaps) = [2, 1, 2, 0] over the right ends [2, 3, 4, 6] = [1, 1/3, 1/2, 0]
# (t = 1/3: lowest third of u has mean 0, of v mean -1; t = 1: both means are 1)


def _unpaired(u, v, dtype=torch.float64):
    u, v = torch.as_tensor(u, dtype=dtype), torch.as_tensor(v, dtype=dtype)
    return u, v, torch.zeros_like(u), torch.zeros_like(v)


def _h(z: float, surrogate: str, beta: float, ls: float = 0.0) -> float:
    if surrogate == "logistic":
        return (1 - ls) * math.log1p(math.exp(-beta * z)) + ls * math.log1p(math.exp(beta * z))
    if surrogate == "squared_hinge":
        return max(0.0, beta - z) ** 2
    return (beta - z) ** 2


def test_unequal_counts_hand_numbers():
    args = _unpaired(U2, V3)
    # least squares, beta 0.5: (0.5 - [1, -1, 1, -1])^2 = [.25, 2.25, .25, 2.25] -> (2*.25 + 2.25 + .25 + 2*2.25)/6
    least_squares = aot_loss(*args, paired=False, beta=0.5, surrogate="least_squares").item()
    assert least_squares == pytest.approx(7.5 / 6, abs=1e-12)
    # squared hinge, beta 0.5: [0, 2.25, 0, 2.25] -> (2.25 + 2*2.25)/6
    squared_hinge = aot_loss(*args, paired=False, beta=0.5, surrogate="squared_hinge").item()
    assert squared_hinge == pytest.approx(6.75 / 6, abs=1e-12)
    # logistic, beta 1: (2 log(1+e^-1) + log(1+e) + log(1+e^-1) + 2 log(1+e)) / 6 = (log(1+e^-1) + log(1+e)) / 2
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2
    assert aot_loss(*args, paired=False, beta=1.0).item() == pytest.approx(expected, abs=1e-12)
    # the same with the sides swapped (n = 3, m = 2): gaps negate, cells stay
    swapped = _unpaired(V3, U2)
    # least squares, beta 0.5: (0.5 - [-1, 1, -1, 1])^2 = [2.25, .25, 2.25, .25] -> (4.5 + .25 + 2.25 + .5)/6
    assert aot_loss(*swapped, paired=False, beta=0.5, surrogate="least_squares").item() == pytest.approx(7.5 / 6)


def test_second_order_hand_numbers_unequal_counts():
    args = _unpaired(U2, V3)
    # z = [1, 1/3, 1/2, 0]; least squares beta 1: [0, 4/9, 1/4, 1] weighted [2, 1, 1, 2]/6 -> (4/9 + 1/4 + 2)/6 = 97/216
    got = aot_loss(*args, paired=False, beta=1.0, surrogate="least_squares", dominance="second")
    assert got.item() == pytest.approx(97 / 216, abs=1e-12)
    # squared hinge beta 0.5: relu(0.5 - z)^2 = [0, 1/36, 0, 1/4] -> (1/36 + 2/4)/6 = 19/216
    got = aot_loss(*args, paired=False, beta=0.5, surrogate="squared_hinge", dominance="second")
    assert got.item() == pytest.approx(19 / 216, abs=1e-12)


@pytest.mark.parametrize("paired", [True, False])
def test_second_order_hand_numbers_equal_counts(paired):
    # the data of test_losses.py: sorted gaps paired [0, .5, 2], unpaired [2, .5, 0]
    chosen, rejected, ref_chosen, ref_rejected = (torch.tensor(x, dtype=torch.float64) for x in
                                                  ([1.0, 0.0, 2.0], [0.0, 2.0, -1.0], [0.5, 1.0, 0.0], [0.0, 0.0, 2.0]))
    got = aot_loss(chosen, rejected, ref_chosen, ref_rejected, paired=paired, beta=1.0,
                   surrogate="squared_hinge" if paired else "least_squares", dominance="second")
    if paired:
        # cumsum [0, .5, 2.5] / [1, 2, 3] = [0, 1/4, 5/6]; relu(1 - z)^2 = [1, 9/16, 1/36] -> (144 + 81 + 4)/144/3
        assert got.item() == pytest.approx(229 / 432, abs=1e-12)
    else:
        # cumsum [2, 2.5, 2.5] / [1, 2, 3] = [2, 5/4, 5/6]; (1 - z)^2 = [1, 1/16, 1/36] -> (144 + 9 + 4)/144/3
        assert got.item() == pytest.approx(157 / 432, abs=1e-12)


def _reference(u, v, surrogate, beta, dominance, ls=0.0) -> float:
    """Independent of aot_loss: the quantile functions evaluated on exact fractions of levels.

    Q(t) = sorted[ceil(t n) - 1] on each cell (t0, t1] of {i/n} U {j/m}; the integrated quantile
    functions accumulate (t1 - t0) Q; the second order divides their difference by t1."""
    a, b = sorted(u), sorted(v)
    n, m = len(a), len(b)
    levels = sorted({Fraction(i, n) for i in range(n + 1)} | {Fraction(j, m) for j in range(m + 1)})
    total, gap_integral = 0.0, 0.0
    for t0, t1 in zip(levels, levels[1:]):
        gap = a[math.ceil(t1 * n) - 1] - b[math.ceil(t1 * m) - 1]
        gap_integral += float(t1 - t0) * gap
        z = gap if dominance == "first" else gap_integral / float(t1)
        total += float(t1 - t0) * _h(z, surrogate, beta, ls)
    return total


@pytest.mark.parametrize("dominance", DOMINANCE)
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_unequal_counts_match_exact_quantile_functions(surrogate, dominance):
    gen = torch.Generator().manual_seed(10)
    for n, m in ((2, 3), (5, 7), (8, 3), (1, 4), (6, 6), (12, 8)):
        u, v = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(m, generator=gen, dtype=torch.float64)
        got = aot_loss(*_unpaired(u, v), paired=False, beta=0.7, surrogate=surrogate, dominance=dominance)
        assert got.item() == pytest.approx(_reference(u.tolist(), v.tolist(), surrogate, 0.7, dominance), abs=1e-12)


@pytest.mark.parametrize(("surrogate", "ls"), [("logistic", 0.0), ("logistic", 0.2), ("squared_hinge", 0.0),
                                                ("least_squares", 0.0)])
def test_unequal_counts_equal_the_exact_ot_cost(surrogate, ls):
    """POT's network simplex on the full n x m cost matrix h(u_i - v_j), uniform weights 1/n and 1/m."""
    gen = torch.Generator().manual_seed(11)
    for n, m in ((3, 5), (7, 4), (1, 6), (9, 9), (16, 11), (10, 25)):
        u = 3 * torch.randn(n, generator=gen, dtype=torch.float64)
        v = 3 * torch.randn(m, generator=gen, dtype=torch.float64)
        cost = surrogate_loss(u[:, None] - v[None, :], surrogate=surrogate, beta=0.5, label_smoothing=ls).numpy()
        plan = ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), cost)
        got = aot_loss(*_unpaired(u, v), paired=False, beta=0.5, surrogate=surrogate, label_smoothing=ls)
        assert got.item() == pytest.approx(float((plan * cost).sum()), abs=1e-6)


def test_unequal_counts_depend_only_on_the_two_empirical_measures():
    # repeating every sample k times leaves the measure, hence the first-order loss, unchanged: 3 x 3 (the
    # equal-count fast path) = 6 x 3 = 6 x 9 = 3 x 9 (the merged grid)
    gen = torch.Generator().manual_seed(12)
    u, v = torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    for surrogate in SURROGATES:
        base = aot_loss(*_unpaired(u, v), paired=False, beta=0.9, surrogate=surrogate).item()
        for ku, kv in ((2, 1), (2, 3), (1, 3)):
            got = aot_loss(*_unpaired(u.repeat(ku), v.repeat(kv)), paired=False, beta=0.9, surrogate=surrogate)
            assert got.item() == pytest.approx(base, abs=1e-12)


def test_unequal_counts_invariant_to_permuting_each_side():
    gen = torch.Generator().manual_seed(13)
    chosen, ref_chosen = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    rejected, ref_rejected = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    p, q = torch.randperm(7, generator=gen), torch.randperm(4, generator=gen)
    for dominance in DOMINANCE:
        base = aot_loss(chosen, rejected, ref_chosen, ref_rejected, paired=False, beta=0.4, dominance=dominance)
        shuffled = aot_loss(chosen[p], rejected[q], ref_chosen[p], ref_rejected[q], paired=False, beta=0.4,
                            dominance=dominance)
        assert shuffled.item() == pytest.approx(base.item(), abs=1e-12)


@pytest.mark.parametrize("paired", [True, False])
def test_second_order_equals_first_order_where_they_must(paired):
    gen = torch.Generator().manual_seed(14)
    # one sample: the lowest-tail mean is the sample itself
    one = [torch.randn(1, generator=gen, dtype=torch.float64) for _ in range(4)]
    for surrogate in SURROGATES:
        first = aot_loss(*one, paired=paired, beta=0.6, surrogate=surrogate)
        assert aot_loss(*one, paired=paired, beta=0.6, surrogate=surrogate, dominance="second").item() == pytest.approx(
            first.item(), abs=1e-12)
    # sorted gaps all equal to c: every tail-mean gap is c too (v = u - c, same order)
    u = torch.randn(5, generator=gen, dtype=torch.float64)
    zeros = torch.zeros(5, dtype=torch.float64)
    args = (u, zeros, u - 0.3, zeros) if paired else (u, u - 0.3, zeros, zeros)
    first = aot_loss(*args, paired=paired, beta=0.6)
    assert aot_loss(*args, paired=paired, beta=0.6, dominance="second").item() == pytest.approx(first.item(), abs=1e-12)


def test_second_order_is_weaker_than_first_order():
    # u = [.5, 3] (n = 2) vs v = [0, 1, 1] (m = 3); cells in units of 1/6: (0,2] .5 vs 0, (2,3] .5 vs 1 (a
    # first-order violation), (3,4] 3 vs 1, (4,6] 3 vs 1. Second order: cumsum(lengths * gaps) = [1, .5, 2.5, 6.5],
    # all > 0 (at t = 1/2 the lower-half means are .5 and 1/3): no violation.
    args = _unpaired([0.5, 3.0], [0.0, 1.0, 1.0])
    hinge = {"paired": False, "beta": 1e-9, "surrogate": "squared_hinge"}  # ~ relu(-z)^2: zero iff no violation
    # first order: the cell (2,3] gives relu(1e-9 + .5)^2 / 6 ~ 1/24
    assert aot_loss(*args, **hinge).item() == pytest.approx(1 / 24, rel=1e-6)
    assert aot_loss(*args, **hinge, dominance="second").item() == 0.0


@pytest.mark.parametrize("dominance", DOMINANCE)
def test_soft_sort_unequal_counts_couples_the_soft_sorted_sides(dominance):
    gen = torch.Generator().manual_seed(15)
    u, v = torch.randn(7, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    got = aot_loss(*_unpaired(u, v), paired=False, beta=0.5, sort="soft", soft_sort_eps=2.0, dominance=dominance)
    expected = _reference(soft_sort(u, 2.0).tolist(), soft_sort(v, 2.0).tolist(), "logistic", 0.5, dominance)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    hard = aot_loss(*_unpaired(u, v), paired=False, beta=0.5, dominance=dominance)
    tiny = aot_loss(*_unpaired(u, v), paired=False, beta=0.5, sort="soft", soft_sort_eps=1e-6, dominance=dominance)
    assert tiny.item() == hard.item() and got.item() != pytest.approx(hard.item())


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("dominance", DOMINANCE)
def test_gradcheck_unequal_counts(surrogate, sort, dominance):
    gen = torch.Generator().manual_seed(16)
    chosen, ref_chosen = (torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    rejected, ref_rejected = (torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))

    def f(*xs):
        return aot_loss(*xs, paired=False, beta=0.8, surrogate=surrogate, sort=sort, soft_sort_eps=3.0,
                        dominance=dominance)

    assert torch.autograd.gradcheck(f, (chosen, rejected, ref_chosen, ref_rejected))


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("sort", SORTS)
def test_gradcheck_second_order_equal_counts(surrogate, paired, sort):
    gen = torch.Generator().manual_seed(17)
    logps = [torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(4)]

    def f(*xs):
        return aot_loss(*xs, paired=paired, beta=0.8, surrogate=surrogate, sort=sort, soft_sort_eps=3.0,
                        dominance="second")

    assert torch.autograd.gradcheck(f, logps)


def test_second_order_gradient_weights_by_hand():
    # u ~ v ~ 0, least squares beta 1: loss = mean_i (1 - z_i)^2 with z_i = cumsum(a - b)_i / i ~ 0, so
    # dloss/dz_i = -2/3 and dloss/da_k = sum_{i >= k} (-2/3) / i: k=1 -2/3 (1 + 1/2 + 1/3) = -11/9,
    # k=2 -2/3 (1/2 + 1/3) = -5/9, k=3 -2/3 (1/3) = -2/9; they sum to -2 = h'(0), as in first order
    u = torch.tensor([0.0, 1e-9, 2e-9], dtype=torch.float64, requires_grad=True)  # distinct: the sort order is fixed
    zeros = torch.zeros(3, dtype=torch.float64)
    aot_loss(u, zeros, zeros, zeros, paired=False, beta=1.0, surrogate="least_squares", dominance="second").backward()
    assert u.grad.tolist() == pytest.approx([-11 / 9, -5 / 9, -2 / 9], abs=1e-6)


def test_paired_still_needs_equal_counts_and_dominance_is_checked():
    chosen, ref_chosen = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    rejected, ref_rejected = torch.tensor([1.0, 2.0]), torch.zeros(2)
    with pytest.raises(ValueError, match="pairs must have the same count; got 3 chosen and 2 rejected"):
        aot_loss(chosen, rejected, ref_chosen, ref_rejected, paired=True)
    with pytest.raises(ValueError, match="same length"):
        aot_loss(chosen, rejected, ref_chosen[:2], ref_rejected, paired=False)
    with pytest.raises(ValueError, match="dominance must be one of first, second; got 'third'"):
        aot_loss(chosen, rejected, ref_chosen, ref_rejected, paired=False, dominance="third")
    with pytest.raises(ValueError, match="dominance applies to the aot losses only"):
        preference_loss("dpo", chosen[:2], rejected, ref_chosen[:2], ref_rejected, beta=0.1, dominance="second")
    got = preference_loss("aot_unpaired", chosen, rejected, ref_chosen, ref_rejected, beta=0.1, dominance="second")
    assert got.item() == aot_loss(chosen, rejected, ref_chosen, ref_rejected, paired=False, beta=0.1,
                                  dominance="second").item()


def test_reward_metrics_unequal_counts_hand_numbers():
    # beta 0.5: chosen rewards [0, 2] (n = 2), rejected rewards [-1, 1, 2] (m = 3)
    m = reward_metrics(torch.tensor([0.0, 4.0]), torch.tensor([-2.0, 2.0, 4.0]), torch.zeros(2), torch.zeros(3),
                       beta=0.5)
    assert m["rewards/chosen"] == pytest.approx(1.0) and m["rewards/rejected"] == pytest.approx(2 / 3)
    assert m["rewards/margins"] == pytest.approx(1 / 3)  # mean chosen - mean rejected
    # couples ordered strictly: 0 > -1; 2 > -1, 2 > 1 (2 = 2 does not count) -> 3 of 6
    assert m["rewards/accuracies"] == pytest.approx(0.5)
    # cells (units 1/6): (0,2] 0 vs -1, (2,3] 0 vs 1 violated, (3,4] 2 vs 1, (4,6] 2 vs 2 -> 1/6
    assert m["rewards/violation_fraction"] == pytest.approx(1 / 6)
    assert m["logps/chosen"] == pytest.approx(2.0) and m["logps/rejected"] == pytest.approx(4 / 3)
    assert all(isinstance(v, float) for v in m.values())
