"""The benchmark harness (benchmarks/) on a minuscule config: it runs end to end, its synthetic data
is a valid aot dataset that fits max_length, and its throughput arithmetic is right. Not a
measurement: the numbers of record come from `make bench` (docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

bench_setup = importlib.import_module("bench_setup")  # benchmarks/ is not a package
train_bench = importlib.import_module("train_bench")


def test_summarize_times_only_the_steps_after_warmup():
    marks = {"step_ends": [10.0, 12.0, 13.0, 14.5], "step_cpu": [20.0, 23.0, 25.0, 26.0],
             "cuda_peak_bytes": None, "threads": 2}
    got = train_bench.summarize(marks, samples_per_step=4, warmup=1)
    # steps 2..4 (2.0, 1.0 and 1.5 s): 3 steps x 4 samples in 14.5 - 10.0 s, 26 - 20 CPU s
    assert got["timed_steps"] == 3
    assert got["timed_s"] == pytest.approx(4.5)
    assert got["samples_per_s"] == pytest.approx(12 / 4.5)
    assert got["s_per_sample"] == pytest.approx(4.5 / 12)
    assert got["median_step_s"] == pytest.approx(1.5)
    assert got["median_samples_per_s"] == pytest.approx(4 / 1.5)
    assert got["cpu_s_per_sample"] == pytest.approx(6 / 12)


def test_ratios_compare_micro_and_global_to_trl():
    def run(samples_per_s, median_samples_per_s, cpu_s_per_sample, rss):
        return {"samples_per_s": samples_per_s, "s_per_sample": 1 / samples_per_s, "peak_rss_bytes": rss,
                "median_samples_per_s": median_samples_per_s, "cpu_s_per_sample": cpu_s_per_sample}

    runs = {"trl": run(0.1, 0.12, 20.0, 8e9), "trl-nogc": run(0.15, 0.15, 18.0, 1e10), "micro": run(0.3, 0.3, 5.0, 2e9),
            "global": run(0.25, 0.25, 6.0, 3e9)}
    got = train_bench.ratios(runs)
    assert got["speed_vs_trl"] == pytest.approx(3.0)
    assert got["speed_vs_trl_median"] == pytest.approx(2.5)
    assert got["speed_vs_trl_cpu"] == pytest.approx(4.0)
    assert got["memory_vs_trl"] == pytest.approx(0.25)
    assert got["speed_vs_trl_nogc"] == pytest.approx(2.0)
    assert got["memory_vs_trl_nogc"] == pytest.approx(0.2)
    assert got["global_speed_vs_trl"] == pytest.approx(2.5)
    assert got["global_time_vs_micro"] == pytest.approx(0.3 / 0.25)
    assert got["global_time_vs_micro_cpu"] == pytest.approx(1.2)


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-model")
    return bench_setup.build_model(out, bench_setup.CONFIGS["smoke"])


def test_synthetic_dataset_is_an_aot_dataset_that_fits_max_length(smoke_model, tmp_path):
    from transformers import AutoTokenizer

    from aot_cli.data.dataset import load_prepared

    cfg = bench_setup.CONFIGS["smoke"]
    artifact, data = load_prepared(bench_setup.build_dataset(tmp_path / "data", smoke_model, cfg, 6))
    assert artifact.paired is True
    assert len(data["train"]) == 6
    tokenizer = AutoTokenizer.from_pretrained(smoke_model)
    for row in data["train"]:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        for completion in (row["chosen"], row["rejected"]):
            ids = tokenizer.apply_chat_template(row["prompt"] + completion, tokenize=True, return_dict=True)
            assert len(prompt) < len(ids["input_ids"]) <= cfg.max_length


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is the `bench` extra")
def test_harness_runs_trl_and_both_aot_scopes(tmp_path):
    report = train_bench.main(["--config", "smoke", "--runs", "trl,micro,global", "--steps", "2", "--global-steps",
                               "2", "--sort-set", "4", "--out", str(tmp_path)])
    assert set(report["runs"]) == {"trl", "micro", "global"}
    for name, run in report["runs"].items():
        assert run["steps"] == 2, name
        assert run["samples_per_s"] > 0 and run["peak_rss_bytes"] > 100 * 2**20, name
    assert report["runs"]["global"]["samples_per_step"] == 4  # micro-batch 2 x accumulation 2
    assert set(report["ratios"]) >= {"speed_vs_trl", "memory_vs_trl", "global_time_vs_micro"}
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == report["ratios"]
    assert "| global | 4 | 1 |" in (tmp_path / "results.md").read_text()
