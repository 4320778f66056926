"""alpaca-eval's own annotators (the ``alpaca`` extra), pointed at any OpenAI-compatible server.

The leaderboard's numbers come from an alpaca-eval annotator: its prompt template, its decoding
settings and its parser (``weighted_alpaca_eval_gpt4_turbo``: one token, the top-5 log-probs of
'm' and 'M'). The built-in judge (:mod:`aot_cli.eval.judge`) follows the same protocol with a prompt
of its own, so its numbers are near the leaderboard's but not the same. To ask a local judge (vLLM,
llama.cpp's server, ...) with the real annotator, ``--judge-base-url``/``--judge-model`` do not
replace the annotator: a copy of its ``configs.yaml`` goes into a temporary directory with

- the prompt template's path made absolute (alpaca-eval reads it relative to the config's folder,
  and would take a path it cannot find as the prompt itself),
- ``completions_kwargs.model_name`` set to ``--judge-model``, and ``requires_chatml`` pinned to what
  the annotator's own model needs (alpaca-eval guesses chat vs. completions from the model's name),
- ``completions_kwargs.client_config_path`` naming a client config (YAML) with ``--judge-base-url``.

alpaca-eval reads ``OPENAI_CLIENT_CONFIG_PATH`` once, when it is imported, so a per-run value can
only go in through ``client_config_path``. The API key is never written: the OpenAI client reads
``OPENAI_API_KEY`` from the environment; when it is unset (a local server without keys) the client
config carries vLLM's placeholder key "EMPTY", as the OpenAI client refuses to start without one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

import openai
import yaml
from alpaca_eval import constants as alpaca_constants
from alpaca_eval import metrics as alpaca_metrics
from alpaca_eval.annotators import PairwiseAnnotator

from aot_cli.artifacts.store import fingerprint
from aot_cli.console import warn
from aot_cli.errors import UserError
from aot_cli.eval.judge import OPENAI_BASE_URL, JudgeSettings

# Importing alpaca_eval sets the root logger to INFO (one line per request); aot shows warnings only.
logging.getLogger().setLevel(logging.WARNING)

PLACEHOLDER_KEY = "EMPTY"
METRIC_KEYS = ("win_rate", "standard_error", "n_wins", "n_draws", "n_wins_base", "n_total",
               "length_controlled_winrate")


def _no_price_noise(record: logging.LogRecord) -> bool:
    """alpaca-eval warns once per request that it has no price for a model it does not know."""
    return not str(record.msg).startswith("Unknown model")


def config_file(judge: str) -> Path:
    """The annotator's configs.yaml, found as alpaca-eval finds it: a path (a folder or its YAML file),
    else a name among alpaca-eval's evaluators_configs."""
    for candidate in (Path(judge), Path(alpaca_constants.EVALUATORS_CONFIG_DIR) / judge):
        path = candidate / "configs.yaml" if candidate.is_dir() else candidate
        if path.is_file():
            return path
    raise UserError(f"--judge {judge}: no such alpaca-eval annotator (a name from "
                    f"{alpaca_constants.EVALUATORS_CONFIG_DIR}, e.g. weighted_alpaca_eval_gpt4_turbo, or a "
                    "configs.yaml file)")


def read_annotators(judge: str) -> tuple[Path, dict[str, dict]]:
    """(configs.yaml, {annotator name: its settings}) with every prompt template's path absolute."""
    path = config_file(judge)
    try:
        annotators = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"--judge {path}: not valid YAML ({exc})") from None
    if not isinstance(annotators, dict) or not all(isinstance(a, dict) for a in annotators.values()):
        raise UserError(f"--judge {path}: expected a mapping of annotator names to their settings")
    base = templates_folder(path)
    for name, settings in annotators.items():
        template = settings.get("prompt_template")
        if not isinstance(template, str) or not (base / template).is_file():
            raise UserError(f"--judge {path}: annotator {name}: prompt template {template!r} not found in {base}")
        settings["prompt_template"] = os.path.abspath(base / template)
    return path, annotators


def templates_folder(config_path: Path) -> Path:
    """alpaca-eval reads prompt templates relative to the parent of the configs' folder."""
    return Path(os.path.abspath(config_path.parents[1]))


def routed(annotators: dict[str, dict], model: str | None, client_config: Path | None) -> dict[str, dict]:
    """The annotators asking `model` through the client config `client_config` (None: unchanged)."""
    out = {}
    for name, settings in annotators.items():
        kwargs = dict(settings.get("completions_kwargs") or {})
        if settings.get("fn_completions") != "openai_completions":
            raise UserError(f"--judge-base-url/--judge-model: annotator {name} asks "
                            f"{settings.get('fn_completions')}, not an OpenAI-compatible server; pick an "
                            "annotator that uses openai_completions, e.g. weighted_alpaca_eval_gpt4_turbo")
        own_model = str(kwargs.get("model_name", ""))
        kwargs.setdefault("requires_chatml", _requires_chatml(own_model))
        if model is not None:
            kwargs["model_name"] = model
        if client_config is not None:
            kwargs["client_config_path"] = str(client_config)
        out[name] = {**settings, "completions_kwargs": kwargs}
    return out


def _requires_chatml(model: str) -> bool:
    """alpaca-eval's rule (decoders/openai.py) for whether a model name means the chat API."""
    return not ("instruct" in model or ("gpt-3" in model and "turbo" not in model) or model.startswith("text-"))


def client_config(base_url: str) -> dict:
    """alpaca-eval's client config for one server; the key stays in the environment."""
    client = {"client_class": "openai.OpenAI", "base_url": base_url}
    if not os.environ.get("OPENAI_API_KEY"):
        client["api_key"] = PLACEHOLDER_KEY
    return {"default": [client]}


def judge_record(config: Any) -> dict:
    """What results.json says about the judge: implementation, annotator, its prompt (path and
    sha256), the judge model and the server (None: alpaca-eval's client config or OpenAI)."""
    path, annotators = read_annotators(config.judge)
    settings = next(iter(annotators.values()))
    template = Path(settings["prompt_template"])
    model = config.judge_model or (settings.get("completions_kwargs") or {}).get("model_name")
    return {"implementation": "alpaca_eval", "alpaca_eval_version": importlib.metadata.version("alpaca_eval"),
            "annotator": config.judge, "prompt": str(template.relative_to(templates_folder(path))),
            "prompt_sha256": hashlib.sha256(template.read_bytes()).hexdigest(),
            "model": model, "base_url": config.judge_base_url}


def check(config: Any) -> None:
    """Before generating: the annotator exists and can be routed; a key is there when OpenAI is asked."""
    _, annotators = read_annotators(config.judge)
    if config.judge_base_url is not None or config.judge_model is not None:
        routed(annotators, config.judge_model, None)
    if config.judge_base_url is not None:
        settings = JudgeSettings(base_url=config.judge_base_url, model=config.judge_model or "", seed=config.seed)
        if not settings.is_openai:
            return
    if "gpt" in str(config.judge).lower() and not (os.environ.get("OPENAI_API_KEY")
                                                   or os.environ.get("OPENAI_CLIENT_CONFIG_PATH")):
        raise UserError(f"--judge {config.judge} (an OpenAI annotator of alpaca-eval) needs OPENAI_API_KEY "
                        "(or OPENAI_CLIENT_CONFIG_PATH) in the environment, or point --judge-base-url at an "
                        f"OpenAI-compatible server (e.g. a local vLLM; not {OPENAI_BASE_URL})")


def judge(config: Any, outputs: list[dict], rows: list[dict], out: Path,
          full_set: bool) -> tuple[dict, list[dict], str | None]:
    """Judge through alpaca-eval's annotator; returns (metrics, annotations, None).

    The annotation and the metric are called one after the other rather than through
    ``alpaca_eval.evaluate``, which fails with a pandas TypeError when the judge gave no usable
    answer: here that is one clear error, and instructions without a preference (alpaca-eval drops
    them) are counted in n_no_preference, as the built-in judge does. The length-controlled win rate
    is asked for only on the full standard set, where its instruction difficulties apply. Caches
    live in OUT/alpaca_eval, one file per judge (annotator, model, server), so judging again with
    another judge asks again instead of reusing the other judge's verdicts."""
    references = [{"instruction": r["instruction"], "output": r["reference"], "generator": r["reference_generator"],
                   "dataset": r["dataset"]} for r in rows]
    record = judge_record(config)
    work = out / "alpaca_eval"
    work.mkdir(exist_ok=True)
    key = fingerprint([record["annotator"], record["model"], record["base_url"]])[:12]
    cache = work / f"annotations_cache_{key}.json"
    root = logging.getLogger()
    with tempfile.TemporaryDirectory(prefix="aot-judge-") as tmp:
        root.addFilter(_no_price_noise)
        try:
            annotator = PairwiseAnnotator(annotators_config=_annotators_config(config, Path(tmp)),
                                          caching_path=str(cache))
            annotations = list(annotator.annotate_head2head(outputs_1=references, outputs_2=outputs))
        except openai.OpenAIError as exc:  # judge unreachable, key refused, quota: after the retries
            message = str(exc).splitlines()[0] if str(exc) else ""
            where = f" at {config.judge_base_url}" if config.judge_base_url else ""
            raise UserError(f"alpaca-eval's judge {config.judge}{where} failed: {type(exc).__name__} "
                            f"{message}".strip()) from None
        finally:
            root.removeFilter(_no_price_noise)
    judged = [a for a in annotations if _is_preference(a.get("preference"))]
    missing = len(outputs) - len(judged)
    if not judged:
        raise UserError(f"alpaca-eval's judge {config.judge} gave no preference for any of the {len(outputs)} "
                        f"instructions (its parser found no usable answer): does "
                        f"{config.judge_base_url or 'the server'} return the log-probs of the tokens m and M "
                        f"(logprobs, top_logprobs) for model {record['model']}?")
    if missing:
        warn(f"no preference from alpaca-eval's judge for {missing} of {len(outputs)} instructions: left out "
             "of the win rate, counted in n_no_preference")
    metric = "get_length_controlled_winrate" if full_set else "get_winrate"
    row = getattr(alpaca_metrics, metric)(judged)
    metrics = {}
    for name in METRIC_KEYS:
        value = row.get(name)
        absent = value is None or (isinstance(value, float) and math.isnan(value))
        metrics[name] = None if absent else (int(value) if name.startswith("n_") else float(value))
    metrics["avg_length"] = sum(len(a["output_2"]) for a in judged) / len(judged)
    metrics["n_no_preference"] = missing
    return metrics, annotations, None


def _is_preference(value: object) -> bool:
    """A number (numpy's too) that is not NaN: alpaca-eval marks an answer it could not parse NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _annotators_config(config: Any, tmp: Path) -> str:
    """The annotator's configs.yaml to hand alpaca-eval (an absolute path, which it takes as given):
    its own, or a routed copy written into `tmp`."""
    if config.judge_base_url is None and config.judge_model is None:
        return os.path.abspath(config_file(config.judge))
    client_path = None
    if config.judge_base_url is not None:
        client_path = tmp / "client_configs.yaml"
        client_path.write_text(yaml.safe_dump(client_config(config.judge_base_url)), encoding="utf-8")
    path, annotators = read_annotators(config.judge)
    folder = tmp / "annotator" / path.parent.name   # alpaca-eval names the annotator after this folder
    folder.mkdir(parents=True)
    (folder / "configs.yaml").write_text(yaml.safe_dump(routed(annotators, config.judge_model, client_path)),
                                         encoding="utf-8")
    return str(folder / "configs.yaml")
