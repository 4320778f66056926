"""benchmarks/gpu_check.py: its FLOPs and peak arithmetic by hand, its process isolation (a timeout,
a failure's one-line reason), and its CPU dry run end to end (the rows and numbers of the JSON and
the Markdown table). The GPU figures themselves come from a GPU run (docs/performance.md)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
gpu_check = importlib.import_module("gpu_check")  # benchmarks/ is not a package
train_bench = importlib.import_module("train_bench")


def test_sequence_flops_six_per_trained_four_per_frozen_parameter_plus_attention():
    # 10 tokens, 2 layers of attention width 8: attention 12 * 2 * 8 * 10^2 = 19200
    assert gpu_check.sequence_flops(10, trained=100, frozen=0, layers=2, attention_width=8) == 6000 + 19200
    assert gpu_check.sequence_flops(10, trained=5, frozen=100, layers=2, attention_width=8) == 300 + 4000 + 19200


def test_parameter_split_full_trains_every_matrix_lora_trains_rank_times_in_plus_out():
    shape = {"matmul_parameters": 26624, "lora_parameters_per_rank": 544}
    assert gpu_check.parameter_split(shape, "full") == (26624, 0)
    assert gpu_check.parameter_split(shape, "lora") == (16 * 544, 26624)
    assert gpu_check.parameter_split(shape, "qlora") == (16 * 544, 26624)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.1),
    ("NVIDIA L4", 121.0), ("NVIDIA L40", None), ("NVIDIA H200 NVL", None), ("cpu", None),
])
def test_peak_tflops_by_device_name(name, peak):
    assert gpu_check.peak_tflops(name) == peak


def test_failure_reason_is_one_line_from_the_log():
    oom = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in <module>\n    y = f()\n"
           "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity\n"
           "of 139.80 GiB of which 1.2 GiB is free.\n")
    assert train_bench.failure_reason(oom, 1) == (
        "exit 1: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity")
    refused = "loading\nerror: --load-in-4bit needs bitsandbytes: pip install 'aot-cli[qlora]'\n"
    assert train_bench.failure_reason(refused, 2) == "exit 2: error: --load-in-4bit needs bitsandbytes: pip install " \
                                                     "'aot-cli[qlora]'"
    assert train_bench.failure_reason("step 1\n", -9) == "killed by SIGKILL"


def test_run_process_kills_a_run_past_its_timeout(tmp_path):
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    start = time.perf_counter()
    got = train_bench.run_process("sleeper", cmd, tmp_path, {}, timeout=1)
    assert time.perf_counter() - start < 20
    assert got["reason"] == "timed out after 1 s (killed)"
    assert got["exit_code"] == -9
    assert "started" in (tmp_path / "logs" / "sleeper.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_only_the_dry_run_is_accepted(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args([])
    assert exit_info.value.code == 2
    assert "use --cpu-dry-run" in capsys.readouterr().err


def test_a_failed_run_is_one_row_with_its_reason_and_the_next_run_still_runs(monkeypatch, tmp_path):
    """Runs replaced by stand-ins: an OOM, then a run whose step clock marks 3 steps at 1 s
    intervals on an H200; then a budget too small to start anything."""

    def stand_in(run, args, cfg, model, data, work):
        result = work / f"{run.name}.json"
        if run.name == "aot-lora-micro":
            code = "import sys; print('loading'); sys.exit('torch.OutOfMemoryError: CUDA out of memory. Tried 9 GiB')"
        else:
            marks = {"step_ends": [1.0, 2.0, 3.0], "step_cpu": [1.0, 2.0, 3.0], "cuda_peak_bytes": 3 * 2**30,
                     "cuda_peak_reserved_bytes": 4 * 2**30, "device": "NVIDIA H200", "threads": 1}
            code = f"import json; json.dump({marks!r}, open({str(result)!r}, 'w'))"
        return [sys.executable, "-c", code], result

    monkeypatch.setattr(gpu_check, "command_for", stand_in)
    out, work = tmp_path / "out", tmp_path / "work"
    options = ["--cpu-dry-run", "--runs", "aot-lora-micro,aot-full-global", "--out", str(out), "--work", str(work)]
    failed, ok = gpu_check.main(options)["rows"]
    assert (failed["status"], failed["reason"]) == (
        "failed", "exit 1: torch.OutOfMemoryError: CUDA out of memory. Tried 9 GiB")
    assert failed["log_tail"][-2:] == ["loading", "torch.OutOfMemoryError: CUDA out of memory. Tried 9 GiB"]
    pairs = gpu_check.pair_lengths(work / "model-smoke", work / "data-global")
    flops = sum(gpu_check.sequence_flops(s, trained=26624, frozen=0, layers=1, attention_width=32)
                for pair in pairs for s in pair) / len(pairs)
    # steps 2 and 3 (warm-up 1) of 2 pairs x accumulation 2, 1 s each: 4 pairs/s
    assert ok["status"] == "ok" and ok["samples_per_s"] == pytest.approx(4.0)
    assert ok["mfu"] == pytest.approx(4.0 * flops / 1e12 / 989.4)
    assert (ok["cuda_peak_bytes"], ok["cuda_peak_reserved_bytes"]) == (3 * 2**30, 4 * 2**30)
    table = (out / "gpu_check.md").read_text()
    assert "| aot-lora-micro | failed | 2 | - |" in table
    assert "| aot-full-global | ok | 4 | 4.00 |" in table and "| 3.00 GiB | 4.00 GiB |" in table

    rows = gpu_check.main([*options, "--budget", "15"])["rows"]  # under MIN_RUN_S from the start
    assert [(r["status"], r["reason"].split(":")[0]) for r in rows] == [("skipped", "not started")] * 2


@pytest.mark.slow
def test_cpu_dry_run_writes_every_row_with_its_numbers_or_its_reason(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    report = gpu_check.main(["--cpu-dry-run", "--runs", "aot-lora-global,trl-full,aot-qlora-micro",
                             "--peak-tflops", "0.1", "--out", str(out), "--work", str(work)])
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["aot-lora-global", "trl-full", "aot-qlora-micro"]  # the check's order, not --runs'
    # smoke model: hidden 32, 1 layer, MLP 64, vocabulary 512, untied head
    assert report["model"] == {"parameters": 43104, "matmul_parameters": 4 * 32 * 32 + 3 * 32 * 64 + 512 * 32,
                               "lora_parameters_per_rank": 4 * 64 + 3 * 96, "layers": 1, "attention_width": 32}

    lora = rows["aot-lora-global"]
    assert lora["status"] == "ok" and lora["reason"] is None
    assert (lora["sort_set"], lora["timed_steps"], lora["device"]) == (4, 1, "cpu")  # 2 pairs x accum 2; 2 steps
    pairs = gpu_check.pair_lengths(work / "model-smoke", work / "data-global")
    assert len(pairs) == 2 * 4  # --global-steps 2 x sort set 4: one epoch
    tokens = sum(map(sum, pairs)) / len(pairs)
    flops = sum(gpu_check.sequence_flops(s, trained=16 * 544, frozen=10240 + 16384, layers=1, attention_width=32)
                for pair in pairs for s in pair) / len(pairs)
    assert lora["samples_per_s"] > 0
    assert lora["tokens_per_s"] == pytest.approx(lora["samples_per_s"] * tokens)
    assert lora["achieved_tflops"] == pytest.approx(lora["samples_per_s"] * flops / 1e12)
    assert lora["mfu"] == pytest.approx(lora["achieved_tflops"] / 0.1)
    assert lora["cuda_peak_bytes"] is None and lora["peak_rss_bytes"] > 100 * 2**20

    qlora = rows["aot-qlora-micro"]
    if qlora["status"] == "skipped":  # until `aot train --load-in-4bit` runs on CPU: aot's own refusal
        assert qlora["reason"].startswith("error: --load-in-4bit")
    else:
        assert qlora["status"] == "ok" and qlora["samples_per_s"] > 0

    trl = rows["trl-full"]
    if importlib.util.find_spec("trl") is None:
        assert (trl["status"], trl["reason"]) == ("skipped", "trl is not installed (the bench extra: "
                                                              "pip install -e '.[bench]')")
    else:
        assert trl["status"] == "ok" and trl["sort_set"] == 2 and trl["timed_steps"] == 2
        assert trl["mfu"] > 0 and trl["tokens_per_s"] > trl["samples_per_s"]

    assert json.loads((out / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "gpu_check.md").read_text()
    assert "| run | status | sort set | samples/s |" in table
    assert f"| aot-lora-global | ok | 4 | {lora['samples_per_s']:.2f} | {lora['tokens_per_s']:.0f} | - | - |" in table
    assert f"| {100 * lora['mfu']:.1f}% |" in table
    assert f"| aot-qlora-micro | {qlora['status']} | 2 |" in table
    assert (out / "logs" / "aot-lora-global.log").is_file()
