"""benchmarks/dominance_order.py (the first- vs second-order experiment of docs/aot.md): its data and its
numbers by hand, and (slow) one quick end-to-end run through the real CLI. Not a measurement: the
numbers of record come from `python benchmarks/dominance_order.py`."""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

dominance_order = importlib.import_module("dominance_order")  # benchmarks/ is not a package


def test_pairs_are_easy_or_hard_and_prompts_unique():
    taken: set[str] = set()
    rows = dominance_order.make_pairs(400, 0.25, random.Random(3), taken)
    assert len({r["prompt"] for r in rows}) == 400 == len(taken)
    hard = [r for r in rows if r["rejected"] != r["chosen"].upper()]
    assert 70 < len(hard) < 130  # about a quarter
    for r in hard:  # the same lowercase sentence but its end
        assert r["chosen"].endswith("for a little while.") and r["rejected"] == r["chosen"][:-6] + "bit!"
    more = dominance_order.make_pairs(10, 0.25, random.Random(3), taken)
    assert not {r["prompt"] for r in more} & {r["prompt"] for r in rows}


def test_tail_metrics_by_hand():
    # 20 pairs: chosen log-ratios 0..19, rejected log-ratios 0 except pair 0 at 4; beta 0.5
    rows = [{"policy_chosen": float(i), "ref_chosen": 0.0, "policy_rejected": 4.0 if i == 0 else 0.0,
             "ref_rejected": 0.0} for i in range(20)]
    got = dominance_order.tail_metrics(rows, 0.5)
    # margins 0.5 * [-4, 1, 2, ..., 19]: the 5% quantile interpolates 5% of the way from -2 to 0.5
    assert got["margin_q05"] == pytest.approx(-2 + 0.95 * 2.5)
    assert got["chosen_q05"] == pytest.approx(0.5 * 0.95)
    assert got["margin_mean"] == pytest.approx(0.5 * (sum(range(1, 20)) - 4) / 20)
    assert got["accuracy"] == pytest.approx(19 / 20)


def test_second_minus_first_is_taken_seed_by_seed():
    runs = [{"loss": "aot", "dominance": d, "seed": s, "margin_q05": q, "chosen_q05": 0.0, "margin_mean": 1.0,
             "accuracy": 1.0} for d, s, q in (("first", 1, 0.1), ("second", 1, 0.4), ("first", 2, 0.3),
                                              ("second", 2, 0.4))]
    diff = dominance_order.paired_differences(runs)["aot"]["margin_q05"]
    assert diff["per_seed"] == pytest.approx([0.3, 0.1]) and diff["mean"] == pytest.approx(0.2)
    rows = {r["dominance"]: r for r in dominance_order.summarize(runs)}
    assert rows["first"]["margin_q05"]["mean"] == pytest.approx(0.2) and rows["second"]["seeds"] == [1, 2]


@pytest.mark.slow
def test_quick_run_trains_both_orders_and_scores_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    record = dominance_order.main(["--quick", "--steps", "2", "--out", str(tmp_path)])
    assert [(r["loss"], r["dominance"]) for r in record["runs"]] == [("aot", "first"), ("aot", "second")]
    assert all(r["commands"][0].startswith("aot train") and "--dominance" in r["commands"][0] for r in record["runs"])
    assert record["runs"][0]["margin_q05"] != record["runs"][1]["margin_q05"]
    assert (tmp_path / "dominance_order.json").is_file()
