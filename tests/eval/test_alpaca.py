"""AlpacaEval: generation with the chat template (resumable), the built-in judge against a fake
OpenAI-compatible server on 127.0.0.1 (retries, cache, key handling), win-rate arithmetic. The
built-in judge is the stand-in without the alpaca extra, so these tests run as if it were not
installed; alpaca-eval's own annotator is tested in test_alpaca_eval_annotator.py."""

from __future__ import annotations

import hashlib
import json
import math
import socket
from pathlib import Path

import pytest

from aot_cli.errors import UserError

from aot_cli.eval import judge
from aot_cli.eval.alpaca import win_rate_metrics
from aot_cli.eval.judge import model_label, read_verdict

from judge_server import JudgeServer

DATA = str(Path(__file__).parents[1] / "fixtures" / "alpaca_tiny.json")
GEN = ("--max-new-tokens", 8, "--batch-size", 2, "--seed", 1)


@pytest.fixture(autouse=True)
def without_the_alpaca_extra(monkeypatch):
    monkeypatch.setattr("aot_cli.eval.alpaca._alpaca_eval_installed", lambda: False)


def test_win_rate_metrics_hand_numbers():
    m = win_rate_metrics([0.2, 0.2, 0.2, 0.9], [10, 20, 30, 40])
    assert m["win_rate"] == pytest.approx(37.5)
    # std(ddof=1) = sqrt((3 * 0.175^2 + 0.525^2) / 3) = 0.35; / sqrt(4) = 0.175
    assert m["standard_error"] == pytest.approx(17.5)
    assert (m["n_wins"], m["n_draws"], m["n_wins_base"], m["n_total"]) == (1, 0, 3, 4)
    assert m["avg_length"] == 25
    assert win_rate_metrics([0.5], [3])["n_draws"] == 1 and win_rate_metrics([0.5], [3])["standard_error"] == 0


def test_preference_from_logprobs():
    def response(top, content="m"):
        return {"choices": [{"message": {"content": content},
                             "logprobs": {"content": [{"token": content, "logprob": 0.0, "top_logprobs": top}]}}]}

    top = [{"token": "m", "logprob": math.log(0.6)}, {"token": "M", "logprob": math.log(0.2)},
           {"token": "x", "logprob": math.log(0.2)}]
    assert read_verdict(response(top), "m") == (pytest.approx(0.75), "m", None)
    assert read_verdict(response(top), "M")[0] == pytest.approx(0.25)
    no_logprobs = {"choices": [{"message": {"content": "M"}}]}
    assert read_verdict(no_logprobs, "M")[0] == 1.0 and read_verdict(no_logprobs, "m")[0] == 0.0
    assert read_verdict({"choices": [{"message": {"content": "?"}}]}, "m") == (None, "?", "answered neither m nor M")


def test_model_label_is_seeded_and_balanced():
    labels = [model_label(f"instruction {i}", seed=0) for i in range(200)]
    assert labels == [model_label(f"instruction {i}", seed=0) for i in range(200)]
    assert 60 < labels.count("m") < 140


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failure_before_any_answer_leaves_no_directory(aot, tiny_model_dir, tmp_path, monkeypatch):
    """The output is made to keep answers across a judge failure; with none kept it is removed."""
    def cannot_load(*a, **k):
        raise UserError("--model x: cannot load it (no GPU kernel)")

    monkeypatch.setattr("aot_cli.eval.alpaca.load_for_generation", cannot_load)
    out = tmp_path / "ae"
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out, "--judge-base-url",
                 "http://127.0.0.1:9/v1", "--judge-model", "judge-x", *GEN)
    assert result.exit_code == 2 and "cannot load it (no GPU kernel)" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_alpacaeval_end_to_end(aot, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(judge, "BACKOFF_S", 0.01)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    out = tmp_path / "ae"

    # 1. judge unreachable: clear error after the retries, generated outputs kept, no manifest
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out,
                 "--judge-base-url", dead, "--judge-model", "judge-x", *GEN)
    assert result.exit_code == 2, result
    assert f"unreachable after {judge.RETRIES} tries" in result.stderr and "outputs are kept" in result.stderr
    outputs = json.loads((out / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in json.loads(open(DATA).read())]
    assert all(set(o) == {"instruction", "output", "generator", "dataset"} for o in outputs)
    assert outputs[0]["generator"] == tiny_model_dir.name and outputs[0]["dataset"] == "tiny"
    assert not (out / "manifest.json").exists()

    # 2. rerun against a judge that fails twice then answers: no generation, win rate by hand
    def no_model(*a, **k):
        raise AssertionError("generation should have been skipped")

    monkeypatch.setattr("aot_cli.eval.alpaca.load_for_generation", no_model)
    with JudgeServer(fail_first=2, require_key="sk-test-secret") as server:
        result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out,
                     "--judge-base-url", server.url, "--judge-model", "judge-x", *GEN)
    assert result.exit_code == 0, result
    assert "resuming: 4 of 4" in result.stderr
    assert f"wrote {out}: results.json, report.md, model_outputs.json, annotations.json" in result.stderr
    assert f"next: aot compare BASELINE_EVAL_DIR {out}" in result.stderr
    assert server.failures == 2 and len(server.requests) == 4
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert body["model"] == "judge-x" and body["logprobs"] is True and body["max_tokens"] == 1
    res = json.loads((out / "results.json").read_text())
    scores = res["scores"]["alpacaeval"]
    assert scores["win_rate"] == pytest.approx(37.5) and scores["standard_error"] == pytest.approx(17.5)
    assert scores["n_wins"] == 1 and scores["n_total"] == 4
    assert scores["avg_length"] == pytest.approx(sum(len(o["output"]) for o in outputs) / 4)
    assert scores["length_controlled_winrate"] is None and "805" in res["notes"]["length_controlled_winrate"]
    settings = res["settings"]
    assert settings["judge"]["model"] == "judge-x" and settings["judge"]["base_url"] == server.url
    assert settings["judge"]["implementation"] == "aot built-in"
    assert settings["judge"]["prompt"] == "aot built-in (aot_cli/eval/judge.py)"
    assert settings["judge"]["prompt_sha256"] == hashlib.sha256(
        (judge.SYSTEM_PROMPT + "\n" + judge.USER_TEMPLATE).encode()).hexdigest()
    assert settings["max_new_tokens"] == 8 and settings["temperature"] == 0.7 and settings["seed"] == 1
    annotations = json.loads((out / "annotations.json").read_text())
    assert sorted(a["preference"] for a in annotations) == pytest.approx([0.2, 0.2, 0.2, 0.9])
    assert {a["model_label"] for a in annotations} <= {"m", "M"}
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "eval" and manifest["inputs"][1]["path"] == DATA and "sha256" in manifest["inputs"][1]
    for f in out.rglob("*"):
        assert not f.is_file() or "sk-test-secret" not in f.read_text(errors="ignore"), f

    # 3. a complete eval dir is not resumed: --overwrite is needed
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out,
                 "--judge-base-url", server.url)
    assert result.exit_code == 2 and "--overwrite" in result.stderr


def test_alpacaeval_bad_inputs(aot, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", tmp_path / "a")
    assert result.exit_code == 2 and "OPENAI_API_KEY" in result.stderr
    assert not (tmp_path / "a" / "model_outputs.json").exists()
    result = aot("eval", "alpaca", tiny_model_dir, "-o", tmp_path / "b",
                 "--judge-base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "cannot get the AlpacaEval set" in result.stderr
    assert "--instructions" in result.stderr
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", tmp_path / "c",
                 "--judge", "alpaca_eval_gpt4", "--judge-base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "only weighted_alpaca_eval_gpt4_turbo is built in" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_outputs.json").write_text('[{"instruction": "x", "output": "y", "generator": "someone-else"}]')
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", other,
                 "--judge-base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "answers of another model (someone-else)" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"}, {"prompt": "x"}]')
    result = aot("eval", "alpaca", tiny_model_dir, "--instructions", bad, "-o", tmp_path / "d",
                 "--judge-base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "row 2" in result.stderr


# --- every answer shape, every transient failure, a damaged cache --------------------------------

REFUSAL = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                                "refusal": "I can't help with that."},
                        "logprobs": None, "finish_reason": "stop"}]}


def _answer(choice) -> bytes:
    return json.dumps({"choices": [choice]}).encode()


ODD_ANSWERS = {   # body -> the reason it gives no preference
    "not UTF-8": (b"\xff\xfe\x00\x81 garbage", "not JSON"),
    "html": (b"<html>welcome</html>", "not JSON"),
    "empty body": (b"", "not JSON"),
    "no choices": (b'{"detail": "no"}', "not a chat completion"),
    "error object": (b'{"error": {"message": "overloaded"}}', "not a chat completion"),
    "empty choices": (b'{"choices": []}', "not a chat completion"),
    "choices a string": (b'{"choices": "m"}', "not a chat completion"),
    "a list": (b'[{"choices": [{"message": {"content": "m"}}]}]', "not a chat completion"),
    "null": (b"null", "not a chat completion"),
    "refusal, content null": (json.dumps(REFUSAL).encode(), "refused"),
    "content null": (_answer({"message": {"role": "assistant", "content": None}}), "no answer text"),
    "no message": (_answer({"index": 0, "finish_reason": "length"}), "no answer text"),
    "choice null": (b'{"choices": [null]}', "no answer text"),
    "message a string": (_answer({"message": "m"}), "no answer text"),
    "content a number": (_answer({"message": {"content": 7}}), "no answer text"),
    "logprobs of odd types": (b'{"choices": [{"message": {"content": "?"}, "logprobs": {"content": [{"top_logprobs": '
                              b'[null, {"token": 5, "logprob": 0}, {"token": "m", "logprob": "x"}, '
                              b'{"token": "M", "logprob": NaN}, {"token": "m"}]}]}}]}', "answered neither m nor M"),
    "logprobs content a string": (_answer({"message": {}, "logprobs": {"content": "m"}}), "no answer text"),
    "a byte not UTF-8 in the text": (b'{"choices": [{"message": {"content": "M\xff"}}]}', "answered neither m nor M"),
    "prose": (_answer({"message": {"content": "The first one."}}), "answered neither m nor M"),
}


@pytest.mark.parametrize("name", list(ODD_ANSWERS))
def test_every_odd_answer_is_no_preference_with_a_reason(tmp_path, name):
    """A judge's odd answer never raises: no preference, and why. Chat completions are cached (the
    same prompt gives the same refusal); anything else is asked again by the next run."""
    body, reason = ODD_ANSWERS[name]
    with JudgeServer(raw=body) as server:
        settings = judge.JudgeSettings(server.url, "x", 0)
        verdict = judge.JudgeClient(settings, tmp_path / "cache.jsonl").judge("Say hi.", "hello", "REF: hi")
        judge.JudgeClient(settings, tmp_path / "cache.jsonl").judge("Say hi.", "hello", "REF: hi")
    assert verdict["preference"] is None and verdict["judge_problem"].split(":")[0] == reason
    assert len(server.requests) == (2 if reason in ("not JSON", "not a chat completion") else 1)


def test_odd_bytes_beside_good_logprobs_still_give_the_preference(tmp_path):
    label = model_label("Say hi.", 0)
    top = b'[{"token": "m", "logprob": -0.10536}, {"token": " M", "logprob": -2.3026}]'  # p = 0.9, 0.1
    body = b'{"id": "\xff", "choices": [{"message": {"content": "m\xfe"}, "logprobs": {"content": [{"token": "m", ' \
           b'"logprob": 0, "top_logprobs": ' + top + b'}]}}]}'
    huge = _answer({"message": {"content": "x"}, "logprobs": {"content": [{"top_logprobs": [
        {"token": "m", "logprob": 1e308}, {"token": "M", "logprob": float("-inf")}]}]}})
    for raw, p_m in ((body, 0.9), (huge, 1.0)):
        with JudgeServer(raw=raw) as server:
            verdict = judge.JudgeClient(judge.JudgeSettings(server.url, "x", 0), tmp_path / f"{p_m}.jsonl").judge(
                "Say hi.", "hello", "REF: hi")
        assert verdict["preference"] == pytest.approx(p_m if label == "m" else 1 - p_m, abs=1e-4)
        assert verdict["judge_problem"] is None


@pytest.mark.parametrize("fault", [503, 500, 429, 408, "close", "reset", "partial", "garbage", "stall"])
def test_every_transient_failure_is_retried(tmp_path, monkeypatch, fault):
    monkeypatch.setattr(judge, "BACKOFF_S", 0)
    monkeypatch.setattr(judge, "TIMEOUT_S", 0.5)
    with JudgeServer(faults=[fault, fault], stall_s=2.0) as server:
        verdict = judge.JudgeClient(judge.JudgeSettings(server.url, "x", 0), tmp_path / "c.jsonl").judge(
            "Say hi.", "hello", "REF: hi")
    assert server.failures == 2 and verdict["preference"] == pytest.approx(0.2)


def test_a_refused_connection_is_retried_until_the_judge_is_up(tmp_path, monkeypatch):
    port = _closed_port()
    servers = []

    def sleep(seconds):  # the judge comes up during the first back-off
        if not servers:
            servers.append(JudgeServer(port=port).__enter__())

    monkeypatch.setattr(judge.time, "sleep", sleep)
    try:
        verdict = judge.JudgeClient(judge.JudgeSettings(f"http://127.0.0.1:{port}/v1", "x", 0),
                                    tmp_path / "c.jsonl").judge("Say hi.", "hello", "REF: hi")
    finally:
        for server in servers:
            server.__exit__()
    assert verdict["preference"] == pytest.approx(0.2) and len(servers[0].requests) == 1


def test_retries_end_in_one_clear_error(tmp_path, monkeypatch):
    from aot_cli.errors import UserError

    monkeypatch.setattr(judge, "BACKOFF_S", 0)
    with JudgeServer(faults=["partial"] * judge.RETRIES) as server:
        client = judge.JudgeClient(judge.JudgeSettings(server.url, "x", 0), tmp_path / "c.jsonl")
        with pytest.raises(UserError, match=f"unreachable after {judge.RETRIES} tries \\(last error: IncompleteRead"):
            client.judge("Say hi.", "hello", "REF: hi")
    with JudgeServer(faults=[400]) as server:
        client = judge.JudgeClient(judge.JudgeSettings(server.url, "x", 0), tmp_path / "c.jsonl")
        with pytest.raises(UserError, match="refused the request: HTTP 400"):
            client.judge("Say hi.", "hello", "REF: hi")
    assert server.failures == 1


@pytest.mark.parametrize("url", ["localhost:8000/v1", "http://127.0.0.1:port/v1", "ftp://host/v1", "http:///v1",
                                 "http://127.0.0.1:0/v1", "http://my host/v1", "http://127.0.0.1:99999/v1"])
def test_a_judge_url_that_is_not_http_fails_at_once(url):
    from aot_cli.errors import UserError

    with pytest.raises(UserError, match="expected an http\\(s\\) URL"):
        judge.JudgeSettings(url, "x", 0)


def test_a_damaged_cache_is_skipped_and_asked_again(tmp_path, capsys):
    cache = tmp_path / "judge_cache.jsonl"
    questions = [f"Question {i}?" for i in range(3)]
    with JudgeServer() as server:
        settings = judge.JudgeSettings(server.url, "x", 0)
        client = judge.JudgeClient(settings, cache)
        first = [client.judge(q, "answer", "REF: ref") for q in questions]
        lines = cache.read_bytes().split(b"\n")[:3]
        # a stray line that is neither UTF-8 nor JSON, and the last line cut short by a kill
        cache.write_bytes(lines[0] + b"\n\xff\xfe{not json\n" + lines[1] + b"\n" + lines[2][:40])
        again = judge.JudgeClient(settings, cache)
        assert "skipped 2 damaged line(s)" in capsys.readouterr().err
        assert [again.judge(q, "answer", "REF: ref") for q in questions] == first
        assert len(server.requests) == 4  # only the cut answer is asked again
        assert len(judge.JudgeClient(settings, cache).cache) == 3 and len(server.requests) == 4

        # a complete last line without its newline: the next answer must not be glued to it
        cache.write_bytes(lines[0] + b"\n" + lines[1])
        client = judge.JudgeClient(settings, cache)
        client.judge(questions[2], "answer", "REF: ref")
        assert len(judge.JudgeClient(settings, cache).cache) == 3


def test_odd_judge_answers_are_counted_and_the_run_finishes(aot, tiny_model_dir, tmp_path, monkeypatch):
    """Through `aot eval`: refusals and garbage from the judge are counted as no preference with a
    warning, the win rate uses the others; when no answer gives a preference, one error line and the
    generated outputs stay. Instructions and outputs hold U+2028 (read as JSON lines, not cut)."""
    model = tiny_model_dir  # never loaded: every answer is already in model_outputs.json
    monkeypatch.setattr("aot_cli.eval.alpaca.load_for_generation",
                        lambda *a, **k: pytest.fail("generation should be skipped"))
    rows = [{"instruction": text, "output": f"REF: {i}"} for i, text in enumerate(
        ["Plain question\u2028one?", "REFUSE this.", "BYTES please.", "FAVOR MODEL: be nice.", "Plain two\u2029?"])]
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "ae"
    out.mkdir()
    outputs = [{"instruction": r["instruction"], "output": f"answer\u0085{i}", "generator": model.name, "dataset": None}
               for i, r in enumerate(rows)]
    (out / "model_outputs.json").write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")
    args = ("eval", "alpaca", model, "--instructions", instructions, "-o", out, "--judge-base-url")

    with JudgeServer(raw=b"<html>a login page</html>") as server:
        result = aot(*args, server.url)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result
    assert "no preference for any of the 5 instructions (not JSON 5;" in errors[0]
    assert "outputs are kept" in errors[0] and (out / "model_outputs.json").is_file()

    shapes = {"REFUSE": json.dumps(REFUSAL).encode(), "BYTES": b"\xff\xfe garbage"}
    with JudgeServer(shapes=shapes) as server:
        result = aot(*args, server.url)
    assert result.exit_code == 0, result
    assert "no preference from the judge for 2 of 5 instructions (refused 1, not JSON 1)" in " ".join(
        result.stderr.split())  # rich wraps the warning
    scores = json.loads((out / "results.json").read_text())["scores"]["alpacaeval"]
    assert scores["n_total"] == 3 and scores["n_no_preference"] == 2
    assert scores["win_rate"] == pytest.approx(100 * (0.2 + 0.9 + 0.2) / 3)
    annotations = json.loads((out / "annotations.json").read_text())
    assert [a["judge_problem"] and a["judge_problem"].split(":")[0] for a in annotations] == \
        [None, "refused", "not JSON", None, None]
    assert [a["instruction"] for a in annotations] == [r["instruction"] for r in rows]
