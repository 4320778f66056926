"""`aot configs`: the shipped accelerate launch configs are package data, and the command finds them."""

from __future__ import annotations

from pathlib import Path

import yaml

from aot_cli.configs.show import accelerate_config
from aot_cli.vocab import ACCELERATE_CONFIGS


def test_configs_prints_the_path_of_one_config(aot):
    result = aot("configs", "fsdp")
    assert result.exit_code == 0, result
    path = Path(result.stdout.strip())
    assert path == accelerate_config("fsdp") and path.parts[-3:] == ("configs", "accelerate", "fsdp.yaml")
    fsdp = yaml.safe_load(path.read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["num_processes"] == 2
    assert {k: fsdp["fsdp_config"][k] for k in ("fsdp_version", "fsdp_reshard_after_forward", "fsdp_state_dict_type")} \
        == {"fsdp_version": 2, "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT"}


def test_configs_lists_every_shipped_config(aot):
    result = aot("configs")
    assert result.exit_code == 0, result
    expected = {"ddp": ("MULTI_GPU", None), "fsdp": ("FSDP", None), "zero2": ("DEEPSPEED", 2),
                "zero3": ("DEEPSPEED", 3)}
    assert set(ACCELERATE_CONFIGS) == set(expected)
    for name, (kind, stage) in expected.items():
        path = accelerate_config(name)
        assert str(path) in result.stdout
        config = yaml.safe_load(path.read_text())
        assert config["distributed_type"] == kind
        assert config.get("deepspeed_config", {}).get("zero_stage") == stage
        if stage:  # aot replaces it with --max-grad-norm; DeepSpeed's own default (1.0) must not show here
            assert config["deepspeed_config"]["gradient_clipping"] == 0.0


def test_configs_says_when_deepspeed_is_missing(aot, monkeypatch):
    """accelerate's launcher stops with an ImportError traceback on a zero config without DeepSpeed: the
    listing says so first."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    result = aot("configs")
    assert result.exit_code == 0, result
    notes = [line for line in result.stdout.splitlines() if "DeepSpeed is not installed here" in line]
    assert len(notes) == 2 and all(line.endswith("pip install 'aot-cli[deepspeed]'") for line in notes)
