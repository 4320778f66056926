"""A fake OpenAI-compatible judge on 127.0.0.1 for the AlpacaEval tests (chat completions + logprobs).

It prefers the reference answer (marked "REF") with probability 0.8, except for instructions
starting with "FAVOR MODEL", where it prefers the model's answer with probability 0.9. It finds
which label ('m' or 'M') holds the reference in the prompt, so the expected soft preferences are
known by hand whatever order the client chose.

Bad behaviour on demand: `faults` is a list played one per request before answering normally:
an HTTP status (503, 429, ...), "close" (hang up without answering: RemoteDisconnected), "reset"
(a TCP reset: ConnectionResetError), "partial" (a body cut short: IncompleteRead), "garbage" (a
status line that is not HTTP: BadStatusLine) or "stall" (answer after `stall_s`, past the client's
timeout). `fail_first=n` is n faults of 503. `raw` replaces every answer with those bytes; `shapes`
maps an instruction's first word to the bytes answered for it (a server that is not
OpenAI-compatible, or one answer of an odd shape among good ones).
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("close", "reset", "partial", "garbage", "stall")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """Writing to a connection the client already dropped (after a stall) is expected here."""


class JudgeServer:
    def __init__(self, fail_first: int = 0, require_key: str | None = None, raw: bytes | None = None,
                 faults: list | None = None, shapes: dict[str, bytes] | None = None, stall_s: float = 1.0,
                 port: int = 0):
        self.faults = [503] * fail_first + list(faults or [])
        self.raw = raw
        self.shapes = shapes or {}
        self.stall_s = stall_s
        self.require_key = require_key
        self.requests: list[dict] = []
        self.failures = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.failures < len(server.faults):
                    server.failures += 1
                    if server.play(self, server.faults[server.failures - 1]):
                        return
                if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    self.send_response(401)
                    self.end_headers()
                    return
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})
                self.send_response(200)
                reply = server.reply(body)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = _QuietServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def play(self, handler: BaseHTTPRequestHandler, fault) -> bool:
        """Misbehave as `fault` says; True when the request is finished (no normal answer follows)."""
        if isinstance(fault, int):
            handler.send_response(fault)
            handler.end_headers()
        elif fault == "close":
            handler.close_connection = True
        elif fault == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
        elif fault == "partial":
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b'{"choices": [')
            handler.close_connection = True
        elif fault == "garbage":
            handler.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            handler.close_connection = True
        elif fault == "stall":
            time.sleep(self.stall_s)
            return False
        else:
            raise ValueError(f"unknown fault {fault!r}")
        return True

    def reply(self, body: dict) -> bytes:
        if self.raw is not None:
            return self.raw
        instruction = body["messages"][-1]["content"].split("Instruction:\n", 1)[1]
        first_word = instruction.split()[0] if instruction.split() else ""
        if first_word in self.shapes:
            return self.shapes[first_word]
        return json.dumps(self.answer(body)).encode()

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
