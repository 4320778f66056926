"""`aot train`: check everything, then build the run and train (callable without the CLI:
``aot_cli.train.run.run(Config(...))``).

Order matters for the "nothing half-written" promise: every check that can fail on user input
(output directory, dataset kind vs loss, loss settings, model path, 4-bit, tracker package, chat
template, lengths, batch size vs data) runs before the output directory is created: the cheap ones
in :meth:`Config.preflight`, the ones that need the data or the model here. From then on the run
directory holds checkpoints and ``metrics.jsonl`` (no manifest: incomplete, so ``--resume auto``
continues it), under an exclusive lock; the adapter or model, the curves and ``manifest.json``
(last) are written when training ends.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import resource
import shlex
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, set_seed, str_to_bool
from torch.distributed.fsdp import FSDPModule
from transformers import get_scheduler

from aot_cli.artifacts.models import check_4bit
from aot_cli.artifacts.store import (describe_input, output_failure, output_lock,
                                     remove_stale_temporaries_in, write_manifest)
from aot_cli.config import to_dict
from aot_cli.console import info, progress, quiet_libraries, warn
from aot_cli.data.dataset import load_prepared
from aot_cli.data.tokenize import (TokenizeSettings, load_tokenizer, tokenize_split, tokenizer_fingerprint,
                                   truncation_counts)
from aot_cli.errors import UserError
from aot_cli.losses import preference_loss
from aot_cli.train import reference, zero
from aot_cli.train.batching import KLSide, StepSampler, make_sides
from aot_cli.train.checkpoint import (check_compatible, check_good, checkpoints, load_checkpoint,
                                      newest_good_checkpoint, read_state, sharded)
from aot_cli.train.config import Config
from aot_cli.train.loop import LoopState, train_loop
from aot_cli.train.metrics import CURVES, METRICS, MetricsLog, plot_curves, read_metrics
from aot_cli.train.model import build_policy, save_trained
from aot_cli.train.packing import resolve as padding_free
from aot_cli.vocab import AOT_LOSSES


def resume_point(config: Config, *, main: bool = True) -> Path | None:
    """The checkpoint to continue from, or None for a fresh run (the output was checked in preflight).

    ``--resume auto`` takes the newest good checkpoint, passing over damaged ones with a warning
    (only `main` warns); an explicitly named checkpoint that is damaged is refused."""
    if config.resume is None:
        return None
    if config.resume == "auto":
        def skipped(path: Path, problem: str) -> None:
            if main:
                warn(f"checkpoint {path} is damaged ({problem}); skipped for an older one")

        found = newest_good_checkpoint(Path(config.output), skipped)
        if found is None and checkpoints(Path(config.output)) and main:
            warn(f"no good checkpoint in {config.output}: training starts again from step 0")
        return found
    path = Path(config.resume)
    read_state(path)
    check_good(path)
    return path


def make_loss_fn(config: Config):
    """The preference loss on (policy A, policy B, reference A, reference B) log-prob vectors, and for
    KTO the (policy, reference) log-probs of the mismatched rows; checked once on dummy values so bad
    settings fail before any work."""
    def loss_fn(pa, pb, ra, rb, kl=None):
        return preference_loss(config.loss, pa, pb, ra, rb, beta=config.beta, surrogate=config.surrogate,
                               label_smoothing=config.label_smoothing, sort=config.sort,
                               soft_sort_eps=config.soft_sort_eps, dominance=config.dominance, kl=kl,
                               desirable_weight=config.desirable_weight,
                               undesirable_weight=config.undesirable_weight)

    dummy = [torch.zeros(2) for _ in range(4)]
    try:
        loss_fn(*dummy, *([(torch.zeros(2), torch.zeros(2))] if config.loss == "kto" else []))
    except ValueError as exc:
        raise UserError(f"loss settings: {exc}") from None
    return loss_fn


def check_machine(config: Config, *, main: bool = True) -> None:
    """Settings that depend on what is installed here (every rank checks; only `main` warns)."""
    if config.load_in_4bit:
        check_4bit()
    if config.optim == "paged_adamw_8bit":
        try:
            check_4bit()
        except UserError as exc:
            raise UserError(str(exc).replace("--load-in-4bit", "--optim paged_adamw_8bit")) from None
        if main and not torch.cuda.is_available():
            warn("--optim paged_adamw_8bit on the CPU: bitsandbytes pages optimizer state only on a GPU, so the "
                 "8-bit AdamW state stays in ordinary memory (tensors under 4096 elements keep 32-bit state)")
    if main and config.sort_scope == "global" and config.lora and config.lora_dropout > 0:
        warn(f"--lora-dropout {config.lora_dropout} with --sort-scope global: the sort set's rewards include "
             "dropout noise (the gradient stays exact: both passes replay the same dropout masks)")


def check_lengths(tokenized, config: Config, paired: bool, *, main: bool = True) -> None:
    """Error when --max-length leaves no room after any prompt; report truncated rows (only `main`
    reports, so several processes print it once)."""
    counts = truncation_counts(tokenized)
    if config.max_length is not None:
        prompt_lens = np.asarray(tokenized["chosen_prompt_len" if paired else "prompt_len"])
        full = int((prompt_lens >= config.max_length - 1).sum())
        if full == len(prompt_lens):
            raise UserError(f"--max-length {config.max_length} is shorter than every prompt: all {full} training "
                            "rows keep at most one completion token; raise --max-length or lower "
                            "--max-prompt-length")
        if full and main:
            warn(f"{full} of {len(prompt_lens)} training rows: the prompt fills --max-length {config.max_length}, "
                 "leaving one completion token")
    if counts["any"] and main:
        info(f"truncated {counts['any']} of {counts['rows']} training rows (prompt: {counts['prompt']}, "
             f"completion: {counts['completion']}); see `aot inspect` for lengths")


def check_sampler(sampler: StepSampler, config: Config, *, paired: bool, processes: int) -> None:
    """Refuse a global batch the data or the loss cannot use, naming the numbers and the fix."""
    batch = (f"global batch {sampler.global_batch} (--batch-size {config.batch_size} x --grad-accum "
             f"{config.grad_accum} x {processes} process(es))")
    if not paired and 0 in (sampler.n_a, sampler.n_b):
        missing = "positives (label true)" if sampler.n_a == 0 else "negatives (label false)"
        raise UserError(f"{config.data}: the training split has no {missing}; --loss {config.loss} on unpaired data "
                        "needs both")
    if sampler.steps_per_epoch == 0:
        have = f"{sampler.n_a} pairs" if paired else f"{sampler.n_a} positives and {sampler.n_b} negatives"
        per_step = "" if paired else f" = {sampler.rows_per_step} samples per step"
        raise UserError(f"{batch}{per_step} is larger than the training data ({have}); lower --batch-size or "
                        "--grad-accum")
    fewest = sampler.fewest
    if not paired and min(fewest) < 1:
        raise UserError(f"{batch}: {sampler.rows_per_step} samples per step at a positive fraction of "
                        f"{float(sampler.fraction):.4g} leave some steps with {fewest[0]} positives and {fewest[1]} "
                        "negatives; every step needs both: raise --batch-size or --grad-accum, or set "
                        "--positive-fraction")
    micro_batches = config.grad_accum * processes
    if not paired and config.sort_scope == "micro" and config.loss in AOT_LOSSES and min(fewest) < micro_batches:
        side = "positives" if fewest[0] < fewest[1] else "negatives"
        raise UserError(f"--sort-scope micro sorts each of the {micro_batches} micro-batches of a step on its own, "
                        f"and some steps hold only {min(fewest)} {side}: raise --batch-size, or use --sort-scope "
                        "global, or set --positive-fraction")
    if config.loss == "kto" and paired and sampler.global_batch < 2:
        raise UserError(f"{batch}: --loss kto on paired data needs at least 2 pairs per step, else its KL estimate "
                        "would pair a prompt with its own answers; raise --batch-size or --grad-accum")


def make_optimizer(config: Config, params: list):
    if config.optim == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optim == "paged_adamw_8bit":
        import bitsandbytes as bnb  # the optional `qlora` extra, checked by check_machine

        # check_machine said it in plain words (once, on the main process); bitsandbytes would repeat it
        # at the first step of every process.
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU", category=UserWarning)
        return bnb.optim.PagedAdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    # One fused kernel over all tensors (CPU since torch 2.4, and CUDA) instead of a loop of small ops per
    # tensor: the same update to float rounding, 6% of a CPU step less (docs/performance.md).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


# glibc's mmap threshold: freed blocks above it go back to the system at once; 8 MiB keeps small tensors on
# the fast heap while activations and logit blocks stop piling up as heap slack (docs/performance.md).
M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 8 * 2**20


def return_large_blocks() -> bool:
    """Ask glibc to serve and free blocks over 8 MiB with mmap, so the peak RSS of training is what
    its tensors need rather than that plus the heap's slack; True when set (glibc only, else a no-op).
    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins: the user chose."""
    if platform.system() != "Linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc without the glibc name
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def make_scheduler(config: Config, optimizer, total_steps: int):
    """transformers' schedule with ``floor(warmup_ratio * steps)`` warmup steps from 0; our ``constant``
    keeps the warmup (transformers' ``constant_with_warmup``)."""
    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def prepare_output(config: Config, accelerator) -> Path:
    """Create (or clear) the run directory; everything above must already have been checked."""
    out = Path(config.output)
    if accelerator.is_main_process:
        if out.exists() and config.overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries_in(out / "checkpoints")  # checkpoints half-written by a killed run
    accelerator.wait_for_everyone()
    return out


def reference_logps(config, policy, sides, *, key: str, names: tuple[str, ...], pad_id: int, at_start: bool,
                    accelerator, packed: bool, what: str = "Reference log-probs") -> list:
    """Precomputed reference log-probs of `sides` (saved under `names`), from the cache when the key matches."""
    cached = reference.load_cached(key, names)
    if cached is not None:
        if accelerator.is_main_process:
            info(f"{what.lower()}: cache hit ({reference.cache_path(key).name})")
        return cached
    total = sum(len(side) for side in sides)
    with progress(transient=True) as bar, reference.reference_model(policy, config, at_start=at_start) as model:
        task = bar.add_task(what, total=total, visible=accelerator.is_local_main_process)
        values = reference.precompute(model, sides, pad_id=pad_id, batch_rows=2 * config.batch_size,
                                      chunk_size=config.logps_chunk_size, accelerator=accelerator,
                                      on_batch=lambda n: bar.advance(task, n),
                                      padding_free=packed)
    if accelerator.is_main_process:
        reference.save_cached(key, dict(zip(names, values)))
    accelerator.wait_for_everyone()
    return values


def kl_reference_logps(setup: Setup, policy, *, key: str, pad_id: int, start_step: int,
                       packed: bool) -> dict[int, torch.Tensor]:
    """KTO: the reference log-probs of the mismatched rows of every epoch from `start_step` to the end
    (epoch -> :class:`KLSide` values), each epoch cached on its own."""
    config, sampler = setup.config, setup.sampler
    first, last = sampler.locate(start_step)[0], sampler.locate(setup.total_steps - 1)[0]
    tables = {}
    for epoch in range(first, last + 1):
        side = KLSide(setup.sides, sampler, epoch, config.max_length)
        (tables[epoch],) = reference_logps(
            config, policy, [side], key=reference.kl_cache_key(key, sampler, max_length=config.max_length, epoch=epoch),
            names=("kl",), pad_id=pad_id, at_start=setup.resume_from is None, accelerator=setup.accelerator,
            packed=packed, what=f"Reference log-probs of KTO's mismatched rows, epoch {epoch + 1}")
    return tables


def peak_memory_bytes() -> int:
    """Peak CUDA memory allocated on GPU; on CPU the process's peak RSS (what the machine had to hold)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Setup:
    """Everything checked and loaded before the run directory is created."""

    config: Config
    accelerator: Any
    started: float
    resume_from: Path | None
    loss_fn: Any
    tokenizer: Any
    sides: tuple
    sampler: Any
    total_steps: int
    global_batch: int
    data_fp: str
    paired: bool
    policy: Any

    def say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            info(message)

    @property
    def fixed(self) -> dict:
        """Settings a resumed run must share with its checkpoint."""
        c = self.config
        return {"seed": c.seed, "global_batch": self.global_batch, "positive_fraction": c.positive_fraction,
                "loss": c.loss, "data_fingerprint": self.data_fp,
                "lora": c.lora, "model": c.model, "load_in_4bit": c.load_in_4bit, "dtype": c.dtype,
                "max_length": c.max_length,
                "max_prompt_length": c.max_prompt_length,
                "chat_template": str(c.chat_template) if c.chat_template else None,
                # an FSDP checkpoint's optimizer state is keyed by parameter name, another's by position
                "fsdp": sharded(self.accelerator),
                # DeepSpeed's optimizer state is one partition per process
                "deepspeed": ({"zero_stage": zero.stage(self.accelerator), "processes": self.accelerator.num_processes}
                              if zero.under_deepspeed(self.accelerator) else None)}


def run(config: Config) -> dict:
    """Train per `config`; returns the run manifest's summary."""
    config.preflight()
    return_large_blocks()
    setup = validate_and_load(with_absolute_paths(config))
    lock = output_lock(Path(config.output)) if setup.accelerator.is_main_process else nullcontext()
    with lock:
        out = prepare_output(config, setup.accelerator)
        try:
            return run_training(setup, out)
        except KeyboardInterrupt:
            setup.say(f"interrupted; {out} keeps the checkpoints written so far (continue with --resume auto)")
            raise SystemExit(130) from None
        except OSError as exc:  # a full disk while writing a checkpoint, the metrics or the result
            error = output_failure(exc, out)
            if error is None:
                raise
            raise UserError(f"{error}; {out} keeps the good checkpoints written so far: make room, then continue "
                            f"with --resume auto") from None


def with_absolute_paths(config: Config) -> Config:
    """Local inputs as absolute paths, so the run manifest still points at the base model (and data,
    adapter, template) when `aot merge` / `aot eval` run from another directory. Hub ids stay as given."""
    def absolute(value):
        return type(value)(Path(value).resolve()) if value is not None and Path(value).exists() else value

    return dataclasses.replace(config, model=absolute(config.model), data=absolute(config.data),
                               init_adapter=absolute(config.init_adapter),
                               chat_template=absolute(config.chat_template))


def launched_with(name: str) -> bool:
    """Whether `accelerate launch` was given a config of this kind (it says so in ACCELERATE_USE_<NAME>)."""
    return str_to_bool(os.environ.get(f"ACCELERATE_USE_{name}", "false")) == 1


def make_accelerator() -> Accelerator:
    """The accelerator for how the processes were launched (docs/distributed.md).

    On GPUs accelerate reads the launch config itself. Several processes without CUDA (torchrun or
    ``accelerate launch`` on CPU) need corrections, all measured with accelerate 1.15: its cpu mode is
    what gives them a gloo process group (else each process believes it is alone and trains the same
    rows), and that mode never selects FSDP (an FSDP config silently gives DDP). So under an FSDP
    config the state is switched to FSDP with the plugin read from the launch config, before anything
    is prepared; the process-wide state and the accelerator's copy of it both, since a later
    ``AcceleratorState()`` copies the former again. Under a DeepSpeed config the cpu mode would turn
    DeepSpeed off: the gloo process group is made first instead (:mod:`aot_cli.train.zero`).
    """
    several_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched_with("DEEPSPEED"):
        zero.check_installed()
        if not torch.cuda.is_available():
            zero.use_gloo_collectives()
            if several_cpu:
                PartialState(backend="gloo")
        return Accelerator()
    if not several_cpu:
        return Accelerator()
    if not launched_with("FSDP"):
        return Accelerator(cpu=True)
    plugin = FullyShardedDataParallelPlugin()
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
    PartialState().distributed_type = DistributedType.FSDP
    state = AcceleratorState()
    state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, plugin
    return accelerator


def validate_and_load(config: Config) -> Setup:
    """Every check that can fail on user input, and the loading it needs; writes nothing but caches."""
    started = time.time()
    quiet_libraries()
    accelerator = make_accelerator()
    if zero.under_deepspeed(accelerator):
        zero.check_settings(accelerator, config)
    resume_from = resume_point(config, main=accelerator.is_main_process)
    check_machine(config, main=accelerator.is_main_process)
    loss_fn = make_loss_fn(config)
    dataset, data = load_prepared(config.data)
    paired, data_fp = dataset.paired, dataset.fingerprint
    tokenizer = load_tokenizer(config.model, config.chat_template)
    settings = TokenizeSettings(config.max_length, config.max_prompt_length)
    with accelerator.main_process_first():
        tokenized = tokenize_split(data["train"], tokenizer, settings, paired=paired, fingerprint=f"{data_fp}:train")
    check_lengths(tokenized, config, paired, main=accelerator.is_main_process)
    sides = make_sides(tokenized, paired=paired)
    global_batch = config.batch_size * config.grad_accum * accelerator.num_processes
    sampler = StepSampler(len(sides[0]), len(sides[1]), global_batch, config.seed, paired=paired,
                          positive_fraction=config.positive_fraction)
    check_sampler(sampler, config, paired=paired, processes=accelerator.num_processes)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * sampler.steps_per_epoch))
    setup = Setup(config, accelerator, started, resume_from, loss_fn, tokenizer, sides, sampler, total_steps,
                  global_batch, data_fp, paired, policy=None)
    if resume_from is not None:
        check_compatible(read_state(resume_from), setup.fixed, resume_from)
    set_seed(config.seed)
    setup.policy = build_policy(config)
    return setup


def prepare_model(accelerator, config: Config, model) -> tuple[Any, torch.optim.Optimizer]:
    """The prepared model and its optimizer. FSDP2 replaces the parameters by their shards and accelerate
    points the optimizer at them, so both are prepared together; the loop and the checkpoints keep the
    plain torch optimizer inside accelerate's wrapper. DeepSpeed wraps the optimizer in its ZeRO
    optimizer, which updates through the plain one's parameter groups: the learning-rate schedule
    keeps driving the plain one."""
    deepspeed = zero.under_deepspeed(accelerator)
    if deepspeed:
        zero.configure(accelerator, config)
    if sharded(accelerator) or deepspeed:
        optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
        model, wrapped = accelerator.prepare(model, optimizer)
        return model, optimizer if deepspeed else wrapped.optimizer
    model = accelerator.prepare(model)
    return model, make_optimizer(config, [p for p in model.parameters() if p.requires_grad])


def reshard(model) -> None:
    """FSDP: put every unit of `model` back in its shards. A forward without a backward (the reference
    log-probs) leaves the units that accelerate keeps gathered after their forward (the final norm and
    the head) whole, and their parameters are then the whole tensors, not the shards the optimizer
    updates; the loop's clipping and weight norm must see the shards."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def run_training(setup: Setup, out: Path) -> dict:
    """Reference log-probs, optimizer, optional resume, the loop, then the final artifact."""
    config, accelerator = setup.config, setup.accelerator
    policy, optimizer = prepare_model(accelerator, config, setup.policy)
    unwrapped = accelerator.unwrap_model(policy)
    pad_id = setup.tokenizer.pad_token_id
    ref, kl_ref, online_ref, key = None, None, None, None
    start_step = read_state(setup.resume_from)["step"] if setup.resume_from is not None else 0
    packed = padding_free(config.padding_free, unwrapped)  # decided once: the reference and every step follow it
    if config.ref == "precompute":
        key = reference.cache_key(config, data_fingerprint=f"{setup.data_fp}:train",
                                  tokenizer_fingerprint=tokenizer_fingerprint(setup.tokenizer),
                                  settings={"max_length": config.max_length,
                                            "max_prompt_length": config.max_prompt_length,
                                            # packed values match padded ones to rounding; keys made padded stay valid
                                            **({"padding_free": True} if packed else {})})
        ref = reference_logps(config, unwrapped, setup.sides, key=key, names=("a", "b"), pad_id=pad_id,
                              at_start=setup.resume_from is None, accelerator=accelerator, packed=packed)
        if config.loss == "kto":
            kl_ref = kl_reference_logps(setup, unwrapped, key=key, pad_id=pad_id, start_step=start_step,
                                        packed=packed)
    else:
        online_ref = reference.OnlineReference(unwrapped, config, config.logps_chunk_size)
    if sharded(accelerator):
        reshard(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    scheduler = make_scheduler(config, optimizer, setup.total_steps)
    weight_norm_start = None
    if setup.resume_from is not None:
        start_step = load_checkpoint(setup.resume_from, model=policy, optimizer=optimizer, scheduler=scheduler,
                                     accelerator=accelerator)
        weight_norm_start = read_state(setup.resume_from)["weight_norm_start"]
        setup.say(f"resuming from {setup.resume_from} (step {start_step} of {setup.total_steps})")
    n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3: the whole size, not the partition
    sort_set = setup.global_batch if config.sort_scope == "global" else config.batch_size
    setup.say(f"training {'LoRA adapters' if config.lora else 'all weights'} ({n_trainable:,} parameters), "
              f"{setup.total_steps} steps, sort set {sort_set} ({config.sort_scope} scope), "
              f"loss {config.loss}")
    if zero.stage(accelerator) == 3:
        setup.say("ZeRO-3: log-probs come from the model's full logits (the chunked head needs the head's weight "
                  "outside its call; --logps-chunk-size has no effect)")
    if not setup.paired:
        sampler = setup.sampler
        least, most = sampler.fewest[0], sampler.rows_per_step - sampler.fewest[1]
        setup.say(f"each step draws {sampler.rows_per_step} samples: {least if least == most else f'{least}-{most}'} "
                  f"positives (fraction {float(sampler.fraction):.4g}), the rest negatives; "
                  f"{sampler.steps_per_epoch} steps per epoch")
    state = LoopState(config=config, accelerator=accelerator, model=policy, optimizer=optimizer,
                      scheduler=scheduler, loss_fn=setup.loss_fn, sides=setup.sides, sampler=setup.sampler,
                      pad_id=pad_id, out=out, total_steps=setup.total_steps, start_step=start_step, ref=ref,
                      kl_ref=kl_ref, online_ref=online_ref, checkpoint_state=setup.fixed,
                      weight_norm_start=weight_norm_start, padding_free=packed)
    metrics = None
    if accelerator.is_main_process:
        metrics = MetricsLog(out, resume_step=start_step, tracker=config.report_to, config=to_dict(config))
    try:
        train_loop(state, metrics)
    finally:
        if metrics is not None:
            metrics.close()
    # FSDP and ZeRO-3: every process sends its shards, the main process writes the whole weights.
    state_dict = (accelerator.get_state_dict(policy) if sharded(accelerator)
                  else zero.whole_state_dict(accelerator, policy, lora=config.lora))
    summary = {}
    if accelerator.is_main_process:
        summary = finish(setup, out, unwrapped, n_trainable=n_trainable, reference_key=key, state_dict=state_dict)
    accelerator.wait_for_everyone()
    return summary


def finish(setup: Setup, out: Path, model, *, n_trainable: int, reference_key: str | None,
           state_dict: dict | None = None) -> dict:
    """The final artifact: weights + tokenizer, curves, then the manifest (last). `state_dict`: the
    model's whole weights when it is sharded (FSDP), else None (the model's own)."""
    config = setup.config
    save_trained(model, setup.tokenizer, out / ("adapter" if config.lora else "model"), state_dict=state_dict)
    records = read_metrics(out)
    if records:
        plot_curves(records, out / CURVES)
    final = records[-1] if records else {}
    summary = {
        "base_model": config.model, "adapter": config.lora,
        "init_adapter": str(config.init_adapter) if config.init_adapter else None,
        "dataset_fingerprint": setup.data_fp, "paired_data": setup.paired, "steps": setup.total_steps,
        "global_batch": setup.global_batch, "sort_scope": config.sort_scope,
        "processes": setup.accelerator.num_processes, "trainable_parameters": n_trainable,
        "reference": {"mode": config.ref, "cache_key": reference_key},
        "final": {k: v for k, v in final.items() if k not in ("step", "elapsed_s")},
        "wall_time_s": round(time.time() - setup.started, 2), "peak_memory_bytes": peak_memory_bytes(),
    }
    inputs = [describe_input(config.data),
              {"path": config.model, "fingerprint": reference.model_fingerprint(config.model)}]
    if config.init_adapter:
        inputs.append(describe_input(config.init_adapter))
    write_manifest(out, kind="run", config=to_dict(config), inputs=inputs, summary=summary)
    weights = "adapter/ (the LoRA adapter and tokenizer)" if config.lora else "model/ (the trained model and tokenizer)"
    written = [weights] + [name for name in (CURVES, METRICS, "tensorboard/", "checkpoints/")
                           if (out / name.rstrip("/")).exists()]
    setup.say(f"wrote {out}: {', '.join(written)}")
    run_dir = shlex.quote(str(out))
    setup.say(f"next: aot merge {run_dir} -o MODEL_DIR (a plain model for lm-eval or vLLM); "
              f"aot eval dominance {run_dir} -o EVAL_DIR (held-out reward quantiles)")
    return summary
