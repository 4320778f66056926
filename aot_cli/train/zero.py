"""What `aot train` does differently under DeepSpeed ZeRO (stages 2 and 3), launched with the shipped
zero2/zero3 accelerate configs (docs/distributed.md).

The global-sort step (:mod:`aot_cli.train.step`) runs one backward per micro-batch after the step's
sort, each already weighted so that their sum is the step's gradient. accelerate's DeepSpeed wrapper
would step the optimizer inside every ``backward`` and DeepSpeed would divide each backward by its
accumulation count; so aot drives the engine itself:

- every backward but the step's last is marked as inside the accumulation, the last as its boundary;
  none is rescaled (ZeRO-2/3 reduce each backward's gradients into their partitions as they come);
- one ``engine.step()`` per optimizer step clips (at ``--max-grad-norm``, written into DeepSpeed's
  config) and applies the update; aot's learning-rate schedule drives the same parameter groups;
- checkpoints keep DeepSpeed's own partitioned optimizer state (one file per process, so a resume
  needs the same number of processes and ZeRO stage) beside aot's whole trainable weights.

Like DDP and FSDP, DeepSpeed averages gradients over processes (the step undoes the mean). On CPUs the
processes talk over gloo, as under every other launcher: accelerate needs its gloo process group made
first (else each process believes it is alone), and DeepSpeed's shared-memory collective kernels,
compiled on first use (about four minutes on two cores, measured), are not used.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from aot_cli.errors import UserError
from aot_cli.train.model import reference_recipe

ENGINE_STATE = "deepspeed"  # the checkpoint's folder of DeepSpeed's own files (its recovery scripts included)
ENGINE_TAG = "engine"  # DeepSpeed's name for the checkpoint inside that folder
SHARED_MEMORY_OP = "deepspeed_shm_comm"


def under_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def stage(accelerator) -> int:
    """The ZeRO stage of a DeepSpeed run, 0 otherwise."""
    return int(accelerator.state.deepspeed_plugin.zero_stage) if under_deepspeed(accelerator) else 0


def check_installed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("this launch config asks for DeepSpeed, which is not installed: pip install "
                        "'aot-cli[deepspeed]' (or launch with the fsdp config: aot configs fsdp)")


def use_gloo_collectives() -> None:
    """CPU processes: DeepSpeed's collectives over gloo, without compiling its shared-memory kernels."""
    import deepspeed.ops  # the optional `deepspeed` extra: imported only under a DeepSpeed launch

    deepspeed.ops.__compatible_ops__[SHARED_MEMORY_OP] = False


def check_settings(accelerator, config) -> None:
    """What aot does not run under DeepSpeed, refused before anything is written."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if stage(accelerator) not in (2, 3):
        raise UserError(f"the launch config asks for DeepSpeed ZeRO stage {stage(accelerator)}; aot train runs under "
                        "stages 2 and 3: launch with --config_file \"$(aot configs zero2)\" (or zero3)")
    zero_config = ds.get("zero_optimization", {})
    why = {"offload_optimizer": " (accelerate would replace aot's optimizer by DeepSpeed's CPU Adam)",
           "offload_param": ""}
    for part, reason in why.items():
        device = (zero_config.get(part) or {}).get("device", "none")
        if device not in ("none", None):
            raise UserError(f"the launch config offloads DeepSpeed's {part.split('_')[1]} to {device}: not run by aot "
                            f"train{reason}; set {part}_device: none")
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise UserError(f"the DeepSpeed config has its own {section!r} section: aot train builds the {section} "
                            f"from its flags (--optim, --lr, --lr-scheduler); remove the section")
    if config.optim == "paged_adamw_8bit":
        raise UserError("--optim paged_adamw_8bit under DeepSpeed is not run by aot train (ZeRO partitions the "
                        "optimizer state already); use --optim adamw")
    if config.load_in_4bit:
        raise UserError("--load-in-4bit does not run under DeepSpeed in aot train (ZeRO partitions the weights "
                        "that bitsandbytes packs); train QLoRA on one process")
    if stage(accelerator) == 3 and config.graph_memory > 0:
        raise UserError(f"--graph-memory {config.graph_memory:g} under ZeRO-3: DeepSpeed gathers each layer again "
                        "for every backward, and first-pass graphs kept across later forwards gave wrong gradients "
                        "(measured); leave it at 0 (every micro-batch but the last is replayed)")
    copy = config.ref == "online" and not reference_recipe(config).reference_is_policy_without_adapter
    if stage(accelerator) == 3 and copy:
        raise UserError("--ref online under ZeRO-3 keeps a frozen copy of the starting model (--full or "
                        "--init-adapter), which would be whole on every process; use --ref precompute (the default)")


def configure(accelerator, config) -> None:
    """Write aot's settings into DeepSpeed's config before the engine is built: the rows per process
    and step (as one DeepSpeed micro-batch: aot runs and marks the step's backward passes itself, so
    DeepSpeed's own accumulation count stays 1), and clipping at ``--max-grad-norm`` (the launch
    config's own value is replaced: aot's flag decides, as on every launcher). DeepSpeed's own mixed
    precision stays off: it would cast the model to 16 bits, while aot's precision is the same under
    every launcher (trainable weights in fp32; a bf16 full fine-tuning computes under autocast;
    :mod:`aot_cli.train.model`)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.batch_size * config.grad_accum
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = config.batch_size * config.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = float(config.max_grad_norm) if config.max_grad_norm > 0 else 0.0
    ds["bf16"], ds["fp16"] = {"enabled": False}, {"enabled": False}
    ds["zero_allow_untested_optimizer"] = True  # aot's own optimizers (AdamW, SGD) run under ZeRO too
    if stage(accelerator) == 3:  # the final artifact gathers the whole weights (whole_state_dict)
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    ds.setdefault("steps_per_print", 10**9)  # aot prints progress; DeepSpeed's own lines would repeat it


def engine(accelerator):
    return accelerator.deepspeed_engine_wrapped.engine


def backward(accelerator, loss: torch.Tensor, *, boundary: bool) -> None:
    """One of the step's backward passes, accumulated as is; `boundary`: the step's last."""
    ds = engine(accelerator)
    ds.set_gradient_accumulation_boundary(boundary)
    ds.backward(loss, scale_wrt_gas=False)


def apply_update(accelerator) -> float:
    """Clip, step and zero the gradients (DeepSpeed does all three); returns the gradient norm before clipping."""
    ds = engine(accelerator)
    ds.step()
    norm = ds.get_global_grad_norm()
    norm = float(norm) if norm is not None else math.nan
    if not ds.was_step_applied():  # DeepSpeed found an inf/NaN gradient and skipped the update
        return math.inf if math.isfinite(norm) else norm
    return norm


def partitioned_weight_norm(accelerator, params: list) -> float:
    """ZeRO-3: the L2 norm of the trainable weights from each process's partition of each (summed over
    processes; a parameter's own storage is empty outside its module's forward and backward)."""
    squares = sum(torch.linalg.vector_norm(p.ds_tensor.detach(), dtype=torch.float32) ** 2 for p in params)
    total = accelerator.reduce(squares.reshape(1).to(accelerator.device), reduction="sum")
    return float(total.sqrt())


def gathered_trainable_weights(accelerator, model) -> dict[str, torch.Tensor]:
    """ZeRO-3: the whole trainable weights by name on the main process ({} on the others); every process
    must call it. Each weight is gathered from its partitions one at a time, so no process ever holds
    more than one whole weight beyond its partitions (the main process copies each to its CPU)."""
    import deepspeed  # the optional `deepspeed` extra: imported only under a DeepSpeed launch

    weights: dict[str, torch.Tensor] = {}
    for name, param in accelerator.unwrap_model(model).named_parameters():
        if param.requires_grad:
            with deepspeed.zero.GatheredParameters([param]):
                if accelerator.is_main_process:
                    weights[name] = param.detach().cpu().clone().contiguous()
    return weights


def whole_state_dict(accelerator, model, *, lora: bool) -> dict | None:
    """ZeRO-3: the weights of the final artifact on the main process: the LoRA adapter's
    (:func:`gathered_trainable_weights`; peft keeps them by name), or the whole model's, gathered layer by layer
    by accelerate. None for ZeRO-2, whose processes each hold the whole weights."""
    if stage(accelerator) < 3:
        return None
    return gathered_trainable_weights(accelerator, model) if lora else accelerator.get_state_dict(model)


def save_engine_state(model, checkpoint: Path) -> None:
    """Every process writes its partition of the optimizer state (and DeepSpeed its bookkeeping) into
    the checkpoint's ``deepspeed/`` folder."""
    model.save_checkpoint(str(checkpoint / ENGINE_STATE), tag=ENGINE_TAG, exclude_frozen_parameters=True,
                          save_latest=False)


def load_engine_state(model, checkpoint: Path) -> None:
    """DeepSpeed's trainable weights and optimizer partitions written by :func:`save_engine_state` (aot's
    scheduler and RNG states load separately)."""
    path, _ = model.load_checkpoint(str(checkpoint / ENGINE_STATE), tag=ENGINE_TAG, load_module_strict=False,
                                    load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise UserError(f"--resume {checkpoint}: DeepSpeed found no state of its own in {checkpoint / ENGINE_STATE}")
