"""Fixtures for merge and eval: training runs built by hand (per CONTRACTS.md), no `aot train` needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from aot_cli.artifacts import write_manifest

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "lm_eval_tasks"


def _run_manifest(run_dir: Path, base: Path, *, adapter: bool) -> None:
    config = {"model": str(base), "data": "unused", "loss": "aot", "beta": 0.1, "lora": adapter,
              "load_in_4bit": False}
    write_manifest(run_dir, kind="run", config=config,
                   summary={"base_model": str(base), "adapter": adapter, "init_adapter": None, "steps": 0})


@pytest.fixture(scope="session")
def lora_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA run: random (non-zero) adapter on every attention and MLP projection, saved with the
    tokenizer in run/adapter, and a run manifest. The adapter changes the logits, so a merge that
    drops it is visible."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path_factory.mktemp("lora-run")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.save_pretrained(run_dir / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run_dir / "adapter")
    _run_manifest(run_dir, tiny_model_dir, adapter=True)
    return run_dir


@pytest.fixture(scope="session")
def full_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A full fine-tuning run: the tiny model with perturbed weights in run/model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path_factory.mktemp("full-run")
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(run_dir / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run_dir / "model")
    _run_manifest(run_dir, tiny_model_dir, adapter=False)
    return run_dir


@pytest.fixture
def in_repo(monkeypatch) -> Path:
    """Run from the repository root: the test task YAMLs name their data files relative to it."""
    monkeypatch.chdir(REPO)
    return REPO

