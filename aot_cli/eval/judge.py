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
anywhere. Transient failures (refused or reset connections, timeouts, bodies cut short, 408, 429,
5xx) are retried with exponential backoff; then a UserError. An answer that gives no preference
(a refusal with ``"content": null``, text that is neither label, bytes that are not a chat
completion) is a "no preference" with its reason, never an exception. Chat-completion answers are
cached in a JSONL file keyed by (model, prompt), so a rerun after a failure only asks what is
missing; a damaged cache line (a run killed mid-write) is skipped and asked again.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.store import fingerprint
from aot_cli.console import warn
from aot_cli.errors import UserError
from aot_cli.jsonl import lines

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_JUDGE_MODEL = "gpt-4-1106-preview"   # the model of weighted_alpaca_eval_gpt4_turbo
RETRIES = 5
BACKOFF_S = 1.0
TIMEOUT_S = 120.0
RETRY_STATUS = {408, 429}  # and every 5xx
# Failures that may pass, so are retried: refused or reset connections and timeouts (OSError,
# URLError), a body cut short (IncompleteRead), a server that hung up before answering
# (RemoteDisconnected) or answered something that is not HTTP (BadStatusLine).
TRANSIENT = (urllib.error.URLError, http.client.HTTPException, OSError)
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

    def __post_init__(self):
        if not _is_http_url(self.base_url):  # checked before generating, not found mid-run
            raise UserError(f"--judge-base-url {self.base_url!r}: expected an http(s) URL such as "
                            "http://localhost:8000/v1")

    @property
    def is_openai(self) -> bool:
        return self.base_url.rstrip("/") == OPENAI_BASE_URL


def _is_http_url(url: str) -> bool:
    """Whether urllib can send a request to `url` (it raises ValueError mid-run for a bad port or a
    space, and retries an unknown scheme as if the network were down)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return False
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port  # a port that is not a number in 0-65535 raises ValueError
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


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


def read_verdict(response: dict, label: str) -> tuple[float | None, str | None, str | None]:
    """(P(model better), the answer's text, why there is no preference) from a chat-completions answer.

    The preference comes from the first generated token's top log-probs, else from the answer's
    text when it is exactly a label; otherwise it is None and the third item says why. Any shape
    of answer gives one of the two: servers send ``"content": null`` (OpenAI's refusals), empty
    choices, log-probs of other types, and one odd answer must not end a run of hundreds."""
    choice = response["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    text = text if isinstance(text, str) else None
    probs = {t: 0.0 for t in LABELS}
    for entry in _top_logprobs(choice):
        token, logprob = entry.get("token"), entry.get("logprob")
        if isinstance(token, str) and token.strip() in probs and _is_logprob(logprob):
            probs[token.strip()] += math.exp(min(logprob, 0.0))
    total = probs["m"] + probs["M"]
    if total > 0:
        return probs[label] / total, text, None
    if text is not None and text.strip() in LABELS:
        return (1.0 if text.strip() == label else 0.0), text, None
    if text is not None:
        return None, text, "answered neither m nor M"
    refusal = message.get("refusal") if isinstance(message, dict) else None
    return None, None, "refused" if isinstance(refusal, str) and refusal else "no answer text"


def _top_logprobs(choice: object) -> list[dict]:
    """The first token's top log-prob entries (objects only); [] where the answer has none."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    first = content[0] if isinstance(content, list) and content else None
    entries = first.get("top_logprobs") if isinstance(first, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _is_logprob(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def is_chat_completion(answer: object) -> bool:
    """An answer with the shape of the chat-completions API: an object with a non-empty 'choices' list."""
    return isinstance(answer, dict) and isinstance(answer.get("choices"), list) and bool(answer["choices"])


class JudgeClient:
    """Chat-completions client with retries and a JSONL cache (one line per answered prompt)."""

    def __init__(self, settings: JudgeSettings, cache_file: Path):
        self.settings = settings
        self.key = api_key(settings)
        self.cache_file = cache_file
        self.cache: dict[str, dict] = {}
        if cache_file.is_file():
            self._load_cache()

    def _load_cache(self) -> None:
        """Read the cache. A run killed while appending leaves a truncated last line: damaged lines
        are skipped (their prompts are asked again) and the file is rewritten without them, so the
        next answer starts on a line of its own instead of being glued to the broken one."""
        text = self.cache_file.read_bytes().decode("utf-8", errors="replace")
        kept, damaged = [], 0
        for _, line in lines(text):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not (isinstance(row, dict) and isinstance(row.get("key"), str)
                    and is_chat_completion(row.get("response"))):
                damaged += 1
                continue
            self.cache[row["key"]] = row["response"]
            kept.append(line)
        if damaged or (text and not text.endswith("\n")):
            tmp = self.cache_file.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.cache_file)
        if damaged:
            warn(f"{self.cache_file}: skipped {damaged} damaged line(s) (a run stopped while writing?); "
                 "those prompts are asked again")

    def _post(self, body: dict) -> bytes:
        """The body of the server's answer, retrying every failure that may pass (see TRANSIENT)."""
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        last = ""
        for attempt in range(RETRIES):
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
                    return reply.read()
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS and exc.code < 500:
                    raise UserError(f"judge {url} refused the request: HTTP {exc.code} {_error_detail(exc)}") from None
                last = f"HTTP {exc.code}"
            except TRANSIENT as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt + 1 < RETRIES:
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise UserError(f"judge {url} unreachable after {RETRIES} tries (last error: {last})")

    def complete(self, messages: list[dict]) -> tuple[dict | None, str | None]:
        """(the judge's chat-completions answer, None), cached; or (None, what the server sent instead),
        not cached, so a rerun asks again."""
        key = fingerprint([self.settings.base_url, self.settings.model, messages])
        if key in self.cache:
            return self.cache[key], None
        body = {"model": self.settings.model, "messages": messages, "max_tokens": 1, "temperature": 0,
                "logprobs": True, "top_logprobs": 5, "seed": self.settings.seed}
        raw = self._post(body)
        try:
            answer = json.loads(raw.decode("utf-8", errors="replace"))  # a stray byte must not cost the verdict
        except ValueError:
            return None, f"not JSON: {raw[:80]!r}"
        if not is_chat_completion(answer):
            return None, f"not a chat completion: {raw[:80]!r}"
        self.cache[key] = answer
        with open(self.cache_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "response": answer}) + "\n")
        return answer, None

    def judge(self, instruction: str, output: str, reference: str) -> dict:
        """One annotation: the model's label, P(model better) (None when the answer gives none, with
        the reason in judge_problem), and the answer's text."""
        label = model_label(instruction, self.settings.seed)
        response, problem = self.complete(judge_messages(instruction, output, reference, label))
        if response is None:
            return {"model_label": label, "preference": None, "judge_token": None, "judge_problem": problem}
        preference, text, problem = read_verdict(response, label)
        return {"model_label": label, "preference": preference, "judge_token": text, "judge_problem": problem}


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The start of an error answer's body; empty when even that cannot be read."""
    try:
        return exc.read().decode(errors="replace")[:200]
    except TRANSIENT:
        return ""
