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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aot_cli.errors import UserError
from aot_cli.eval.quantiles import dominance, quantile_curve, quantile_levels


# What each row of the scores compares ("first vs second"), as the report and the terminal table say it.
COMPARISONS = {
    True: {"before": "the reference (before training): margins log ref(chosen)/ref(rejected) vs 0",
           "after": "the policy (after training): margins log pi(chosen)/pi(rejected) vs 0",
           "implicit_rewards": "implicit rewards log pi/ref of chosen vs rejected (paper Fig. 1a)",
           "margins": "policy margins vs reference margins (paper Fig. 1b; what paired AOT trains)"},
    False: {"before": "the reference (before training): log ref(y) of positives vs negatives",
            "after": "the policy (after training): log pi(y) of positives vs negatives",
            "implicit_rewards": "implicit rewards log pi/ref of positives vs negatives (paper Fig. 1a; "
                                "what unpaired AOT trains)"},
}
METRICS_LEGEND = ("all scaled by beta; accuracy: share where the first beats the second (unpaired: AUC); "
                  "violation fraction / area: quantile levels where the first is below the second")


def _run_dir(source: Any) -> Path:
    if source.run_dir is not None:
        return source.run_dir
    manifest = Path(source.spec) / "manifest.json"
    hint = ""
    if manifest.is_file():
        run = json.loads(manifest.read_text()).get("summary", {}).get("source_run")
        hint = f" (this model was merged from {run}: pass that)" if run else ""
    raise UserError(f"{source.spec}: --suite dominance needs a run directory made by `aot train` "
                    f"(its manifest names the reference model){hint}")


def _test_split(path: Path | None, limit: int | None) -> tuple[Any, dict]:
    from aot_cli.data.dataset import load_prepared

    if path is None:
        raise UserError("--suite dominance needs --data DATASET (a directory made by `aot prepare`)")
    empty = UserError(f"{path}: the test split is empty; dominance scores held-out examples: prepare the data "
                      "again with a test split, e.g. `aot prepare ... --test-size 0.1`")
    try:
        data, manifest = load_prepared(path)
    except IndexError:  # datasets cannot load a split saved without any data file (0 rows)
        if not any((Path(path) / "test").glob("*.arrow")):
            raise empty from None
        raise
    test = data["test"]
    if test.num_rows == 0:
        raise empty
    return (test.select(range(min(limit, test.num_rows))) if limit else test), manifest


@contextmanager
def reference_model(policy: Any, run_dir: Path, run_config: dict, device: str) -> Iterator[Any]:
    """The run's reference: the policy with its adapter off when that is the reference, else loaded."""
    from peft import PeftModel

    if isinstance(policy, PeftModel) and not run_config.get("init_adapter"):
        with policy.disable_adapter():
            yield policy
        return
    from aot_cli.train.model import load_run_reference

    reference, _ = load_run_reference(run_dir)
    yield reference.to(device)
    del reference


def sequence_logps(model: Any, sequences: list[tuple[list[int], int]], pad_id: int, batch_size: int,
                   label: str) -> np.ndarray:
    """Summed completion log-probs of (ids, prompt_len) rows, in batches, without full logits."""
    import torch

    from aot_cli.console import progress
    from aot_cli.train.batching import collate
    from aot_cli.train.logprobs import model_sequence_logps

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = lambda v: quantile_curve(v, levels)  # noqa: E731
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
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
    plt.close(fig)


def evaluate(config: Any, source: Any, device: str, out: Path) -> tuple[dict, dict]:
    """Score the test split under policy and reference; write logps.jsonl and dominance.png."""
    from aot_cli.artifacts import read_manifest
    from aot_cli.data.tokenize import TokenizeSettings, tokenize_split
    from aot_cli.train.model import load_run_policy

    run_dir = _run_dir(source)
    test, data_manifest = _test_split(config.data, config.limit)
    paired = bool(data_manifest.get("summary", {}).get("paired", True))
    run_config = read_manifest(run_dir, kind="run")["config"]
    beta = config.beta if config.beta is not None else float(run_config.get("beta", 0.01))
    policy, tokenizer = load_run_policy(run_dir)
    policy.to(device)
    settings = TokenizeSettings(max_length=run_config.get("max_length"),
                                max_prompt_length=run_config.get("max_prompt_length"))
    data_fp = data_manifest.get("summary", {}).get("fingerprint")
    tokenized = tokenize_split(test, tokenizer, settings, paired=paired,
                               fingerprint=f"{data_fp}:test" if data_fp and not config.limit else None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sides = {"chosen": ("chosen_input_ids", "chosen_prompt_len"),
             "rejected": ("rejected_input_ids", "rejected_prompt_len")} if paired else {"": ("input_ids", "prompt_len")}
    seqs = {side: list(zip(tokenized[ids], tokenized[plen])) for side, (ids, plen) in sides.items()}

    logps: dict[str, np.ndarray] = {}
    for side, rows in seqs.items():
        logps["_".join(filter(None, ("policy", side)))] = sequence_logps(policy, rows, pad_id, config.batch_size,
                                                                         f"policy {side}".strip())
    with reference_model(policy, run_dir, run_config, device) as reference:
        for side, rows in seqs.items():
            logps["_".join(filter(None, ("ref", side)))] = sequence_logps(reference, rows, pad_id, config.batch_size,
                                                                          f"reference {side}".strip())
    if not paired:
        logps["label"] = np.asarray(tokenized["label"], dtype=bool)
        if logps["label"].all() or not logps["label"].any():
            raise UserError(f"{config.data}: the test split has only {'positive' if logps['label'].all() else 'negative'} "
                            "examples; dominance needs both")

    levels = quantile_levels()
    scores = compare(logps, paired=paired, beta=beta, levels=levels)
    with open(out / "logps.jsonl", "w", encoding="utf-8") as handle:
        for i in range(len(next(iter(logps.values())))):
            handle.write(json.dumps({k: (bool(v[i]) if v.dtype == bool else float(v[i])) for k, v in logps.items()}) + "\n")
    plot(logps, paired=paired, beta=beta, levels=levels, path=out / "dominance.png")
    settings_record = {"data": str(config.data), "paired": paired, "n_test": test.num_rows, "beta": beta,
                       "quantile_levels": len(levels), "limit": config.limit, "batch_size": config.batch_size,
                       "device": device, "max_length": settings.max_length,
                       "max_prompt_length": settings.max_prompt_length, "chat_template": True}
    return scores, settings_record
