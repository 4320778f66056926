"""aot_cli.losses: hand-computed values, TRL's formulas (and TRL's own KTO), invariances, limits, gradients."""

from __future__ import annotations

import math
from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from trl.trainer.kto_trainer import KTOTrainer

from aot_cli.losses import (
    LOSSES,
    aot_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    preference_loss,
    reward_metrics,
)
from aot_cli.sorting import soft_sort

# chosen - rejected = u = [1, -2, 3] -> sorted [-2, 1, 3]; ref: v = [0.5, 1, -2] -> sorted [-2, 0.5, 1]
# chosen - ref_chosen = [0.5, -1, 2] -> sorted [-1, 0.5, 2]; rejected - ref_rejected = [0, 2, -3] -> [-3, 0, 2]
CHOSEN = [1.0, 0.0, 2.0]
REJECTED = [0.0, 2.0, -1.0]
REF_CHOSEN = [0.5, 1.0, 0.0]
REF_REJECTED = [0.0, 0.0, 2.0]
PAIRED_Z = [0.0, 0.5, 2.0]
UNPAIRED_Z = [2.0, 0.5, 0.0]


def _t(*lists, dtype=torch.float64):
    return [torch.tensor(x, dtype=dtype) for x in lists]


def _log1pexp(x: float) -> float:
    return math.log(1 + math.exp(x))


def _hand(z: list[float], surrogate: str, beta: float, ls: float = 0.0) -> float:
    if surrogate == "logistic":
        per = [(1 - ls) * _log1pexp(-beta * t) + ls * _log1pexp(beta * t) for t in z]
    elif surrogate == "squared_hinge":
        per = [max(0.0, beta - t) ** 2 for t in z]
    else:
        per = [(beta - t) ** 2 for t in z]
    return sum(per) / len(per)


def _trl_aot(chosen, rejected, ref_chosen, ref_rejected, beta, ls, unpaired):
    """TRL's DPOTrainer loss_type "aot" / "aot_unpaired", re-derived from its published formula."""
    if unpaired:
        a = torch.sort(chosen - ref_chosen).values
        b = torch.sort(rejected - ref_rejected).values
    else:
        a = torch.sort(chosen - rejected).values
        b = torch.sort(ref_chosen - ref_rejected).values
    delta = a - b
    return (-F.logsigmoid(beta * delta) * (1 - ls) - F.logsigmoid(-beta * delta) * ls).mean()


@pytest.mark.parametrize("surrogate", ["logistic", "squared_hinge", "least_squares"])
@pytest.mark.parametrize("paired", [True, False])
def test_aot_matches_hand_computed_values(surrogate, paired):
    z = PAIRED_Z if paired else UNPAIRED_Z
    for beta in (0.5, 1.0):
        got = aot_loss(*_t(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED), paired=paired, beta=beta, surrogate=surrogate)
        assert got.item() == pytest.approx(_hand(z, surrogate, beta), abs=1e-12)


def test_hand_numbers_spelled_out():
    # paired, beta 1: squared hinge relu(1 - [0, .5, 2])^2 = [1, .25, 0]; least squares [1, .25, 1]
    args = _t(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)
    assert aot_loss(*args, beta=1.0, surrogate="squared_hinge").item() == pytest.approx(1.25 / 3)
    assert aot_loss(*args, beta=1.0, surrogate="least_squares").item() == pytest.approx(2.25 / 3)
    logistic = (math.log(2) + _log1pexp(-0.25) + _log1pexp(-1.0)) / 3
    assert aot_loss(*args, beta=0.5).item() == pytest.approx(logistic)


@pytest.mark.parametrize("paired", [True, False])
def test_label_smoothing_matches_hand_numbers(paired):
    z = PAIRED_Z if paired else UNPAIRED_Z
    got = aot_loss(*_t(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED), paired=paired, beta=0.5, label_smoothing=0.1)
    expected = sum(0.9 * _log1pexp(-0.5 * t) + 0.1 * _log1pexp(0.5 * t) for t in z) / 3
    assert got.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_aot_equals_trl_formula_on_random_tensors(paired, ls):
    gen = torch.Generator().manual_seed(0)
    logps = [-50 * torch.rand(64, generator=gen, dtype=torch.float64) for _ in range(4)]
    got = aot_loss(*logps, paired=paired, beta=0.1, label_smoothing=ls)
    expected = _trl_aot(*logps, beta=0.1, ls=ls, unpaired=not paired)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("surrogate", ["logistic", "squared_hinge", "least_squares"])
def test_paired_invariant_to_permuting_the_batch(surrogate):
    gen = torch.Generator().manual_seed(1)
    logps = [torch.randn(16, generator=gen, dtype=torch.float64) for _ in range(4)]
    perm = torch.randperm(16, generator=gen)
    base = aot_loss(*logps, beta=0.3, surrogate=surrogate)
    assert aot_loss(*[x[perm] for x in logps], beta=0.3, surrogate=surrogate).item() == pytest.approx(base.item())


def test_unpaired_invariant_to_permuting_positives_and_negatives_independently():
    gen = torch.Generator().manual_seed(2)
    chosen, rejected, ref_chosen, ref_rejected = [torch.randn(16, generator=gen, dtype=torch.float64) for _ in range(4)]
    p, q = torch.randperm(16, generator=gen), torch.randperm(16, generator=gen)
    base = aot_loss(chosen, rejected, ref_chosen, ref_rejected, paired=False, beta=0.3)
    shuffled = aot_loss(chosen[p], rejected[q], ref_chosen[p], ref_rejected[q], paired=False, beta=0.3)
    assert shuffled.item() == pytest.approx(base.item())
    # ... which paired AOT is not (it pairs chosen i with rejected i)
    paired = aot_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)
    paired_shuffled = aot_loss(chosen[p], rejected[q], ref_chosen[p], ref_rejected[q], beta=0.3)
    assert paired_shuffled.item() != pytest.approx(paired.item())


@pytest.mark.parametrize("paired", [True, False])
def test_one_sample_equals_dpo(paired):
    args = _t([-3.0], [-5.5], [-4.0], [-4.2])
    for ls in (0.0, 0.3):
        got = aot_loss(*args, paired=paired, beta=0.7, label_smoothing=ls)
        assert got.item() == pytest.approx(dpo_loss(*args, beta=0.7, label_smoothing=ls).item(), abs=1e-12)


def test_aot_differs_from_dpo_when_orders_differ_and_agrees_when_they_agree():
    zeros = torch.zeros(2, dtype=torch.float64)
    # policy margins u = [1, 2], reference margins v = [2, 1]: DPO pairs 1-2 and 2-1, AOT pairs quantiles
    u, v = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
    aot = aot_loss(u, zeros, v, zeros, beta=1.0)
    dpo = dpo_loss(u, zeros, v, zeros, beta=1.0)
    assert aot.item() == pytest.approx(math.log(2))  # sorted differences are [0, 0]
    assert dpo.item() == pytest.approx((_log1pexp(1.0) + _log1pexp(-1.0)) / 2)
    assert aot.item() != pytest.approx(dpo.item())
    # same order under policy and reference: quantile pairing is the given pairing
    u, v = torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert aot_loss(u, zeros, v, zeros, beta=1.0).item() == pytest.approx(dpo_loss(u, zeros, v, zeros, beta=1.0).item())


def test_dpo_and_ipo_hand_numbers():
    # x = (chosen - rejected) - (ref_chosen - ref_rejected) = [1, -1]
    args = _t([0.0, 0.0], [-1.0, 1.0], [0.0, 0.0], [0.0, 0.0])
    assert dpo_loss(*args, beta=0.5).item() == pytest.approx((_log1pexp(-0.5) + _log1pexp(0.5)) / 2)
    smoothed = (0.8 * _log1pexp(-0.5) + 0.2 * _log1pexp(0.5) + 0.8 * _log1pexp(0.5) + 0.2 * _log1pexp(-0.5)) / 2
    assert dpo_loss(*args, beta=0.5, label_smoothing=0.2).item() == pytest.approx(smoothed)
    # 1/(2 beta) = 1: (1 - 1)^2 and (-1 - 1)^2
    assert ipo_loss(*args, beta=0.5).item() == pytest.approx(2.0)


@pytest.mark.parametrize("surrogate", ["logistic", "squared_hinge", "least_squares"])
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("sort", ["hard", "soft"])
def test_gradcheck(surrogate, paired, sort):
    gen = torch.Generator().manual_seed(3)
    logps = [torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(4)]

    def f(*xs):  # eps 3 pools most of the sorted values into blocks
        return aot_loss(*xs, paired=paired, beta=0.8, surrogate=surrogate, sort=sort, soft_sort_eps=3.0)

    assert torch.autograd.gradcheck(f, logps)


def test_soft_sort_hand_numbers_and_limits():
    x = torch.tensor([3.0, 0.0], dtype=torch.float64)
    # gap 3 > 1/eps = 1: one block, an evenly spaced ramp (spacing 1/eps) around the mean 1.5
    assert soft_sort(x, 1.0).tolist() == pytest.approx([1.0, 2.0])
    # gap 3 <= 1/eps: exactly the hard sort
    assert soft_sort(x, 1 / 3).tolist() == pytest.approx([0.0, 3.0])
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(50, generator=gen, dtype=torch.float64) * 5
    hard = torch.sort(y).values
    errors = [(soft_sort(y, eps) - hard).abs().max().item() for eps in (100.0, 10.0, 1.0, 0.1, 0.01, 1e-4)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 1.0
    assert errors[-1] == 0.0  # eps * max gap <= 1: exactly the hard sort
    for eps in (1e6, 1.0):
        out = soft_sort(y, eps)
        assert out.mean().item() == pytest.approx(y.mean().item())  # mean is preserved
        assert bool((out.diff() >= -1e-12).all())  # output is sorted
    assert soft_sort(y, 1e9).std().item() < 1e-6  # eps -> inf: everything at the mean
    assert torch.allclose(soft_sort(y.float(), 1.0).double(), soft_sort(y, 1.0), atol=1e-5)


def test_soft_sort_aot_tends_to_hard_aot():
    gen = torch.Generator().manual_seed(5)
    logps = [torch.randn(32, generator=gen, dtype=torch.float64) for _ in range(4)]
    hard = aot_loss(*logps, beta=0.5)
    gaps = [abs(aot_loss(*logps, beta=0.5, sort="soft", soft_sort_eps=eps).item() - hard.item())
            for eps in (10.0, 1.0, 0.1, 1e-3)]
    assert gaps[0] > 1e-3 and gaps[-1] == 0.0


def test_preference_loss_dispatches():
    gen = torch.Generator().manual_seed(6)
    logps = [torch.randn(8, generator=gen, dtype=torch.float64) for _ in range(4)]
    assert LOSSES == ("aot", "aot_unpaired", "dpo", "ipo", "kto")
    assert preference_loss("aot", *logps, beta=0.2, surrogate="squared_hinge").item() == pytest.approx(
        aot_loss(*logps, beta=0.2, surrogate="squared_hinge").item())
    assert preference_loss("aot_unpaired", *logps, beta=0.2, sort="soft", soft_sort_eps=0.5).item() == pytest.approx(
        aot_loss(*logps, paired=False, beta=0.2, sort="soft", soft_sort_eps=0.5).item())
    assert preference_loss("dpo", *logps, beta=0.2, label_smoothing=0.1).item() == pytest.approx(
        dpo_loss(*logps, beta=0.2, label_smoothing=0.1).item())
    assert preference_loss("ipo", *logps, beta=0.2).item() == pytest.approx(ipo_loss(*logps, beta=0.2).item())
    kl = (logps[0][:5], logps[2][:5])
    assert preference_loss("kto", *logps, beta=0.2, kl=kl, desirable_weight=1.5).item() == pytest.approx(
        kto_loss(*logps, *kl, beta=0.2, desirable_weight=1.5).item())
    assert preference_loss("aot", *logps, beta=0.2, dominance="second").item() == pytest.approx(
        aot_loss(*logps, beta=0.2, dominance="second").item())


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda a: aot_loss(*a, surrogate="hinge"), "surrogate must be one of logistic, squared_hinge, least_squares"),
        (lambda a: aot_loss(*a, sort="fast"), "sort must be one of hard, soft"),
        (lambda a: aot_loss(*a, sort="soft"), "soft_sort_eps"),
        (lambda a: aot_loss(*a, sort="soft", soft_sort_eps=0.0), "soft_sort_eps"),
        (lambda a: aot_loss(*a, beta=0.0), "beta must be"),
        (lambda a: aot_loss(*a, beta=-1.0), "beta must be"),
        (lambda a: aot_loss(*a, label_smoothing=0.7), "label_smoothing must be in"),
        (lambda a: aot_loss(*a, surrogate="least_squares", label_smoothing=0.1), "label_smoothing applies"),
        (lambda a: preference_loss("orpo", *a, beta=0.1), "loss must be one of aot, aot_unpaired, dpo, ipo, kto"),
        (lambda a: preference_loss("kto", *a, beta=0.1), "kto needs kl"),
        (lambda a: preference_loss("kto", *a, beta=0.1, kl=(a[0], a[1]), label_smoothing=0.1),
         "label_smoothing is not defined for kto"),
        (lambda a: preference_loss("kto", *a, beta=0.1, kl=(a[0], a[1]), dominance="second"), "dominance applies"),
        (lambda a: preference_loss("dpo", *a, beta=0.1, dominance="second"), "dominance applies"),
        (lambda a: preference_loss("aot", *a, beta=0.1, kl=(a[0], a[1])), "applies to kto only"),
        (lambda a: preference_loss("dpo", *a, beta=0.1, undesirable_weight=2.0), "undesirable_weight applies to kto"),
        (lambda a: preference_loss("dpo", *a, beta=0.1, surrogate="squared_hinge"), "surrogate applies"),
        (lambda a: preference_loss("dpo", *a, beta=0.1, sort="soft", soft_sort_eps=1.0), "sort applies"),
        (lambda a: preference_loss("ipo", *a, beta=0.1, label_smoothing=0.1), "label_smoothing is not defined"),
    ],
)
def test_bad_arguments_name_the_argument_and_allowed_values(call, needle):
    with pytest.raises(ValueError, match=needle):
        call(_t(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED))


def test_reward_metrics_hand_numbers():
    # beta 0.5: chosen rewards [1, -1, 2], rejected rewards [0, 1, -1]
    chosen, rejected = torch.tensor([2.0, -2.0, 4.0]), torch.tensor([0.0, 2.0, -2.0])
    zeros = torch.zeros(3)
    m = reward_metrics(chosen, rejected, zeros, zeros, beta=0.5)
    assert m["rewards/chosen"] == pytest.approx(2 / 3)
    assert m["rewards/rejected"] == pytest.approx(0.0)
    assert m["rewards/margins"] == pytest.approx(2 / 3)
    assert m["rewards/accuracies"] == pytest.approx(2 / 3)
    # sorted chosen [-1, 1, 2] vs sorted rejected [-1, 0, 1]: no position below -> 0 violations
    assert m["rewards/violation_fraction"] == 0.0
    m = reward_metrics(rejected, chosen, zeros, zeros, beta=0.5)
    assert m["rewards/violation_fraction"] == pytest.approx(2 / 3)
    assert m["logps/chosen"] == pytest.approx(0.0) and m["logps/rejected"] == pytest.approx(4 / 3)
    assert all(isinstance(v, float) for v in m.values())


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_hand_numbers():
    # log-ratios: desirable [1, 0], undesirable [-1]; KL pairs: mean([.5, 1.5] - [0, 1]) = .5 = z0
    pos, neg, ref_pos, ref_neg = _t([1.0, 0.0], [-1.0], [0.0, 0.0], [0.0])
    kl, ref_kl = _t([0.5, 1.5], [0.0, 1.0])
    # beta 1: desirable 1 - s(1 - .5) = s(-.5), 1 - s(0 - .5) = s(.5); undesirable 1 - s(.5 - (-1)) = s(-1.5)
    # s(-.5) + s(.5) = 1, so the mean of the three is (1 + s(-1.5)) / 3
    got = kto_loss(pos, neg, ref_pos, ref_neg, kl, ref_kl, beta=1.0)
    assert got.item() == pytest.approx((1 + _sigmoid(-1.5)) / 3, abs=1e-12)
    # weights 2 (desirable) and 3 (undesirable), still a plain mean over the 3 samples
    got = kto_loss(pos, neg, ref_pos, ref_neg, kl, ref_kl, beta=1.0, desirable_weight=2.0, undesirable_weight=3.0)
    assert got.item() == pytest.approx((2 + 3 * _sigmoid(-1.5)) / 3, abs=1e-12)
    # a negative KL estimate, mean([0] - [1]) = -1, is clamped to z0 = 0: (s(-1) + s(0) + s(-1)) / 3
    got = kto_loss(pos, neg, ref_pos, ref_neg, *_t([0.0], [1.0]), beta=1.0)
    assert got.item() == pytest.approx((2 * _sigmoid(-1.0) + 0.5) / 3, abs=1e-12)
    # an empty side adds nothing: desirable only, (s(-.5) + s(.5)) / 2
    empty = torch.zeros(0, dtype=torch.float64)
    assert kto_loss(pos, empty, ref_pos, empty, kl, ref_kl, beta=1.0).item() == pytest.approx(0.5, abs=1e-12)
    assert kto_reference_point(kl, ref_kl).item() == pytest.approx(0.5)


def test_kto_gradient_by_hand_and_none_through_the_reference_point():
    pos, neg, ref_pos, ref_neg = _t([1.0, 0.0], [-1.0], [0.0, 0.0], [0.0])
    kl, ref_kl = _t([0.5, 1.5], [0.0, 1.0])
    for t in (pos, neg, kl):
        t.requires_grad_()
    kto_loss(pos, neg, ref_pos, ref_neg, kl, ref_kl, beta=2.0).backward()
    # z0 = .5; desirable d/dr (1 - s(2 (r - .5))) / 3 = -2 s'(2 (r - .5)) / 3 at r = 1, 0 (s' = s (1 - s));
    # undesirable d/dr (1 - s(2 (.5 - r))) / 3 = +2 s'(2 (.5 - r)) / 3 at r = -1
    def ds(x: float) -> float:
        return _sigmoid(x) * (1 - _sigmoid(x))

    assert pos.grad.tolist() == pytest.approx([-2 * ds(1.0) / 3, -2 * ds(-1.0) / 3], abs=1e-12)
    assert neg.grad.tolist() == pytest.approx([2 * ds(3.0) / 3], abs=1e-12)
    assert kl.grad is None  # z0 is detached


class _LogProbTable:
    """Stands in for the model TRL runs inside KTOTrainer._compute_loss: row r of `input_ids` is [r, 0], a
    one-token completion, and the "model" returns the log-prob table[r] for it, so TRL's sum over
    completion tokens gives back table[r] (with its gradient)."""

    training = True

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, input_ids, **kwargs):
        log_probs = self.table[input_ids[:, 0]].unsqueeze(1)
        zeros = torch.zeros_like(log_probs.detach())
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros)


def _trl_kto(policy, ref, labels, policy_kl, ref_kl, *, beta, desirable_weight, undesirable_weight):
    """TRL's own KTO loss. TRL 1.16 keeps it inside KTOTrainer._compute_loss, which also runs the models and
    logs metrics, so we call that method unbound on a namespace holding just the attributes it reads: the
    loss settings, precomputed reference log-probs (so no reference model runs), a one-process
    "accelerator" whose gather is the identity, and the table model above for the policy (TRL's own
    _compute_kl_logps runs it on the KL rows, offset by the batch size in the table)."""
    n = len(labels)
    model = _LogProbTable(torch.cat([policy, policy_kl]))
    trainer = SimpleNamespace(
        model=model, accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x),
        beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, loss_type="kto",
        calculate_KL=True, precompute_ref_logps=True, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    trainer._compute_kl_logps = MethodType(KTOTrainer._compute_kl_logps, trainer)
    rows = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], 1)
    kl_rows = torch.stack([n + torch.arange(len(policy_kl)), torch.zeros(len(policy_kl), dtype=torch.long)], 1)
    batch = {"input_ids": rows, "attention_mask": torch.ones_like(rows), "completion_mask": torch.ones_like(rows),
             "KL_input_ids": kl_rows, "KL_attention_mask": torch.ones_like(kl_rows),
             "KL_completion_mask": torch.ones_like(kl_rows), "label": labels, "ref_logps": ref, "ref_KL_logps": ref_kl}
    return KTOTrainer._compute_loss(trainer, model, batch, return_outputs=False)


@pytest.mark.parametrize(("labels", "kl_shift", "weights"), [
    ([1, 0, 1, 1, 0, 0, 1, 0, 1], 2.0, (1.0, 1.0)),   # KL estimate > 0
    ([1, 0, 1, 1, 0, 0, 1, 0, 1], -2.0, (1.0, 1.0)),  # KL estimate < 0: clamped to 0
    ([0, 1, 0, 0, 0, 1, 0], 1.0, (1.33, 0.7)),
    ([1, 1, 1, 1], 1.0, (1.0, 2.0)),                  # no undesirable sample
    ([0, 0, 0], 1.0, (1.0, 1.0)),                     # no desirable sample
])
def test_kto_equals_trl_kto_trainer(labels, kl_shift, weights):
    gen = torch.Generator().manual_seed(len(labels))
    n = len(labels)
    labels = torch.tensor(labels, dtype=torch.bool)
    policy = (-20 * torch.rand(n, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = policy.detach() + torch.randn(n, generator=gen, dtype=torch.float64)
    policy_kl = -20 * torch.rand(n, generator=gen, dtype=torch.float64)
    ref_kl = policy_kl - kl_shift + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    kw = {"beta": 0.1, "desirable_weight": weights[0], "undesirable_weight": weights[1]}
    expected = _trl_kto(policy, ref, labels, policy_kl, ref_kl, **kw)
    (expected_grad,) = torch.autograd.grad(expected, policy)
    got = kto_loss(policy[labels], policy[~labels], ref[labels], ref[~labels], policy_kl, ref_kl, **kw)
    (got_grad,) = torch.autograd.grad(got, policy)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6, rtol=0)
    assert got_grad.abs().sum() > 0


def test_kto_bad_arguments():
    pos, neg, ref_pos, ref_neg = _t([1.0, 0.0], [-1.0], [0.0, 0.0], [0.0])
    kl, ref_kl = _t([0.5, 1.5], [0.0, 1.0])
    empty = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least one desirable or undesirable sample"):
        kto_loss(empty, empty, empty, empty, kl, ref_kl)
    with pytest.raises(ValueError, match="policy_kl must be a non-empty 1-D tensor"):
        kto_loss(pos, neg, ref_pos, ref_neg, empty, empty)
    with pytest.raises(ValueError, match="policy_kl and ref_kl must have the same length; got 2 and 1"):
        kto_loss(pos, neg, ref_pos, ref_neg, kl, ref_kl[:1])
    with pytest.raises(ValueError, match="policy_pos 2 vs ref_pos 1"):
        kto_loss(pos, neg, ref_pos[:1], ref_neg, kl, ref_kl)
    with pytest.raises(ValueError, match="undesirable_weight must be a finite number >= 0; got -1.0"):
        kto_loss(pos, neg, ref_pos, ref_neg, kl, ref_kl, undesirable_weight=-1.0)
    with pytest.raises(ValueError, match="beta must be"):
        kto_loss(pos, neg, ref_pos, ref_neg, kl, ref_kl, beta=float("nan"))
