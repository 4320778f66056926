"""A fake OpenAI-compatible judge on 127.0.0.1 for the AlpacaEval tests (chat completions + logprobs).

It prefers the reference answer (marked "REF") with probability 0.8, except for instructions
starting with "FAVOR MODEL", where it prefers the model's answer with probability 0.9. It finds
which label ('m' or 'M') holds the reference in the prompt, so the expected soft preferences are
known by hand whatever order the client chose. `fail_first` answers HTTP 503 that many times first;
`raw` replaces every answer with those bytes (a server that is not OpenAI-compatible).
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, fail_first: int = 0, require_key: str | None = None, raw: bytes | None = None):
        self.fail_first = fail_first
        self.raw = raw
        self.require_key = require_key
        self.requests: list[dict] = []
        self.failures = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.failures < server.fail_first:
                    server.failures += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    self.send_response(401)
                    self.end_headers()
                    return
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})
                reply = server.raw if server.raw is not None else json.dumps(server.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        before_second = prompt.split("## Model M")[0]
        ref_label = "m" if "REF:" in before_second.split("## Model m", 1)[1] else "M"
        model_label = "M" if ref_label == "m" else "m"
        p_model = 0.9 if "Instruction:\nFAVOR MODEL" in prompt else 0.2
        probs = {model_label: p_model, ref_label: 1 - p_model}
        top = [{"token": t, "logprob": math.log(p)} for t, p in probs.items()]
        best = max(probs, key=probs.get)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": best},
                             "logprobs": {"content": [{"token": best, "logprob": math.log(probs[best]),
                                                       "top_logprobs": top}]}}]}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
