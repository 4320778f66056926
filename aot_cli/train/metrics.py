"""Where per-step numbers go: ``metrics.jsonl`` (always), TensorBoard or Weights & Biases (optional
extras), and ``training_curves.png`` at the end. Only the main process writes."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from aot_cli.console import warn
from aot_cli.jsonl import parse_lines, read_text

METRICS = "metrics.jsonl"
CURVES = "training_curves.png"


class MetricsLog:
    """Appends one JSON line per step; on resume, drops the lines after the checkpoint's step."""

    def __init__(self, out: Path, *, resume_step: int = 0, tracker: str = "none", config: dict | None = None):
        self.path = Path(out) / METRICS
        kept = _lines_up_to(self.path, resume_step) if self.path.is_file() and resume_step else []
        self.path.write_text("".join(line + "\n" for line in kept))
        self._handle = self.path.open("a")
        self._tracker = _open_tracker(tracker, Path(out), config or {})

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        if self._tracker is not None:
            self._tracker.log(record)

    def close(self) -> None:
        self._handle.close()
        if self._tracker is not None:
            self._tracker.close()


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of `path` recording steps up to `step`. A line that is not a JSON record with a step
    (cut short by a kill, or edited) is dropped with a warning naming it: the log is a record of the
    run, not something to stop a resume for."""
    kept = []
    for number, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_step = record["step"] if isinstance(record, dict) else None
        except (json.JSONDecodeError, KeyError):
            record_step = None
        if not isinstance(record_step, int):
            warn(f"{path}:{number}: not a metrics record (damaged); dropped")
        elif record_step <= step:
            kept.append(line)
    return kept


class _TensorBoard:
    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` extra

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out: Path, config: dict):
        import wandb  # the optional `wandb` extra, checked by Config.preflight

        self.run = wandb.init(project="aot", name=out.name, dir=str(out), config=config)

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def _open_tracker(name: str, out: Path, config: dict):
    if name == "tensorboard":
        return _TensorBoard(out)
    if name == "wandb":
        return _Wandb(out, config)
    return None


def read_metrics(out: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` in OUT ([] when there is none)."""
    path = Path(out) / METRICS
    return [record for _, record in parse_lines(read_text(path), str(path))] if path.is_file() else []


def plot_curves(records: list[dict], path: Path) -> None:
    """Loss, implicit rewards and accuracy / violation fraction against the step, as one PNG whose
    legends say what each line is (a reader of the PNG alone must not need this docstring)."""
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(15, 5.4))
    axes = fig.subplots(1, 3)
    axes[0].plot(steps, [r["loss"] for r in records], color="black")
    axes[0].set_title("Training loss on the global batch")
    axes[0].set_ylabel("loss (dimensionless)")
    for key, label, color in (("rewards/chosen", "chosen / positive: batch mean", "tab:blue"),
                              ("rewards/rejected", "rejected / negative: batch mean", "tab:orange"),
                              ("rewards/margins", "margin: mean chosen − mean rejected", "tab:purple")):
        axes[1].plot(steps, [r[key] for r in records], label=label, color=color)
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set_title("Implicit rewards r = β·log π(y)/ref(y)")
    axes[1].set_ylabel("implicit reward (nats × β)")
    axes[2].plot(steps, [r["rewards/accuracies"] for r in records], color="tab:green",
                 label="reward accuracy: share of pairs with\nr(chosen) > r(rejected) (no pairs: of all couples)")
    axes[2].plot(steps, [r["rewards/violation_fraction"] for r in records], color="tab:red",
                 label="sorted violations: share of quantile levels where\nthe sorted chosen rewards are below the "
                       "sorted\nrejected ones (0 = chosen dominate on the batch)")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_title("Reward accuracy and dominance violations")
    axes[2].set_ylabel("share of the batch (0 to 1)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in axes[1:]:     # below the axes: inside, the legends hid the lines
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
