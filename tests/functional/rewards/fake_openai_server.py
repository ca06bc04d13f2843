"""A small OpenAI-compatible chat-completions + reward-model server for tests: ``python fake_openai_server.py``.

Prints ``PORT <n>`` once listening on 127.0.0.1. Behaviour is chosen by the request's ``model`` field:

* ``judge``: a real (string-comparing) judge: YES when the student's final answer equals the reference answer.
* ``slow``: sleeps 30 s before answering; ``trickle``: sends headers, then one body byte every 0.2 s.
* ``error500``: always HTTP 500; ``flaky``: HTTP 503 on the first request for each prompt, then acts as ``judge``.
* ``malformed``: HTTP 200 with a body that is not JSON; ``noverdict``: replies "Perhaps".
* ``slowish``: acts as ``judge`` after 0.2 s (for concurrency checks).

``POST /score`` (reward model): ``{"messages": [[...], ...]}`` -> ``{"rewards": [len(last assistant content)]}``;
``POST /score_openrlhf``: ``{"query": [...]}`` -> ``{"rewards": [len(query)]}``; ``POST /score_short`` returns
one reward too few. ``GET /stats`` -> request counts and the most requests seen in flight at once (``?reset=1`` resets that).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"requests": 0, "in_flight": 0, "max_in_flight": 0}
SEEN: set[str] = set()


def judge(content: str) -> str:
    ref = re.search(r"Reference answer:\n(.*?)\n\n", content, re.S)
    ans = re.search(r"Student's final answer:\n(.*?)\n\nDoes", content, re.S)
    if not ref or not ans:
        return "NO"
    return "YES" if ref.group(1).strip().lower() == ans.group(1).strip().lower() else "NO"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            body = json.dumps(STATS).encode()
            if self.path.endswith("?reset=1"):
                STATS["max_in_flight"] = STATS["in_flight"]
        self._send(200, body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length))
        with LOCK:
            STATS["requests"] += 1
            STATS["in_flight"] += 1
            STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
        try:
            self._handle(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with LOCK:
                STATS["in_flight"] -= 1

    def _handle(self, request):
        if self.path.startswith("/score"):
            if self.path == "/score_openrlhf":
                rewards = [float(len(q)) for q in request["query"]]
            else:
                rewards = [float(len(conv[-1]["content"])) for conv in request["messages"]]
            if self.path == "/score_short":
                rewards = rewards[:-1]
            return self._send(200, json.dumps({"rewards": rewards}).encode())
        model = request.get("model")
        content = request["messages"][-1]["content"]
        if model == "slow":
            time.sleep(30)
        if model == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
            return None
        if model == "error500":
            return self._send(500, b'{"error": "internal"}')
        if model == "flaky":
            with LOCK:
                first = content not in SEEN
                SEEN.add(content)
            if first:
                return self._send(503, b'{"error": "overloaded"}')
        if model == "malformed":
            return self._send(200, b"{this is not json")
        if model == "slowish":
            time.sleep(0.2)
        verdict = "Perhaps" if model == "noverdict" else judge(content)
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]}
        return self._send(200, json.dumps(reply).encode())


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
