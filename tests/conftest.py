"""Shared fixtures: offline mode, one torch thread, a tiny model built on the spot, hand-made runs
(LoRA and full) for merge and eval, a CLI runner."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aot_cli.artifacts.store import write_manifest

# Before any Hugging Face library is imported (none of the imports above does): tests never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(1)

# Public preference files (with their provenance README), read in place, never copied into the project.
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="session")
def real_file():
    """``real_file(NAME)`` -> the path of a public fixture under <project root>/../shared/fixtures/real;
    the test skips, saying where it looked, when the file is absent."""

    def find(name: str) -> Path:
        path = REAL / name
        if not path.is_file():
            pytest.skip(f"public fixture {path} is absent (read in place from <project root>/../shared/"
                        "fixtures/real, never copied into the project)")
        return path

    return find


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-init Llama (hidden 64, 2 layers) with a BPE tokenizer trained on the project's
    generated preference set (aot_cli.tiny_data) and a ChatML template; built once per test
    session, never downloaded, independent of shared/."""
    from aot_cli.tiny_data import corpus
    from aot_cli.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus=corpus())


class AotResult:
    """What one `aot` invocation returned: exit code, stdout, stderr."""

    def __init__(self, result):
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    def __repr__(self) -> str:
        return f"AotResult(exit_code={self.exit_code}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def aot():
    """Run the real `aot` app in-process: ``aot("prepare", src, "-o", out)`` -> AotResult."""
    from aot_cli.cli import app

    runner = CliRunner()

    def invoke(*args) -> AotResult:
        return AotResult(runner.invoke(app, [str(a) for a in args], catch_exceptions=True))

    return invoke


class AotProcess:
    """One `aot` command in a forked child of the test process: a real process (its own pid, locks
    and files; SIGKILL stops it dead) that starts in milliseconds because torch and transformers are
    already imported. Its stdout and stderr go to files in `logs`."""

    def __init__(self, args, logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        self.stderr_path = logs / f"stderr-{time.monotonic_ns()}.txt"
        self.started = time.monotonic()
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:
            self._child([str(a) for a in args])

    def _child(self, args) -> None:
        code = 1
        try:
            with open(os.devnull, "wb") as devnull, open(self.stderr_path, "wb") as err:
                os.dup2(devnull.fileno(), 1)
                os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            sys.argv = ["aot", *args]
            from aot_cli.cli import main

            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"aot did not finish in {timeout} s: {self.stderr[-2000:]}")
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> int:
        """SIGKILL it (if still running) and reap it; the exit code (-9 when the kill landed)."""
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        return self.wait()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def aot_process(tmp_path):
    """Start ``aot ARGS...`` as a real child process: ``aot_process("train", ...)`` -> AotProcess."""
    started: list[AotProcess] = []

    def start(*args) -> AotProcess:
        started.append(AotProcess(args, tmp_path / "logs"))
        return started[-1]

    yield start
    for process in started:
        process.kill()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Caches (tokenization, reference log-probs) go to a per-session temp dir, not ~/.cache."""
    os.environ["AOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("aot-cache"))


def _run_manifest(run_dir: Path, base: Path, *, adapter: bool) -> None:
    config = {"model": str(base), "data": "unused", "loss": "aot", "beta": 0.1, "lora": adapter,
              "load_in_4bit": False}
    write_manifest(run_dir, kind="run", config=config,
                   summary={"base_model": str(base), "adapter": adapter, "init_adapter": None, "steps": 0})


@pytest.fixture(scope="session")
def lora_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA run: random (non-zero) adapter on every attention and MLP projection, saved with the
    tokenizer in run/adapter, and a run manifest. The adapter changes the logits, so a merge that
    drops it is visible."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path_factory.mktemp("lora-run")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.save_pretrained(run_dir / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run_dir / "adapter")
    _run_manifest(run_dir, tiny_model_dir, adapter=True)
    return run_dir


@pytest.fixture(scope="session")
def full_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A full fine-tuning run: the tiny model with perturbed weights in run/model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path_factory.mktemp("full-run")
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(run_dir / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run_dir / "model")
    _run_manifest(run_dir, tiny_model_dir, adapter=False)
    return run_dir
