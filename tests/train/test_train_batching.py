"""Data order depends only on the seed, the global batch and the positive fraction; unpaired steps draw in
the data's proportion; micro-batches are grouped by length; KTO's mismatched rows are built from the
global batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aot_cli.train.batching import (KLSide, Side, StepSampler, collate, kl_row, kl_sources, split_micro_batches,
                                    step_micro_batches)


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
    pos, neg = StepSampler(30, 30, 8, seed=1, paired=False).step(0)
    assert len(pos) == len(neg) == 8 and not np.array_equal(pos, neg)
    pos, neg = StepSampler(30, 20, 8, seed=1, paired=False).step(0)
    assert pos.max() < 30 and neg.max() < 20
    # 16 samples per step at the data's 3/5: floor(16 * 3/5) = 9 positives, then 10 (floor(32 * 3/5) = 19)
    assert (len(pos), len(neg)) == (9, 7)
    assert StepSampler(30, 20, 8, seed=1, paired=False).steps_per_epoch == 50 // 16


def test_balanced_unpaired_data_draws_as_before():
    """Equal counts: G positives and G negatives per step, windows of the two epoch permutations."""
    s = StepSampler(40, 40, 8, seed=5, paired=False)
    assert s.steps_per_epoch == 5 and s.fewest == (8, 8)
    perm_a = np.random.default_rng([5, 1, 0]).permutation(40)
    perm_b = np.random.default_rng([5, 1, 1]).permutation(40)
    pos, neg = s.step(5 + 2)  # epoch 1, step 2
    assert np.array_equal(pos, perm_a[16:24]) and np.array_equal(neg, perm_b[16:24])


def test_unpaired_counts_follow_the_cumulative_rounding_by_hand():
    # 3 positives, 5 negatives, G = 2 (4 samples per step), fraction 3/8: P(t) = floor(1.5 t) = 0, 1, 3
    s = StepSampler(3, 5, 2, seed=0, paired=False)
    assert s.steps_per_epoch == 2 and s.fewest == (1, 2)
    assert [s.positives_before(t) for t in range(3)] == [0, 1, 3]
    (p0, n0), (p1, n1) = s.step(0), s.step(1)
    assert (len(p0), len(n0), len(p1), len(n1)) == (1, 3, 2, 2)
    assert sorted([*p0, *p1]) == [0, 1, 2] and sorted([*n0, *n1]) == [0, 1, 2, 3, 4]  # every sample once


@pytest.mark.parametrize("n_pos, n_neg", [(70, 30), (90, 10), (13, 87)])
def test_an_unpaired_epoch_sees_every_sample_once_in_the_data_proportion(n_pos, n_neg):
    s = StepSampler(n_pos, n_neg, 8, seed=2, paired=False)
    rows = 16
    assert s.steps_per_epoch == (n_pos + n_neg) // rows
    for epoch in (0, 1):
        steps = [s.step(epoch * s.steps_per_epoch + t) for t in range(s.steps_per_epoch)]
        pos = np.concatenate([p for p, _ in steps])
        neg = np.concatenate([n for _, n in steps])
        assert all(len(p) + len(n) == rows for p, n in steps)
        assert {len(p) for p, _ in steps} <= {rows * n_pos // 100, -(-rows * n_pos // 100)}  # floor or ceil
        assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)  # without replacement
        # only the last incomplete global batch is left over, split in proportion
        assert n_pos - len(pos) + n_neg - len(neg) == (n_pos + n_neg) % rows
        assert len(pos) == s.steps_per_epoch * rows * n_pos // 100


def test_positive_fraction_overrides_the_data_share():
    s = StepSampler(70, 30, 8, seed=0, paired=False, positive_fraction=0.5)
    assert s.fewest == (8, 8)
    assert s.steps_per_epoch == 30 // 8  # the negatives run out first
    assert all(len(s.step(k)[0]) == 8 for k in range(6))
    # the draw depends on the fraction: a resumed run must keep it (checked through the checkpoint state)
    assert not np.array_equal(StepSampler(70, 30, 8, seed=0, paired=False).step(0)[0], s.step(0)[0])
    tiny = StepSampler(99, 1, 2, seed=0, paired=False)
    assert tiny.fewest == (3, 0)  # 4 samples per step at 99%: some steps have no negative
    with pytest.raises(ValueError, match="unpaired data only"):
        StepSampler(8, 8, 2, seed=0, paired=True, positive_fraction=0.5)


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


def test_unpaired_micro_batches_spread_unequal_counts():
    """5 positives and 7 negatives in micro-batches of 4 rows: positives floor(j 5 / 3) .. floor((j+1) 5 / 3),
    i.e. 1, 2, 2, each side in length order; the other rows negatives; micro-batch j on rank j % world."""
    len_pos, len_neg = np.array([50, 10, 40, 20, 30]), np.array([7, 1, 6, 2, 5, 3, 4])
    pos, neg = np.arange(5), np.arange(7)
    micro = split_micro_batches(pos, neg, len_pos, len_neg, micro_batch=2, paired=False)
    assert [(list(a), list(b)) for a, b in micro] == [([1], [1, 3, 5]), ([3, 4], [6, 4]), ([2, 0], [2, 0])]
    ranks = [split_micro_batches(pos, neg, len_pos, len_neg, micro_batch=2, world_size=3, rank=r, paired=False)
             for r in range(3)]
    assert [[(list(a), list(b)) for a, b in r] for r in ranks] == [[(list(a), list(b))] for a, b in micro]
    with pytest.raises(ValueError, match="12 samples does not split into micro-batches of 4 rows on 2 rank"):
        split_micro_batches(pos, neg, len_pos, len_neg, micro_batch=2, world_size=2, paired=False)


def _toy_sides(n_a: int, n_b: int, seed: int = 0) -> tuple[Side, Side]:
    """Sides over in-memory rows: prompt tokens 100 + sample, completion tokens 200 + sample."""
    rng = np.random.default_rng(seed)

    def side(n: int, offset: int) -> Side:
        rows = []
        for i in range(n):
            plen, clen = int(rng.integers(1, 4)), int(rng.integers(1, 5))
            rows.append({"ids": [100 + offset + i] * plen + [200 + offset + i] * clen, "plen": plen})
        return Side(rows, "ids", "plen", np.arange(n), np.array([len(r["ids"]) for r in rows]),
                    np.array([r["plen"] for r in rows]))

    return side(n_a, 0), side(n_b, 50)


def test_kl_sources_rotate_the_global_batch_by_one():
    side, index, c_side, c_index = kl_sources(np.array([4, 7]), np.array([1]))
    assert side.tolist() == [0, 0, 1] and index.tolist() == [4, 7, 1]
    assert c_side.tolist() == [1, 0, 0] and c_index.tolist() == [1, 4, 7]  # (x_1, y_3), (x_2, y_1), (x_3, y_2)
    # paired: the halves of pair i sit G apart, so with G >= 2 no row meets its own prompt's answer
    side, index, c_side, c_index = kl_sources(np.array([3, 8, 5]), np.array([3, 8, 5]))
    assert not np.any(index == c_index)


def test_kl_row_joins_one_prompt_and_another_completion_and_truncates():
    sides = _toy_sides(3, 2)
    (ids_p, plen), (ids_c, plen_c) = sides[0].get(1), sides[1].get(0)
    ids, got_plen = kl_row(sides, (0, 1), (1, 0), None)
    assert got_plen == plen and ids == ids_p[:plen] + ids_c[plen_c:]
    assert kl_row(sides, (0, 1), (1, 0), plen + 1)[0] == ids[:plen + 1]
    assert kl_row(sides, (0, 1), (1, 0), 1)[0] == ids[:plen + 1]  # never less than one completion token


@pytest.mark.parametrize("paired", [True, False])
def test_kto_micro_batches_carry_the_mismatched_rows_of_their_samples(paired):
    """Every sample's KL row rides in its micro-batch, whatever the micro-batch size; the rows and lengths
    of the epoch's KLSide (what the reference precompute reads) are the same rows, at t * 2G + position."""
    sides = _toy_sides(12, 12 if paired else 9)
    sampler = StepSampler(len(sides[0]), len(sides[1]), 4, seed=3, paired=paired)
    epoch_rows = KLSide(sides, sampler, 1, max_length=6)
    assert len(epoch_rows) == sampler.steps_per_epoch * 8
    for t in range(len(epoch_rows)):
        ids, plen = epoch_rows.get(t)
        assert len(ids) == epoch_rows.lengths[t] and plen < len(ids)
    table = {1: torch.arange(len(epoch_rows), dtype=torch.float32)}
    k = sampler.steps_per_epoch + 1  # epoch 1, step 1
    seen = {}
    for micro, world in ((1, 1), (2, 2), (4, 1)):
        batches = [b for rank in range(world) for b in step_micro_batches(
            sides, sampler, k, micro_batch=micro, pad_id=0, rank=rank, world_size=world, kl=True, kl_ref=table,
            max_length=6)]
        rows = {}
        for batch in batches:
            assert batch.kl.input_ids.shape[0] == batch.n_rows
            for r, p in enumerate(batch.kl.positions):
                width = int(batch.kl.attention_mask[r].sum())
                rows[int(p)] = batch.kl.input_ids[r, :width].tolist()
                assert batch.kl.ref[r].item() == 8 + p  # step 1 of the epoch: table entries 8 .. 15
                expected = epoch_rows.get(8 + int(p))[0]
                assert rows[int(p)] == expected
            # the KL row of a sample starts with that sample's prompt
            for r, i in enumerate(batch.idx_a):
                ids, plen = sides[0].get(i)
                assert batch.kl.input_ids[r, :plen].tolist() == ids[:plen]
        assert sorted(rows) == list(range(8))
        seen[micro, world] = rows
    assert seen[1, 1] == seen[2, 2] == seen[4, 1]


def test_collate_pads_to_longest_row_and_masks_prompts():
    ids, mask, labels = collate([([5, 6, 7, 8], 2), ([9, 10, 11], 1)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # position t predicts token t + 1 when it is a completion token
    assert labels.tolist() == [[-100, 7, 8, -100], [10, 11, -100, -100]]
