"""Data order depends only on the seed and the global batch; micro-batches are grouped by length."""

from __future__ import annotations

import numpy as np
import pytest

from aot_cli.train.batching import StepSampler, collate, split_micro_batches


def test_step_draw_depends_only_on_seed_and_global_batch():
    a = StepSampler(50, 50, 16, seed=3, paired=True)
    b = StepSampler(50, 50, 16, seed=3, paired=True)
    assert a.steps_per_epoch == 3
    for k in (0, 1, 2, 3, 7):
        assert np.array_equal(a.step(k)[0], b.step(k)[0])
    # random access (a resumed run) gives what a sequential run gets
    fresh = StepSampler(50, 50, 16, seed=3, paired=True)
    assert np.array_equal(fresh.step(4)[0], a.step(4)[0])
    assert not np.array_equal(StepSampler(50, 50, 16, seed=4, paired=True).step(0)[0], a.step(0)[0])


def test_epoch_is_without_replacement_and_reshuffled():
    s = StepSampler(48, 48, 16, seed=0, paired=True)
    epoch0 = np.concatenate([s.step(k)[0] for k in range(3)])
    epoch1 = np.concatenate([s.step(k)[0] for k in range(3, 6)])
    assert sorted(epoch0) == list(range(48)) == sorted(epoch1)
    assert not np.array_equal(epoch0, epoch1)


def test_paired_draws_same_pairs_unpaired_draws_independently():
    idx_a, idx_b = StepSampler(40, 40, 8, seed=1, paired=True).step(0)
    assert np.array_equal(idx_a, idx_b)
    pos, neg = StepSampler(30, 20, 8, seed=1, paired=False).step(0)
    assert len(pos) == len(neg) == 8 and not np.array_equal(pos, neg)
    assert pos.max() < 30 and neg.max() < 20
    assert StepSampler(30, 20, 8, seed=1, paired=False).steps_per_epoch == 2


def test_micro_batches_grouped_by_length_and_dealt_to_ranks():
    lengths_a = np.array([10, 3, 7, 1, 9, 2, 8, 4])
    lengths_b = np.array([1, 1, 1, 1, 1, 1, 1, 12])
    idx = np.arange(8)
    micro = split_micro_batches(idx, idx, lengths_a, lengths_b, micro_batch=2, paired=True)
    keys = [max(lengths_a[i], lengths_b[i]) for a, _ in micro for i in a]
    assert keys == sorted(keys) == [1, 2, 3, 7, 8, 9, 10, 12]
    rank0 = split_micro_batches(idx, idx, lengths_a, lengths_b, micro_batch=2, world_size=2, rank=0)
    rank1 = split_micro_batches(idx, idx, lengths_a, lengths_b, micro_batch=2, world_size=2, rank=1)
    assert [list(a) for a, _ in rank0] == [list(micro[0][0]), list(micro[2][0])]
    assert [list(a) for a, _ in rank1] == [list(micro[1][0]), list(micro[3][0])]
    with pytest.raises(ValueError):
        split_micro_batches(idx, idx, lengths_a, lengths_b, micro_batch=3)


def test_unpaired_micro_batches_sort_each_side():
    len_pos, len_neg = np.array([5, 1, 3, 2]), np.array([9, 7, 8, 6])
    idx = np.arange(4)
    (a0, b0), (a1, b1) = split_micro_batches(idx, idx, len_pos, len_neg, micro_batch=2, paired=False)
    assert list(a0) == [1, 3] and list(b0) == [3, 1] and list(a1) == [2, 0] and list(b1) == [2, 0]


def test_collate_pads_to_longest_row_and_masks_prompts():
    ids, mask, labels = collate([([5, 6, 7, 8], 2), ([9, 10, 11], 1)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # position t predicts token t + 1 when it is a completion token
    assert labels.tolist() == [[-100, 7, 8, -100], [10, 11, -100, -100]]
