"""A stand-in AlpacaEval judge for `make smoke`: an OpenAI-compatible server on 127.0.0.1.

It answers ``POST /v1/chat/completions`` the way AlpacaEval's judges expect (one token, ``m`` or
``M``, with top log-probs, and the ``usage`` every OpenAI-compatible server sends, which alpaca-eval
reads), to alpaca-eval's own annotator prompt or the built-in judge's, without any model: it
prefers the longer of the two answers, ``P(m) = sigmoid((len(m) - len(M)) / 20)`` in characters,
so win rates differ between models that answer differently and the smoke table has real,
reproducible numbers in its AlpacaEval columns. A length-only judge says nothing about quality: it
is there to exercise the chain.

``python judge_server.py --url-file FILE``: binds a free port, writes its base URL
(``http://127.0.0.1:PORT/v1``) to FILE once it listens, and serves until it is terminated or the
process that started it exits (so an interrupted `make smoke` leaves no server behind).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The two answers in the judge prompt of aot_cli/eval/judge.py (USER_TEMPLATE), and in that of
# alpaca-eval's weighted_alpaca_eval_gpt4_turbo annotator (alpaca_eval_clf.txt).
ANSWERS = (re.compile(r"## Model m\n(?P<m>.*)\n\n## Model M\n(?P<M>.*)\n\nWhich model", re.DOTALL),
           re.compile(r'"model_identifier": "m",\s*"output": """(?P<m>.*)"""\s*\},\s*\{\s*'
                      r'"model_identifier": "M",\s*"output": """(?P<M>.*)"""', re.DOTALL))
SCALE_CHARS = 20.0


def preference_m(prompt: str) -> float:
    """P(answer m is better): the longer answer wins, softly; 0.5 when the prompt has no two answers."""
    found = next((m for m in (pattern.search(prompt) for pattern in ANSWERS) if m), None)
    if not found:
        return 0.5
    return 1.0 / (1.0 + math.exp(-(len(found["m"]) - len(found["M"])) / SCALE_CHARS))


def completion(body: dict) -> dict:
    """A chat-completions answer: the preferred label, with both labels' log-probs."""
    p_m = min(max(preference_m(body["messages"][-1]["content"]), 1e-6), 1 - 1e-6)
    probs = {"m": p_m, "M": 1.0 - p_m}
    best = max(probs, key=probs.get)
    top = [{"token": token, "logprob": math.log(p)} for token, p in probs.items()]
    return {"id": "length-judge", "object": "chat.completion", "created": 0,
            "model": body.get("model", "length-judge"),
            "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": best},
                         "logprobs": {"content": [{"token": best, "logprob": math.log(probs[best]),
                                                   "top_logprobs": top}]}}]}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        """Quiet: the smoke's output is the recipe's."""

    def do_POST(self) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self.send_error(404, "only /v1/chat/completions is served")
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps(completion(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def stop_with_parent(server: ThreadingHTTPServer) -> None:
    """Shut the server down once the process that started it is gone (re-parented)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url-file", type=Path, required=True, help="where to write the base URL once listening")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.url_file.with_name(f".{args.url_file.name}.{os.getpid()}")
    tmp.write_text(f"http://127.0.0.1:{server.server_address[1]}/v1\n")
    tmp.replace(args.url_file)   # whole or absent: a reader never sees half a URL
    threading.Thread(target=stop_with_parent, args=(server,), daemon=True).start()
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
