"""The TRL side of the benchmark, run in its own process: ``python benchmarks/run_trl.py SPEC.json``.

Trains TRL's ``DPOTrainer(loss_type="aot")`` on the benchmark model and dataset with a
:class:`StepClock` installed and writes its marks to ``SPEC["result"]``. The parent measures the
process's peak RSS. TRL's defaults are kept (online reference model,
gradient checkpointing on, dropout off) except the dtype: bf16 autocast is TRL's default but
the CPU comparison runs both tools in fp32. Weights are loaded in fp32 either way, as TRL does when
it loads a model from a path; with ``"dtype": "bf16"`` the forward runs under bf16 autocast
(TRL's ``bf16=True``). ``SPEC["lora"]`` (``{"r": R, "alpha": A}``) trains LoRA adapters on every
linear layer but the head (TRL's reference is then the policy with its adapters disabled).
"""

from __future__ import annotations

import json
import sys

from step_clock import StepClock


def main(spec_path: str) -> None:
    clock = StepClock().install()
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    spec = json.loads(open(spec_path).read())
    if spec["dtype"] not in ("fp32", "bf16"):
        raise SystemExit(f"{spec_path}: dtype {spec['dtype']!r} is not fp32 or bf16")
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    args = DPOConfig(
        output_dir=spec["out"], loss_type=["aot"], beta=spec["beta"], learning_rate=spec["lr"],
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=spec["grad_accum"],
        max_steps=spec["steps"], max_length=spec["max_length"], seed=spec["seed"],
        bf16=spec["dtype"] == "bf16", gradient_checkpointing=spec["gradient_checkpointing"],
        precompute_ref_log_probs=spec["precompute_ref"], use_cpu=not torch.cuda.is_available(),
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )
    lora = spec.get("lora")
    peft_config = None if lora is None else LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=load_from_disk(spec["data"])["train"], processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    clock.dump(spec["result"])


if __name__ == "__main__":
    main(sys.argv[1])
