"""The dominance suite: does the trained model's reward distribution dominate, quantile by quantile?

Scores are sequence log-likelihoods of the test split's completions (prompt masked, the training
tokenization), scaled by beta (the run's, or ``--beta``); implicit rewards are
``r = beta * log pi(y) / ref(y)``. Each comparison is measured by
:func:`aot_cli.eval.quantiles.dominance` (accuracy, violation fraction, violation area) and, with a
confidence level, by :func:`aot_cli.eval.stats.bootstrap` (first- and second-order violation ratios
with a one-sided almost-dominance test, and the bootstrap bands the plot draws):

- ``before`` / ``after``: the reference / the policy on its own. Paired data: its margins
  ``beta * log M(chosen) / M(rejected)`` against 0; unpaired: positive against negative
  ``beta * log M(y)``.
- ``implicit_rewards``: chosen (positive) rewards against rejected (negative) ones, the paper's
  Figure 1a and what unpaired AOT enforces; on paired data its accuracy is DPO's reward accuracy.
- ``margins`` (paired data): the policy's margins against the reference's, the paper's Figure 1b and
  what paired AOT enforces.

A LoRA run trained from the base is scored against the same weights with the adapter disabled (one
model in memory); a run with an init adapter, or a full run, loads its reference separately.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aot_cli.artifacts.kinds import DatasetArtifact, RunArtifact, artifact_kind
from aot_cli.artifacts.models import load_run, resolve_device
from aot_cli.artifacts.store import atomic_dir
from aot_cli.console import as_typed, info, progress
from aot_cli.data.dataset import load_prepared
from aot_cli.data.tokenize import TokenizeSettings, tokenize_split
from aot_cli.errors import UserError
from aot_cli.eval.config import DominanceConfig
from aot_cli.eval.dominance_plot import PlotLabels, plot
from aot_cli.eval.quantiles import dominance, quantile_levels
from aot_cli.eval.report import announce, write_eval
from aot_cli.eval.source import resolve_model, resolve_run
from aot_cli.eval.stats import BootstrapSettings, Inference, bootstrap, method_record
from aot_cli.train.batching import collate
from aot_cli.train.logprobs import model_sequence_logps

# Below this many examples per side the bootstrap's p-values and bands are noted as descriptive only.
SMALL_SAMPLE = 20


def _dataset(config: DominanceConfig, run: RunArtifact) -> Path:
    """--data, or the dataset the run trained on (its test split is held out)."""
    if config.data is not None:
        return Path(config.data)
    if run.dataset is None or artifact_kind(run.dataset) != "dataset":
        raise UserError(f"{run.path}: the run's dataset {run.dataset} is gone; pass --data DATASET "
                        "(a directory made by `aot prepare`)")
    info(f"scoring the test split of the run's dataset {as_typed(run.dataset)} (pass --data to choose another)")
    return run.dataset


def _test_split(path: Path, limit: int | None) -> tuple[Any, DatasetArtifact]:
    empty = UserError(f"{path}: the test split is empty; dominance scores held-out examples: prepare the data "
                      "again with a test split, e.g. `aot prepare ... --test-size 0.1`")
    try:
        artifact, data = load_prepared(path)
    except IndexError:  # datasets cannot load a split saved without any data file (0 rows)
        if not any((Path(path) / "test").glob("*.arrow")):
            raise empty from None
        raise
    test = data["test"]
    if test.num_rows == 0:
        raise empty
    return (test.select(range(min(limit, test.num_rows))) if limit else test), artifact


def sequence_logps(model: Any, sequences: list[tuple[list[int], int]], pad_id: int, batch_size: int,
                   label: str) -> np.ndarray:
    """Summed completion log-probs of (ids, prompt_len) rows, in batches, without full logits."""
    out = []
    with torch.no_grad(), progress(transient=True) as bar:
        task = bar.add_task(label, total=len(sequences))
        for start in range(0, len(sequences), batch_size):
            ids, mask, labels = collate(sequences[start:start + batch_size], pad_id)
            device = next(model.parameters()).device
            out.append(model_sequence_logps(model, ids.to(device), mask.to(device), labels.to(device)).cpu())
            bar.advance(task, len(ids))
    return torch.cat(out).double().numpy()


def samples(logps: dict[str, np.ndarray], *, paired: bool, beta: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (first, second) samples of each comparison of the module docstring (pure)."""
    if paired:
        d_ref = beta * (logps["ref_chosen"] - logps["ref_rejected"])
        d_pol = beta * (logps["policy_chosen"] - logps["policy_rejected"])
        r_c = beta * (logps["policy_chosen"] - logps["ref_chosen"])
        r_r = beta * (logps["policy_rejected"] - logps["ref_rejected"])
        zeros = np.zeros_like(d_ref)
        return {"before": (d_ref, zeros), "after": (d_pol, zeros), "implicit_rewards": (r_c, r_r),
                "margins": (d_pol, d_ref)}
    pos, neg = logps["label"], ~logps["label"]
    pol, ref = beta * logps["policy"], beta * logps["ref"]
    return {"before": (ref[pos], ref[neg]), "after": (pol[pos], pol[neg]),
            "implicit_rewards": (pol[pos] - ref[pos], pol[neg] - ref[neg])}


def compare(logps: dict[str, np.ndarray], *, paired: bool, beta: float, levels: np.ndarray,
            settings: BootstrapSettings) -> tuple[dict, dict[str, Inference]]:
    """(scores, bootstrap inference) of every comparison: accuracy, violation fraction and area, mean
    difference, and both orders' violation ratio and almost-dominance p-value (pure)."""
    scores, inference = {}, {}
    for name, (first, second) in samples(logps, paired=paired, beta=beta).items():
        inference[name] = bootstrap(first, second, paired=paired, levels=levels, settings=settings)
        scores[name] = {**dominance(first, second, paired=paired, levels=levels), **inference[name].scores()}
    return scores, inference


def small_sample_note(n: int | tuple[int, int]) -> dict:
    """A note when a side has fewer examples than the bootstrap needs to see beyond the sample."""
    smallest = min(n) if isinstance(n, tuple) else n
    if smallest >= SMALL_SAMPLE:
        return {}
    return {"small_sample": f"the bands and tests rest on {smallest} examples per side; under about "
                            f"{SMALL_SAMPLE} the bootstrap cannot see beyond the sample (a perfectly separated "
                            "sample gets the smallest p-value the resamples allow): read them as descriptive"}


def training_shift(logps: dict[str, np.ndarray], inference: dict[str, Inference], *, paired: bool, beta: float,
                   levels: np.ndarray, settings: BootstrapSettings) -> dict[str, Inference]:
    """After (the policy) against before (the reference) for each role the plot shows: the margins
    (paired; the ``margins`` comparison), or each class's log-likelihood (unpaired; both from the
    same examples, so resampled as pairs)."""
    if paired:
        return {"margin": inference["margins"]}
    pos, neg = logps["label"], ~logps["label"]
    pol, ref = beta * logps["policy"], beta * logps["ref"]
    return {"positive": bootstrap(pol[pos], ref[pos], paired=True, levels=levels, settings=settings),
            "negative": bootstrap(pol[neg], ref[neg], paired=True, levels=levels, settings=settings)}


def run(config: DominanceConfig) -> dict:
    """`aot eval dominance RUN`: score the held-out split, write logps.jsonl, dominance.png, results."""
    config.preflight()
    run_dir = resolve_run(config.model)
    data_path = _dataset(config, run_dir)
    device = resolve_device(config.device)
    source = resolve_model(config.model)
    with atomic_dir(config.output, overwrite=config.overwrite, inputs=config.input_paths() + [data_path]) as tmp:
        scores, settings, notes = evaluate(config, run_dir, data_path, device, tmp)
        results = write_eval(tmp, config, "dominance", source, scores, settings, notes)
    announce(results, Path(config.output), ("logps.jsonl", "dominance.png"))
    return results


def evaluate(config: DominanceConfig, run: RunArtifact, data_path: Path, device: str,
             out: Path) -> tuple[dict, dict, dict]:
    """Score the test split under policy and reference; write logps.jsonl and dominance.png.
    Returns (scores, settings, notes)."""
    test, dataset = _test_split(data_path, config.limit)
    paired = dataset.paired
    beta = config.beta if config.beta is not None else run.beta
    loaded = load_run(run, device=device)
    policy, tokenizer = loaded.policy, loaded.tokenizer
    settings = TokenizeSettings(max_length=run.config.get("max_length"),
                                max_prompt_length=run.config.get("max_prompt_length"))
    tokenized = tokenize_split(test, tokenizer, settings, paired=paired,
                               fingerprint=f"{dataset.fingerprint}:test" if not config.limit else None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sides = {"chosen": ("chosen_input_ids", "chosen_prompt_len"),
             "rejected": ("rejected_input_ids", "rejected_prompt_len")} if paired else {"": ("input_ids", "prompt_len")}
    seqs = {side: list(zip(tokenized[ids], tokenized[plen])) for side, (ids, plen) in sides.items()}

    logps: dict[str, np.ndarray] = {}
    for side, rows in seqs.items():
        logps["_".join(filter(None, ("policy", side)))] = sequence_logps(policy, rows, pad_id, config.batch_size,
                                                                         f"policy {side}".strip())
    with loaded.reference() as reference:
        for side, rows in seqs.items():
            logps["_".join(filter(None, ("ref", side)))] = sequence_logps(reference, rows, pad_id, config.batch_size,
                                                                          f"reference {side}".strip())
    if not paired:
        logps["label"] = np.asarray(tokenized["label"], dtype=bool)
        if logps["label"].all() or not logps["label"].any():
            raise UserError(f"{data_path}: the test split has only "
                            f"{'positive' if logps['label'].all() else 'negative'} examples; dominance needs both")

    levels = quantile_levels()
    boot = BootstrapSettings(resamples=config.bootstrap, confidence=config.confidence, epsilon=config.epsilon,
                             seed=config.seed)
    info(f"bootstrap: {boot.resamples} resamples (seed {boot.seed}) for the confidence bands and the dominance tests")
    scores, inference = compare(logps, paired=paired, beta=beta, levels=levels, settings=boot)
    with open(out / "logps.jsonl", "w", encoding="utf-8") as handle:
        for i in range(len(next(iter(logps.values())))):
            row = {k: (bool(v[i]) if v.dtype == bool else float(v[i])) for k, v in logps.items()}
            handle.write(json.dumps(row) + "\n")
    shift = training_shift(logps, inference, paired=paired, beta=beta, levels=levels, settings=boot)
    n = test.num_rows if paired else (int(logps["label"].sum()), int((~logps["label"]).sum()))
    plot(inference, shift, paired=paired, levels=levels, n=n, path=out / "dominance.png",
         labels=PlotLabels(run=config.model, data=as_typed(data_path), beta=beta, settings=boot))
    settings_record = {"data": str(data_path), "paired": paired, "n_test": test.num_rows, "beta": beta,
                       "quantile_levels": len(levels), "limit": config.limit, "batch_size": config.batch_size,
                       "device": device, "max_length": settings.max_length,
                       "max_prompt_length": settings.max_prompt_length, "chat_template": True,
                       "statistics": method_record(boot, paired=paired)}
    return scores, settings_record, small_sample_note(n)

