"""AlpacaEval with the real alpaca-eval package (the `alpaca` extra): its own annotator
(weighted_alpaca_eval_gpt4_turbo: its prompt, its log-prob parser) sent to a fake OpenAI-compatible
judge on 127.0.0.1 through --judge-base-url/--judge-model; no network."""

from __future__ import annotations

import hashlib
import json
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from aot_cli.errors import UserError

from judge_server import JudgeServer

DATA = Path(__file__).parents[1] / "fixtures" / "alpaca_tiny.json"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
NEEDS = "needs the alpaca extra (alpaca-eval): pip install -e '.[alpaca]'"
PROMPT = "alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"


class AnnotatorJudge(JudgeServer):
    """The fake judge of judge_server.py, reading alpaca-eval's prompt: the reference answer (marked
    "REF:") is preferred with probability 0.8, the model's with 0.9 for "FAVOR MODEL" instructions,
    whichever identifier ('m' or 'M') alpaca-eval gave each output."""

    def reply(self, body: dict) -> bytes:
        if self.raw is not None:
            return self.raw
        prompt = body["messages"][-1]["content"]
        instruction = prompt.split('"instruction": """', 1)[1]
        if instruction.split()[0] in self.shapes:
            return self.shapes[instruction.split()[0]]
        first = prompt.split('"model_identifier": "m"', 1)[1].split('"model_identifier": "M"', 1)[0]
        ref_label = "m" if "REF:" in first else "M"
        model_label = "M" if ref_label == "m" else "m"
        p_model = 0.9 if '"""FAVOR MODEL' in prompt else 0.2
        probs = {model_label: p_model, ref_label: 1 - p_model}
        best = max(probs, key=probs.get)
        top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in probs.items()]
        return json.dumps({
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": best},
                         "logprobs": {"content": [{"token": best, "logprob": math.log(probs[best]), "bytes": None,
                                                   "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}}).encode()


@pytest.fixture
def annotator():
    """aot_cli.eval.alpaca_annotator (it imports alpaca_eval): the tests skip without the extra."""
    return pytest.importorskip("aot_cli.eval.alpaca_annotator", reason=NEEDS)


def _templates(annotator) -> Path:
    return Path(annotator.alpaca_constants.EVALUATORS_CONFIG_DIR)


NO_LOGPROBS = json.dumps({
    "id": "cmpl-2", "object": "chat.completion", "created": 0, "model": "judge-x",
    "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "M"},
                 "logprobs": None}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}}).encode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answered(model: Path, tmp_path, monkeypatch) -> tuple[Path, list[dict]]:
    """An OUT already holding the model's answers (a resumed run), so the command only judges."""
    monkeypatch.setattr("aot_cli.eval.alpaca.load_for_generation",
                        lambda *a, **k: pytest.fail("generation should be skipped"))
    out = tmp_path / "ae"
    out.mkdir()
    rows = json.loads(DATA.read_text())
    outputs = [{"instruction": r["instruction"], "output": f"answer {i}", "generator": model.name, "dataset": "tiny"}
               for i, r in enumerate(rows)]
    (out / "model_outputs.json").write_text(json.dumps(outputs))
    return out, outputs


def test_the_real_annotator_through_a_local_server(aot, annotator, tiny_model_dir, tmp_path, monkeypatch):
    """alpaca-eval's annotator asks the loopback judge: its own prompt and decoding settings, the
    key from the environment only, win rate by hand (soft preferences 0.2, 0.2, 0.2, 0.9); a dead
    judge first: one error line, the answers kept."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    out, _ = _answered(tiny_model_dir, tmp_path, monkeypatch)
    args = ("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out, "--judge-model", "judge-x",
            "--judge-base-url")

    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    result = aot(*args, dead)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result
    assert f"alpaca-eval's judge {ANNOTATOR} at {dead} failed: APIConnectionError" in errors[0]
    assert "outputs are kept" in errors[0] and (out / "model_outputs.json").is_file()
    assert not (out / "manifest.json").exists()

    with AnnotatorJudge(require_key="sk-test-secret") as server:
        result = aot(*args, server.url)
    assert result.exit_code == 0, result
    assert len(server.requests) == 4 and {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test-secret"}
    body = server.requests[0]["body"]
    assert body["model"] == "judge-x" and body["max_tokens"] == 1 and body["logprobs"] is True
    assert body["top_logprobs"] == 5 and body["temperature"] == 1
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"].startswith("You are a highly efficient assistant, who evaluates")
    assert "## Best Model Identifier" in body["messages"][1]["content"]

    res = json.loads((out / "results.json").read_text())
    scores = res["scores"]["alpacaeval"]
    assert scores["win_rate"] == pytest.approx(37.5) and scores["standard_error"] == pytest.approx(17.5)
    assert (scores["n_wins"], scores["n_wins_base"], scores["n_draws"], scores["n_total"]) == (1, 3, 0, 4)
    assert scores["length_controlled_winrate"] is None
    template = _templates(annotator) / PROMPT
    assert res["settings"]["judge"] == {
        "implementation": "alpaca_eval", "alpaca_eval_version": "0.6.6", "annotator": ANNOTATOR,
        "prompt": PROMPT, "prompt_sha256": hashlib.sha256(template.read_bytes()).hexdigest(),
        "model": "judge-x", "base_url": server.url}
    annotations = json.loads((out / "annotations.json").read_text())
    assert sorted(a["preference"] for a in annotations) == pytest.approx([1.2, 1.2, 1.2, 1.9])
    assert {a["annotator"] for a in annotations} == {ANNOTATOR}
    assert len(list((out / "alpaca_eval").glob("annotations_cache_*.json"))) == 1
    assert "alpaca_eval/" in result.stderr
    for f in out.rglob("*"):
        assert not f.is_file() or "sk-test-secret" not in f.read_text(errors="ignore"), f


def test_a_local_server_needs_no_key_and_a_cached_verdict_is_not_asked_again(aot, annotator, tiny_model_dir,
                                                                             tmp_path, monkeypatch):
    """Without OPENAI_API_KEY the local judge is asked with vLLM's placeholder key; the judge's
    verdicts are cached in OUT per judge, so judging again with the same judge asks nothing."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    out, _ = _answered(tiny_model_dir, tmp_path, monkeypatch)
    with AnnotatorJudge() as server:
        args = ("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out, "--judge-base-url", server.url,
                "--judge-model", "judge-x")
        result = aot(*args)
        assert result.exit_code == 0, result
        assert {r["auth"] for r in server.requests} == {"Bearer EMPTY"}
        (out / "manifest.json").unlink()   # an unfinished OUT again: the answers and the cache stay
        result = aot(*args)
        assert result.exit_code == 0, result
    assert len(server.requests) == 4
    assert json.loads((out / "results.json").read_text())["scores"]["alpacaeval"]["win_rate"] == pytest.approx(37.5)


def test_routing_keeps_the_annotator_and_writes_no_key(annotator, tmp_path, monkeypatch):
    """The routed configs.yaml: the same prompt (absolute path), parser and decoding settings, only
    the model and the client config changed; the chat API pinned as the annotator's model needs."""
    _, annotators = annotator.read_annotators(ANNOTATOR)
    client = tmp_path / "client.yaml"
    routed = annotator.routed(annotators, "meta-llama/Llama-3.1-8B-instruct", client)[ANNOTATOR]
    assert routed["prompt_template"] == str(_templates(annotator) / PROMPT)
    assert routed["fn_completion_parser"] == "logprob_parser" and routed["completion_parser_kwargs"] == {
        "numerator_token": "m", "denominator_tokens": ["m", "M"], "is_binarize": False}
    assert routed["completions_kwargs"] == {
        "model_name": "meta-llama/Llama-3.1-8B-instruct", "max_tokens": 1, "temperature": 1, "logprobs": True,
        "top_logprobs": 5, "requires_chatml": True, "client_config_path": str(client)}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    assert annotator.client_config("http://h:8000/v1") == {
        "default": [{"client_class": "openai.OpenAI", "base_url": "http://h:8000/v1"}]}
    monkeypatch.delenv("OPENAI_API_KEY")
    assert annotator.client_config("http://h:8000/v1")["default"][0]["api_key"] == "EMPTY"


def test_judge_choice_and_key_checked_before_generating(aot, annotator, tiny_model_dir, tmp_path, monkeypatch):
    """Before any generation: an OpenAI annotator without a key nor a server; an annotator that does
    not exist; one that cannot be sent to an OpenAI-compatible server; a server URL that is not one."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    monkeypatch.setattr("aot_cli.eval.alpaca.load_for_generation",
                        lambda *a, **k: pytest.fail("generation should not start"))
    base = ("eval", "alpaca", tiny_model_dir, "--instructions", DATA)
    result = aot(*base, "-o", tmp_path / "a")
    assert result.exit_code == 2 and "needs OPENAI_API_KEY" in result.stderr
    result = aot(*base, "-o", tmp_path / "b", "--judge", "no_such_annotator", "--judge-base-url", "http://h:1/v1")
    assert result.exit_code == 2 and "--judge no_such_annotator: no such alpaca-eval annotator" in result.stderr
    result = aot(*base, "-o", tmp_path / "c", "--judge", "claude", "--judge-base-url", "http://h:1/v1")
    assert result.exit_code == 2 and "annotator claude asks anthropic_completions" in result.stderr
    result = aot(*base, "-o", tmp_path / "d", "--judge-base-url", "localhost:8000")
    assert result.exit_code == 2 and "expected an http(s) URL" in result.stderr
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_judge_record_without_routing_and_a_user_config(annotator, tmp_path):
    """Without --judge-base-url/--judge-model the record names the annotator's own model; a user's
    configs.yaml whose prompt template is missing is reported, not taken as the prompt itself."""
    config = SimpleNamespace(judge=ANNOTATOR, judge_model=None, judge_base_url=None, seed=0)
    record = annotator.judge_record(config)
    assert record["model"] == "gpt-4-1106-preview" and record["base_url"] is None and record["prompt"] == PROMPT
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "configs.yaml").write_text("mine:\n  prompt_template: mine/prompt.txt\n"
                                       "  fn_completions: openai_completions\n")
    with pytest.raises(UserError, match="annotator mine: prompt template 'mine/prompt.txt' not found"):
        annotator.read_annotators(str(mine))
    (mine / "prompt.txt").write_text("<|im_start|>user\n{instruction}<|im_end|>")
    _, annotators = annotator.read_annotators(str(mine / "configs.yaml"))
    assert annotators["mine"]["prompt_template"] == str(mine / "prompt.txt")


def test_a_judge_without_logprobs_is_counted_or_one_clear_error(aot, annotator, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    """A server that sends no log-probs gives alpaca-eval's parser nothing: for one instruction it is
    left out of the win rate and counted; for all of them, one error line (not a pandas traceback)
    and the answers stay."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    out, _ = _answered(tiny_model_dir, tmp_path, monkeypatch)
    args = ("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out, "--judge-model", "judge-x",
            "--judge-base-url")
    with AnnotatorJudge(raw=NO_LOGPROBS) as server:
        result = aot(*args, server.url)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result
    assert "gave no preference for any of the 4 instructions" in errors[0]
    assert f"does {server.url} return the log-probs of the tokens m and M" in errors[0]
    assert "outputs are kept" in errors[0] and not (out / "manifest.json").exists()

    with AnnotatorJudge(shapes={"FAVOR": NO_LOGPROBS}) as server:
        result = aot(*args, server.url)
    assert result.exit_code == 0, result
    assert "no preference from alpaca-eval's judge for 1 of 4 instructions" in " ".join(result.stderr.split())
    scores = json.loads((out / "results.json").read_text())["scores"]["alpacaeval"]
    assert scores["n_total"] == 3 and scores["n_no_preference"] == 1
    assert scores["win_rate"] == pytest.approx(20.0) and scores["n_wins"] == 0


def test_an_annotator_of_ones_own_without_routing(aot, annotator, tiny_model_dir, tmp_path, monkeypatch):
    """--judge FOLDER (a configs.yaml of one's own, its prompt template beside it) is handed to
    alpaca-eval as it is, client settings included: the run asks the server that config names."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    out, _ = _answered(tiny_model_dir, tmp_path, monkeypatch)
    mine = tmp_path / "judges" / "my_judge"
    mine.mkdir(parents=True)
    (mine / "prompt.txt").write_bytes((_templates(annotator) / PROMPT).read_bytes())
    with AnnotatorJudge() as server:
        (tmp_path / "clients.yaml").write_text(f"default:\n  - base_url: {server.url}\n    api_key: EMPTY\n")
        (mine / "configs.yaml").write_text(
            "my_judge:\n  prompt_template: my_judge/prompt.txt\n  fn_completions: openai_completions\n"
            "  completions_kwargs: {model_name: judge-y, max_tokens: 1, temperature: 1, logprobs: true, "
            f"top_logprobs: 5, requires_chatml: true, client_config_path: {tmp_path / 'clients.yaml'}}}\n"
            "  fn_completion_parser: logprob_parser\n"
            "  completion_parser_kwargs: {numerator_token: m, denominator_tokens: [m, M], is_binarize: false}\n"
            "  completion_key: completions_all\n  batch_size: 1\n")
        result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out, "--judge", mine)
    assert result.exit_code == 0, result
    assert len(server.requests) == 4 and server.requests[0]["body"]["model"] == "judge-y"
    res = json.loads((out / "results.json").read_text())
    assert res["scores"]["alpacaeval"]["win_rate"] == pytest.approx(37.5)
    judge = res["settings"]["judge"]
    assert (judge["annotator"], judge["prompt"], judge["model"], judge["base_url"]) == (
        str(mine), "my_judge/prompt.txt", "judge-y", None)
