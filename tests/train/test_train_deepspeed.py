"""`aot train` under DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo), launched as a user would:
``accelerate launch --config_file`` with the shipped zero2 / zero3 configs (docs/distributed.md).

- Full fine-tuning: the global-sort update over both processes equals one process's update on the whole
  batch (reference log-probs precomputed by the DeepSpeed processes themselves; 2 micro-batches of
  mixed lengths per process, so the step runs two backward passes that DeepSpeed must accumulate, not
  step between); ``--max-grad-norm`` is set low enough to clip every step, so DeepSpeed's clipping is
  checked against aot's; the run exports (`aot merge`) to a plain model directory (ZeRO-3: weights
  gathered from the partitions).
- LoRA with AdamW: a checkpoint written under DeepSpeed (DeepSpeed's partitioned optimizer state beside
  aot's files) resumed by new processes gives the adapter of the uninterrupted run.
- A non-finite gradient: DeepSpeed skips the update and the loop stops with its one line.
- What aot refuses under DeepSpeed is refused in one line before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from aot_cli.errors import UserError
from aot_cli.train import loop, run, zero
from aot_cli.train.checkpoint import checkpoint_problem
from aot_cli.train.config import Config as TrainConfig

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (the `deepspeed` extra; make install)")

ARGS = dict(optim="sgd", lr=0.05, warmup_ratio=0.0, max_steps=2, grad_accum=2, max_length=64, max_prompt_length=32,
            max_grad_norm=0.02)


def _grad_norms(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["grad_norm"] for line in lines]


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir, tmp_path_factory, mixed_length_data):
    """The reference: one process, the whole global batch of 16 pairs as 2 micro-batches of 8."""
    out = tmp_path_factory.mktemp("deepspeed") / "one"
    run.run(TrainConfig(model=str(tiny_model_dir), data=mixed_length_data, output=out, batch_size=8,
                        lora=False, **ARGS))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config, extra", [("zero2", {}), ("zero3", {}),
                                           # ZeRO-3 re-gathers each layer for the recomputation too
                                           ("zero3", {"gradient_checkpointing": True})],
                         ids=["zero2", "zero3", "zero3-checkpointing"])
def test_zero_full_update_equals_one_process_and_exports(config, extra, tiny_model_dir, mixed_length_data,
                                                         one_process_run, tmp_path, accelerate_train,
                                                         same_update_and_export):
    two = tmp_path / "two"
    result = accelerate_train(config, tiny_model_dir, mixed_length_data, two, cache=tmp_path / "cache", batch_size=4,
                              lora=False, **ARGS, **extra)
    assert "sort set 16 (global scope)" in result.stderr
    assert "cache hit" not in result.stderr  # the reference log-probs computed under DeepSpeed too
    # DeepSpeed's notes are hidden in aot's processes (accelerate's launcher process still prints its own once)
    assert result.stdout.count("Setting accelerator to CPU") <= 1 and "untested optimizer" not in result.stdout

    # every step clipped, at the same norm as one process measures
    one_norms, two_norms = _grad_norms(one_process_run), _grad_norms(two)
    assert min(one_norms) > ARGS["max_grad_norm"]
    assert two_norms == pytest.approx(one_norms, rel=1e-4)

    same_update_and_export(tiny_model_dir, one_process_run, two, tmp_path / "merged")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_zero_checkpoint_resumes_like_an_uninterrupted_run(config, tiny_model_dir, paired_data, tmp_path,
                                                           accelerate_train):
    args = dict(ARGS, optim="adamw", lr=1e-3, max_grad_norm=1.0, max_steps=2, batch_size=4, save_steps=1)
    straight = tmp_path / "straight"
    accelerate_train(config, tiny_model_dir, paired_data, straight, **args)
    checkpoint = straight / "checkpoints" / "step-1"
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["deepspeed"] == {"zero_stage": int(config[-1]), "processes": 2}
    assert {"trainable.safetensors", "scheduler.pt", "rng-0.pt", "rng-1.pt"} <= set(state["files"])
    assert "optimizer.pt" not in state["files"]
    partitions = [name for name in state["files"] if name.startswith("deepspeed/") and "optim_states" in name]
    assert len(partitions) == 2  # one per process, each recorded (size, SHA-256) and checked on resume
    assert checkpoint_problem(checkpoint) is None

    resumed = tmp_path / "resumed"
    result = accelerate_train(config, tiny_model_dir, paired_data, resumed, resume=str(checkpoint), **args)
    assert "resuming from" in result.stderr
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and any(k.endswith("lora_B.weight") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.endswith("lora_B.weight"))

    # one process, the same global batch: DeepSpeed's partitions cannot be read without it; refused up front
    alone = tmp_path / "alone"
    stage = int(config[-1])
    with pytest.raises(UserError, match=rf"was made under DeepSpeed ZeRO-{stage} on 2 processes, this run is without "
                                        rf"DeepSpeed; .* resume with accelerate launch --config_file "
                                        rf"\"\$\(aot configs zero{stage}\)\" --num_processes 2 -m aot_cli train ...$"):
        run.run(TrainConfig(model=str(tiny_model_dir), data=paired_data, output=alone, resume=str(checkpoint),
                            **dict(args, batch_size=8)))
    assert not alone.exists()


def _under_deepspeed(stage: int, **deepspeed_config):
    plugin = SimpleNamespace(zero_stage=stage, deepspeed_config=deepspeed_config)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize("stage, deepspeed_config, message", [
    (1, {}, r"^the launch config asks for DeepSpeed ZeRO stage 1; aot train runs under stages 2 and 3: launch with "
            r"--config_file \"\$\(aot configs zero2\)\" \(or zero3\)$"),
    (3, {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
     r"^the launch config offloads DeepSpeed's optimizer to cpu: not run by aot train \(accelerate would replace "
     r"aot's optimizer by DeepSpeed's CPU Adam\); set offload_optimizer_device: none$"),
    (3, {"zero_optimization": {"offload_param": {"device": "nvme"}}}, r"offloads DeepSpeed's param to nvme"),
    (2, {"scheduler": {"type": "WarmupLR"}}, r"^the DeepSpeed config has its own 'scheduler' section: aot train builds "
                                              r"the scheduler from its flags \(--optim, --lr, --lr-scheduler\); remove "
                                              r"the section$"),
    (2, {"optimizer": {"type": "Adam"}}, r"its own 'optimizer' section"),
])
def test_launch_configs_aot_does_not_run_are_refused(stage, deepspeed_config, message, tmp_path):
    config = TrainConfig(model="m", data=tmp_path, output=tmp_path / "run")
    with pytest.raises(UserError, match=message):
        zero.check_settings(_under_deepspeed(stage, **deepspeed_config), config)


@pytest.mark.parametrize("stage, settings, message", [
    (2, dict(optim="paged_adamw_8bit"), r"^--optim paged_adamw_8bit under DeepSpeed is not run by aot train \(ZeRO "
                                        r"partitions the optimizer state already\); use --optim adamw$"),
    (2, dict(load_in_4bit=True), r"^--load-in-4bit does not run under DeepSpeed in aot train .* train QLoRA on one "
                                 r"process$"),
    (3, dict(graph_memory=0.5), r"^--graph-memory 0.5 under ZeRO-3: .* gave wrong gradients \(measured\); leave "
                                r"it at 0 \(every micro-batch but the last is replayed\)$"),
    (3, dict(lora=False, ref="online"), r"^--ref online under ZeRO-3 keeps a frozen copy of the starting model .* use "
                                        r"--ref precompute \(the default\)$"),
])
def test_settings_aot_does_not_run_under_deepspeed_are_refused(stage, settings, message, tmp_path):
    config = TrainConfig(model="m", data=tmp_path, output=tmp_path / "run", **settings)
    with pytest.raises(UserError, match=message):
        zero.check_settings(_under_deepspeed(stage), config)


def test_online_reference_of_a_lora_run_runs_under_zero3(tmp_path):
    """LoRA without an init adapter takes its reference from the policy itself: nothing is copied."""
    zero.check_settings(_under_deepspeed(3), TrainConfig(model="m", data=tmp_path, output=tmp_path / "r", ref="online"))


def test_a_deepspeed_launch_without_deepspeed_installed_is_one_line(monkeypatch, tiny_model_dir, paired_data,
                                                                    tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a zero config sets
    real_find_spec = zero.importlib.util.find_spec
    monkeypatch.setattr(zero.importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^this launch config asks for DeepSpeed, which is not installed: pip "
                                        r"install 'aot-cli\[deepspeed\]' \(or launch with the fsdp config: aot "
                                        r"configs fsdp\)$"):
        run.run(TrainConfig(model=str(tiny_model_dir), data=paired_data, output=out, **ARGS))
    assert not out.exists()


NON_FINITE_STEP = """
import json, sys
from types import SimpleNamespace
import torch, deepspeed
from aot_cli.train import zero
zero.use_gloo_collectives()
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
          "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config)
accelerator = SimpleNamespace(deepspeed_engine_wrapped=SimpleNamespace(engine=engine))
result = {}
for scale in (float(sys.argv[1]), 1.0):
    before = [p.detach().clone() for p in model.parameters()]
    zero.backward(accelerator, (engine(torch.ones(1, 4)) * scale).sum(), boundary=True)
    norm = zero.apply_update(accelerator)
    same = all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    result[str(scale)] = {"norm": norm, "changed": not same}
print(json.dumps(result))
"""


@pytest.mark.slow
def test_deepspeed_skips_a_non_finite_update_and_aot_sees_it(tmp_path):
    """A gradient of inf: DeepSpeed's step leaves the weights as they were and aot reads an infinite norm
    (the loop then stops with its one line); the next, finite step applies."""
    script = tmp_path / "step.py"
    script.write_text(NON_FINITE_STEP)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                             str(script), "inf"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    assert steps["inf"] == {"norm": float("inf"), "changed": False}
    assert math.isfinite(steps["1.0"]["norm"]) and steps["1.0"]["changed"]


def test_the_loop_stops_before_a_skipped_deepspeed_update(monkeypatch):
    state = SimpleNamespace(accelerator=_under_deepspeed(2), config=None)
    monkeypatch.setattr(zero, "apply_update", lambda accelerator: math.inf)
    monkeypatch.setattr(loop, "_kept", lambda state: "no good checkpoint was saved before it")
    with pytest.raises(UserError, match=r"^gradient norm is inf at step 4: stopped before applying it; no good "):
        loop.apply_update(state, 3, 0.5, [])
    monkeypatch.setattr(zero, "apply_update", lambda accelerator: pytest.fail("a NaN loss must stop before the step"))
    with pytest.raises(UserError, match=r"^loss is nan at step 4: stopped before applying it"):
        loop.apply_update(state, 3, math.nan, [])


@pytest.mark.parametrize("stage", [2, 3])
def test_aot_settings_replace_the_launch_configs(stage, tmp_path):
    """What aot writes into DeepSpeed's config before the engine is built (docs/distributed.md)."""
    launch = {"gradient_clipping": 0.0, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1,
              "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": stage}}
    accelerator = _under_deepspeed(stage, **launch)
    accelerator.num_processes = 4
    zero.configure(accelerator, TrainConfig(model="m", data=tmp_path, output=tmp_path / "r", batch_size=3,
                                            grad_accum=5, max_grad_norm=0.5))
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (15, 1, 60)  # one DeepSpeed micro-batch per process and step: aot marks its own backward passes
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save") is (True if stage == 3 else None)
    zero.configure(accelerator, TrainConfig(model="m", data=tmp_path, output=tmp_path / "r", max_grad_norm=0))
    assert ds["gradient_clipping"] == 0.0  # no clipping
