"""Shared fixtures: offline mode, one torch thread, a tiny model built on the spot, a CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

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


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Caches (tokenization, reference log-probs) go to a per-session temp dir, not ~/.cache."""
    os.environ["AOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("aot-cache"))
