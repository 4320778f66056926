"""Why the global sort set matters, measured: with noisy labels, unpaired AOT that sorts the 16
samples of a step together learns a far larger held-out reward margin than sorting 2 at a time
(TRL's micro-batch scope with micro-batch 2), on the same data, steps and samples per step.

Also the source of the figure in docs/train.md:
``pytest tests/train/test_train_sort_set.py -m slow -s``.
"""

from __future__ import annotations

import pytest

from aot_cli.train import run
from aot_cli.train.config import Config as TrainConfig


@pytest.mark.slow
def test_global_sort_set_beats_micro_batch_sort_with_noisy_labels(tiny_model_dir, noisy_paired_data, tmp_path,
                                                                  held_out_log_ratios):
    data = noisy_paired_data
    results = {}
    for scope in ("micro", "global"):
        out = tmp_path / scope
        run.run(TrainConfig(model=str(tiny_model_dir), data=data, output=out, loss="aot_unpaired", beta=0.5,
                              sort_scope=scope, batch_size=2, grad_accum=8, lr=1e-3, warmup_ratio=0.0,
                              max_steps=48, max_length=64, max_prompt_length=32, save_steps=0))
        chosen, rejected = held_out_log_ratios(out, data)
        results[scope] = (chosen - rejected).mean().item(), (chosen > rejected).float().mean().item()
    print(f"\nheld-out reward margin / accuracy: sort 2 (micro) {results['micro'][0]:.2f} / "
          f"{results['micro'][1]:.2f}, sort 16 (global) {results['global'][0]:.2f} / {results['global'][1]:.2f}")
    assert results["global"][0] > 2 * results["micro"][0]
    assert results["global"][1] >= results["micro"][1]
