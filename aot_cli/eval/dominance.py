"""The dominance suite: does the trained model's reward distribution dominate, quantile by quantile?

Scores are sequence log-likelihoods of the test split's completions (prompt masked, the training
tokenization), scaled by beta (the run's, or ``--beta``); implicit rewards are
``r = beta * log pi(y) / ref(y)``. Each comparison is measured by
:func:`aot_cli.eval.quantiles.dominance` (accuracy, violation fraction, violation area):

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
from matplotlib.figure import Figure

from aot_cli.artifacts.kinds import DatasetArtifact, RunArtifact, artifact_kind
from aot_cli.artifacts.models import load_run, resolve_device
from aot_cli.artifacts.store import atomic_dir
from aot_cli.console import info, progress
from aot_cli.data.dataset import load_prepared
from aot_cli.data.tokenize import TokenizeSettings, tokenize_split
from aot_cli.errors import UserError
from aot_cli.eval.config import DominanceConfig
from aot_cli.eval.quantiles import dominance, quantile_curve, quantile_levels
from aot_cli.eval.report import announce, write_eval
from aot_cli.eval.source import resolve_model
from aot_cli.train.batching import collate
from aot_cli.train.logprobs import model_sequence_logps


def _run(spec: str) -> RunArtifact:
    """MODEL as a run; a merged model names the run it came from in the error."""
    source = resolve_model(spec)
    if source.run is not None:
        return source.run
    hint = f" (this model was merged from {source.merged_from}: pass that)" if source.merged_from else ""
    raise UserError(f"{spec}: `aot eval dominance` needs a run directory made by `aot train` "
                    f"(its manifest names the reference model){hint}")


def _dataset(config: DominanceConfig, run: RunArtifact) -> Path:
    """--data, or the dataset the run trained on (its test split is held out)."""
    if config.data is not None:
        return Path(config.data)
    if run.dataset is None or artifact_kind(run.dataset) != "dataset":
        raise UserError(f"{run.path}: the run's dataset {run.dataset} is gone; pass --data DATASET "
                        "(a directory made by `aot prepare`)")
    info(f"scoring the test split of the run's dataset {run.dataset} (pass --data to choose another)")
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


def compare(logps: dict[str, np.ndarray], *, paired: bool, beta: float, levels: np.ndarray) -> dict:
    """The comparisons of the module docstring from per-example log-probs (pure)."""
    if paired:
        d_ref = beta * (logps["ref_chosen"] - logps["ref_rejected"])
        d_pol = beta * (logps["policy_chosen"] - logps["policy_rejected"])
        r_c = beta * (logps["policy_chosen"] - logps["ref_chosen"])
        r_r = beta * (logps["policy_rejected"] - logps["ref_rejected"])
        zeros = np.zeros_like(d_ref)
        return {"before": dominance(d_ref, zeros, paired=True, levels=levels),
                "after": dominance(d_pol, zeros, paired=True, levels=levels),
                "implicit_rewards": dominance(r_c, r_r, paired=True, levels=levels),
                "margins": dominance(d_pol, d_ref, paired=True, levels=levels)}
    pos, neg = logps["label"], ~logps["label"]
    pol, ref = beta * logps["policy"], beta * logps["ref"]
    return {"before": dominance(ref[pos], ref[neg], paired=False, levels=levels),
            "after": dominance(pol[pos], pol[neg], paired=False, levels=levels),
            "implicit_rewards": dominance(pol[pos] - ref[pos], pol[neg] - ref[neg], paired=False, levels=levels)}


def plot(logps: dict[str, np.ndarray], *, paired: bool, beta: float, levels: np.ndarray, path: Path) -> None:
    """Quantile curves: before/after (left), implicit rewards with the violations shaded (right)."""
    def q(values: np.ndarray) -> np.ndarray:
        return quantile_curve(values, levels)

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    if paired:
        left.plot(levels, q(beta * (logps["ref_chosen"] - logps["ref_rejected"])), "--", color="gray",
                  label="reference margin (before)")
        left.plot(levels, q(beta * (logps["policy_chosen"] - logps["policy_rejected"])), color="C0",
                  label="policy margin (after)")
        left.axhline(0, color="black", lw=0.8)
        left.set_title("margins: beta * log M(chosen) / M(rejected)")
        pos = beta * (logps["policy_chosen"] - logps["ref_chosen"])
        neg = beta * (logps["policy_rejected"] - logps["ref_rejected"])
        names = ("chosen rewards", "rejected rewards")
    else:
        is_pos = logps["label"]
        for key, style, when in (("ref", "--", "before"), ("policy", "-", "after")):
            left.plot(levels, q(beta * logps[key][is_pos]), style, color="C2", label=f"positive ({when})")
            left.plot(levels, q(beta * logps[key][~is_pos]), style, color="C3", label=f"negative ({when})")
        left.set_title("beta * log-likelihood")
        r = beta * (logps["policy"] - logps["ref"])
        pos, neg, names = r[is_pos], r[~is_pos], ("positive rewards", "negative rewards")
    pos_curve, neg_curve = q(pos), q(neg)
    right.plot(levels, pos_curve, color="C0", label=names[0])
    right.plot(levels, neg_curve, color="C1", label=names[1])
    right.fill_between(levels, pos_curve, neg_curve, where=pos_curve < neg_curve, color="red", alpha=0.3,
                       label="violation")
    right.set_title("implicit rewards beta * log pi / ref")
    for ax in (left, right):
        ax.set_xlabel("quantile level")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(config: DominanceConfig) -> dict:
    """`aot eval dominance RUN`: score the held-out split, write logps.jsonl, dominance.png, results."""
    config.preflight()
    run_dir = _run(config.model)
    data_path = _dataset(config, run_dir)
    device = resolve_device(config.device)
    source = resolve_model(config.model)
    with atomic_dir(config.output, overwrite=config.overwrite, inputs=config.input_paths() + [data_path]) as tmp:
        scores, settings = evaluate(config, run_dir, data_path, device, tmp)
        results = write_eval(tmp, config, "dominance", source, scores, settings)
    announce(results, Path(config.output), ("logps.jsonl", "dominance.png"))
    return results


def evaluate(config: DominanceConfig, run: RunArtifact, data_path: Path, device: str, out: Path) -> tuple[dict, dict]:
    """Score the test split under policy and reference; write logps.jsonl and dominance.png."""
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
    scores = compare(logps, paired=paired, beta=beta, levels=levels)
    with open(out / "logps.jsonl", "w", encoding="utf-8") as handle:
        for i in range(len(next(iter(logps.values())))):
            row = {k: (bool(v[i]) if v.dtype == bool else float(v[i])) for k, v in logps.items()}
            handle.write(json.dumps(row) + "\n")
    plot(logps, paired=paired, beta=beta, levels=levels, path=out / "dominance.png")
    settings_record = {"data": str(data_path), "paired": paired, "n_test": test.num_rows, "beta": beta,
                       "quantile_levels": len(levels), "limit": config.limit, "batch_size": config.batch_size,
                       "device": device, "max_length": settings.max_length,
                       "max_prompt_length": settings.max_prompt_length, "chat_template": True}
    return scores, settings_record
