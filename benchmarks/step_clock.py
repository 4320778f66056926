"""One clock for both tools: the wall-clock time at the end of every optimizer step.

A global optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``)
fires after ``step()`` of any optimizer, whoever wraps it (HF Trainer, accelerate, a plain loop),
so TRL and `aot train` are timed by the same mechanism, with no cooperation from either. The time
between two step ends is everything one optimizer step costs: data loading and collation, the
forward and backward passes (both passes with ``--sort-scope global``), the loss, clipping, the
update and logging.

With ``$BENCH_PROFILE`` set to a file path, the same hook drives ``torch.profiler`` over the second
optimizer step only (the first one carries the warm-up) and writes its operator table there.
Profiling slows the step down, so profiled runs are not the timed ones.
"""

from __future__ import annotations

import json
import os
import time


class StepClock:
    """Records the wall clock (``perf_counter``) and the process's CPU time (``process_time``, all
    threads) after each optimizer step, after a CUDA sync on GPU. CPU seconds are what a step
    costs even when other processes share the cores; wall seconds are what the user waits."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.step_ends: list[float] = []
        self.step_cpu: list[float] = []
        self.profile_path = os.environ.get("BENCH_PROFILE")
        self.profiler = None

    def install(self) -> StepClock:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        cuda = torch.cuda.is_available()
        if self.profile_path:
            self.profiler = torch.profiler.profile(schedule=torch.profiler.schedule(wait=1, warmup=0, active=1),
                                                   with_stack=False)
            self.profiler.start()

        def hook(optimizer, args, kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.step_ends.append(time.perf_counter())
            self.step_cpu.append(time.process_time())
            if self.profiler is not None and len(self.step_ends) <= 2:
                self.profiler.step()
                if len(self.step_ends) == 2:
                    self._write_profile()

        register_optimizer_step_post_hook(hook)
        return self

    def _write_profile(self) -> None:
        self.profiler.stop()
        averages = self.profiler.key_averages()
        with open(self.profile_path, "w") as handle:
            handle.write("Operators by self time:\n")
            handle.write(averages.table(sort_by="self_cpu_time_total", row_limit=30) + "\n")
            handle.write("\nBy total time (includes callees: autograd Functions, backward nodes):\n")
            handle.write(averages.table(sort_by="cpu_time_total", row_limit=40) + "\n")
        self.profiler = None

    def dump(self, path: str, **extra) -> None:
        """Write the marks (wall seconds since the clock started, CPU seconds since the process
        started), the peak CUDA memory (allocated by tensors, and reserved by the caching
        allocator: what an OOM is about), the device's name and `extra` as JSON."""
        import torch

        cuda = torch.cuda.is_available()
        result = {
            "step_ends": [t - self.start for t in self.step_ends],
            "step_cpu": self.step_cpu,
            "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "cuda_peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "threads": torch.get_num_threads(),
            **extra,
        }
        with open(path, "w") as handle:
            json.dump(result, handle)
