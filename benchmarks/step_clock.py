"""One clock for both tools: the wall-clock time at the end of every optimizer step.

A global optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``)
fires after ``step()`` of any optimizer, whoever wraps it (HF Trainer, accelerate, a plain loop),
so TRL and `aot train` are timed by the same mechanism, with no cooperation from either. The time
between two step ends is everything one optimizer step costs: data loading and collation, the
forward and backward passes (both passes with ``--sort-scope global``), the loss, clipping, the
update and logging.
"""

from __future__ import annotations

import json
import time


class StepClock:
    """Records ``time.perf_counter()`` after each optimizer step (after a CUDA sync on GPU)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.step_ends: list[float] = []

    def install(self) -> "StepClock":
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        cuda = torch.cuda.is_available()

        def hook(optimizer, args, kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.step_ends.append(time.perf_counter())

        register_optimizer_step_post_hook(hook)
        return self

    def dump(self, path: str, **extra) -> None:
        """Write the marks (seconds since the process started its clock) and `extra` as JSON."""
        import torch

        result = {
            "step_ends": [t - self.start for t in self.step_ends],
            "cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(),
            **extra,
        }
        with open(path, "w") as handle:
            json.dump(result, handle)
