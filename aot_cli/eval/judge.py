"""A small OpenAI-compatible pairwise judge: AlpacaEval's weighted protocol without alpaca-eval.

Protocol (that of alpaca-eval's ``weighted_alpaca_eval_gpt4_turbo`` annotator): the judge sees the
instruction and two outputs labelled ``m`` and ``M`` (which one is the model's is drawn at random
per instruction, seeded, to cancel position bias), is asked for the label of the better output as a
single token, and the preference is read from the log-probs of those two tokens:
``P(model better) = p(model's label) / (p(m) + p(M))``, a soft win in [0, 1]. The prompt is our own
wording of that protocol; for the leaderboard's exact prompts use alpaca-eval's annotators
(the ``alpaca`` extra).

Any server speaking ``POST {base_url}/chat/completions`` with ``logprobs``/``top_logprobs`` works
(OpenAI, a local vLLM). The API key comes from ``OPENAI_API_KEY`` only and is never written
anywhere. Transient failures (connection errors, 429, 5xx) are retried with exponential backoff;
then a UserError. Answers are cached in a JSONL file keyed by (model, prompt), so a rerun after a
failure only asks what is missing.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.store import fingerprint
from aot_cli.errors import UserError

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_JUDGE_MODEL = "gpt-4-1106-preview"   # the model of weighted_alpaca_eval_gpt4_turbo
RETRIES = 5
BACKOFF_S = 1.0
TIMEOUT_S = 120.0
LABELS = ("m", "M")

SYSTEM_PROMPT = (
    "You compare the answers of two AI assistants to the same instruction and decide which one a "
    "careful human expert would prefer. Judge helpfulness, correctness, depth and clarity; do not "
    "favour an answer for being longer or for coming first."
)
USER_TEMPLATE = (
    "Instruction:\n{instruction}\n\n"
    "## Model m\n{output_m}\n\n"
    "## Model M\n{output_M}\n\n"
    "Which model answered better? Reply with exactly one character: m or M."
)


@dataclass(frozen=True)
class JudgeSettings:
    base_url: str
    model: str
    seed: int

    @property
    def is_openai(self) -> bool:
        return self.base_url.rstrip("/") == OPENAI_BASE_URL


def api_key(settings: JudgeSettings) -> str | None:
    """OPENAI_API_KEY from the environment; required for OpenAI itself, optional for local servers."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key and settings.is_openai:
        raise UserError("the OpenAI judge needs OPENAI_API_KEY in the environment (or point "
                        "--judge-base-url at an OpenAI-compatible server, e.g. a local vLLM)")
    return key


def model_label(instruction: str, seed: int) -> str:
    """Which label ('m' or 'M') the model's output gets for this instruction: random, seeded, stable."""
    return random.Random(fingerprint([seed, instruction])).choice(LABELS)


def judge_messages(instruction: str, output: str, reference: str, label: str) -> list[dict]:
    pair = {label: output, ("M" if label == "m" else "m"): reference}
    user = USER_TEMPLATE.format(instruction=instruction, output_m=pair["m"], output_M=pair["M"])
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def preference_from_response(response: dict, label: str) -> float | None:
    """P(model better) from the first generated token's top log-probs (or its text when the server
    gives no log-probs); None when neither label appears."""
    choice = response["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    probs = {t: 0.0 for t in LABELS}
    if content:
        for entry in content[0].get("top_logprobs") or []:
            token = entry["token"].strip()
            if token in probs:
                probs[token] += math.exp(entry["logprob"])
    total = probs["m"] + probs["M"]
    if total > 0:
        return probs[label] / total
    text = (choice.get("message") or {}).get("content", "").strip()
    return (1.0 if text == label else 0.0) if text in LABELS else None


class JudgeClient:
    """Chat-completions client with retries and a JSONL cache (one line per answered prompt)."""

    def __init__(self, settings: JudgeSettings, cache_file: Path):
        self.settings = settings
        self.key = api_key(settings)
        self.cache_file = cache_file
        self.cache: dict[str, dict] = {}
        if cache_file.is_file():
            for line in cache_file.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.cache[row["key"]] = row["response"]

    def _post(self, body: dict) -> dict:
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        last = ""
        for attempt in range(RETRIES):
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
                    return self._parse(url, reply.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:
                    detail = exc.read().decode(errors="replace")[:200]
                    raise UserError(f"judge {url} refused the request: HTTP {exc.code} {detail}") from None
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = str(getattr(exc, "reason", exc))
            if attempt + 1 < RETRIES:
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise UserError(f"judge {url} unreachable after {RETRIES} tries (last error: {last})")

    @staticmethod
    def _parse(url: str, body: bytes) -> dict:
        """The chat-completions answer; a UserError when the server does not speak that API."""
        hint = "is --judge-base-url an OpenAI-compatible endpoint ending in /v1?"
        try:
            answer = json.loads(body)
        except json.JSONDecodeError:
            raise UserError(f"judge {url} answered something that is not JSON ({body[:80]!r}); {hint}") from None
        if not isinstance(answer, dict) or not answer.get("choices"):
            raise UserError(f"judge {url} answered without 'choices' ({body[:120]!r}); {hint}")
        return answer

    def complete(self, messages: list[dict]) -> dict:
        """The judge's response for these messages (cached)."""
        key = fingerprint([self.settings.base_url, self.settings.model, messages])
        if key not in self.cache:
            body = {"model": self.settings.model, "messages": messages, "max_tokens": 1, "temperature": 0,
                    "logprobs": True, "top_logprobs": 5, "seed": self.settings.seed}
            self.cache[key] = self._post(body)
            with open(self.cache_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "response": self.cache[key]}) + "\n")
        return self.cache[key]

    def judge(self, instruction: str, output: str, reference: str) -> dict:
        """One annotation: the model's label, P(model better) (None if unreadable), the raw answer token."""
        label = model_label(instruction, self.settings.seed)
        response = self.complete(judge_messages(instruction, output, reference, label))
        return {"model_label": label, "preference": preference_from_response(response, label),
                "judge_token": (response["choices"][0].get("message") or {}).get("content")}
