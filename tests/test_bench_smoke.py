"""The benchmark harness (benchmarks/) on a minuscule config: it runs end to end, its synthetic data
is a valid aot dataset that fits max_length, and its throughput arithmetic is right. Not a
measurement: the numbers of record come from `make bench` (docs/performance.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_setup  # noqa: E402
import train_bench  # noqa: E402


def test_summarize_times_only_the_steps_after_warmup():
    marks = {"step_ends": [10.0, 12.0, 13.0, 14.5], "cuda_peak_bytes": None, "threads": 2}
    got = train_bench.summarize(marks, samples_per_step=4, warmup=1)
    # steps 2..4: 3 steps x 4 samples in 14.5 - 10.0 s
    assert got["timed_steps"] == 3
    assert got["timed_s"] == pytest.approx(4.5)
    assert got["samples_per_s"] == pytest.approx(12 / 4.5)
    assert got["s_per_sample"] == pytest.approx(4.5 / 12)


def test_ratios_compare_micro_and_global_to_trl():
    runs = {
        "trl": {"samples_per_s": 0.1, "peak_rss_bytes": 8e9, "s_per_sample": 10.0},
        "micro": {"samples_per_s": 0.3, "peak_rss_bytes": 2e9, "s_per_sample": 1 / 0.3},
        "global": {"samples_per_s": 0.25, "peak_rss_bytes": 3e9, "s_per_sample": 4.0},
    }
    got = train_bench.ratios(runs)
    assert got["speed_vs_trl"] == pytest.approx(3.0)
    assert got["memory_vs_trl"] == pytest.approx(0.25)
    assert got["global_time_vs_micro"] == pytest.approx(4.0 * 0.3)


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-model")
    return bench_setup.build_model(out, bench_setup.CONFIGS["smoke"])


def test_synthetic_dataset_is_an_aot_dataset_that_fits_max_length(smoke_model, tmp_path):
    from transformers import AutoTokenizer

    from aot_cli.data.dataset import load_prepared

    cfg = bench_setup.CONFIGS["smoke"]
    data, manifest = load_prepared(bench_setup.build_dataset(tmp_path / "data", smoke_model, cfg, 6))
    assert manifest["summary"]["paired"] is True
    assert len(data["train"]) == 6
    tokenizer = AutoTokenizer.from_pretrained(smoke_model)
    for row in data["train"]:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        for completion in (row["chosen"], row["rejected"]):
            ids = tokenizer.apply_chat_template(row["prompt"] + completion, tokenize=True, return_dict=True)
            assert len(prompt) < len(ids["input_ids"]) <= cfg.max_length
