"""The OpenAI-compatible rollout engine against a small completions server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nemotron_plugins.curriculum.pass_rate import CompletionGenerator
from nemotron_plugins.registry import ROLLOUT_ENGINES
from nemotron_plugins.rl.engines.base import SamplingSettings
from nemotron_plugins.rl.engines.openai_engine import OpenAIRolloutEngine, RolloutServerError


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_first: dict[str, int] = {}  # prompt -> remaining 503s
        self.slow: set[str] = set()
        self.max_choices = 100


def _make_handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                key = json.dumps(body["prompt"])
                fail = state.fail_first.get(key, 0)
                if fail:
                    state.fail_first[key] = fail - 1
            replied = False  # in_flight counts requests not yet answered: it drops before the reply is sent, since
            # a client thread may send its next request as soon as it has read this reply (before `finally` runs here)

            def answered():
                nonlocal replied
                if not replied:
                    replied = True
                    with state.lock:
                        state.in_flight -= 1

            try:
                time.sleep(0.05)
                if key in state.slow:
                    time.sleep(1.0)
                answered()
                if fail:
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                if self.path != "/v1/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                prompt = body["prompt"]
                base = prompt if isinstance(prompt, str) else "ids" + "-".join(map(str, prompt))
                choices = []
                for i in range(min(body["n"], state.max_choices)):
                    full = f"{base}#{i}.END tail"
                    stop_hit = body.get("stop") and "END" in body["stop"]
                    text = full[: full.index("END") + 3] if stop_hit else full[: body["max_tokens"]]
                    toks = [f"token_id:{ord(c)}" for c in text]
                    choices.append(
                        {
                            "index": i,
                            "text": text,
                            "finish_reason": "stop" if stop_hit else "length",
                            "logprobs": {
                                "tokens": toks,
                                "token_logprobs": [-0.5 - 0.01 * k for k in range(len(toks))],
                            },
                        }
                    )
                payload = json.dumps({"id": "x", "object": "text_completion", "choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            finally:
                answered()

    return Handler


@pytest.fixture
def server():
    state = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    httpd.shutdown()
    httpd.server_close()


def test_rollouts_with_ids_logprobs_and_stop(server):
    url, state = server
    engine = OpenAIRolloutEngine(base_url=url, model="tiny", api_key="k", concurrency=2)
    groups = engine.rollout(["ab", [7, 8]], n=3, temperature=0.7, top_p=0.9, max_new_tokens=64, stop=["END"], seed=5)
    assert [g.prompt_index for g in groups] == [0, 1]
    first = groups[0].rollouts
    assert [r.completion_text for r in first] == ["ab#0.END", "ab#1.END", "ab#2.END"]
    assert first[0].completion_ids == [ord(c) for c in "ab#0.END"]
    assert first[0].logprobs[:2] == pytest.approx([-0.5, -0.51])
    assert all(r.finish_reason == "stop" for r in first)
    assert groups[1].rollouts[0].prompt_ids == [7, 8]
    assert groups[1].rollouts[0].completion_text.startswith("ids7-8#0")
    req = next(r for r in state.requests if r["prompt"] == "ab")
    assert req["n"] == 3 and req["temperature"] == 0.7 and req["top_p"] == 0.9 and req["max_tokens"] == 64
    assert req["stop"] == ["END"] and req["seed"] == 5 and req["logprobs"] == 1
    assert req["return_tokens_as_token_ids"] is True and req["auth"] == "Bearer k"


def test_length_finish_and_curriculum_adapter(server):
    url, _ = server
    engine = OpenAIRolloutEngine(base_url=url, model="m", default_sampling=SamplingSettings(max_new_tokens=4))
    assert isinstance(engine, CompletionGenerator)
    texts = engine.generate(["xy", "zz"], 2)
    assert texts == [["xy#0", "xy#1"], ["zz#0", "zz#1"]]
    group = engine.rollout(["xy"], n=1)[0]
    assert group.rollouts[0].finish_reason == "length"


def test_bounded_concurrency(server):
    url, state = server
    engine = OpenAIRolloutEngine(base_url=url, model="m", concurrency=3)
    engine.rollout([f"p{i}" for i in range(10)], n=1, max_new_tokens=3)
    assert len(state.requests) == 10
    assert 1 <= state.max_in_flight <= 3


def test_short_replies_are_topped_up(server):
    url, state = server
    state.max_choices = 2
    engine = OpenAIRolloutEngine(base_url=url, model="m")
    group = engine.rollout(["q"], n=5, max_new_tokens=3)[0]
    assert len(group.rollouts) == 5
    assert [r["n"] for r in state.requests] == [5, 3, 1]


def test_retries_transient_errors(server):
    url, state = server
    state.fail_first[json.dumps("flaky")] = 2
    engine = OpenAIRolloutEngine(base_url=url, model="m", max_retries=2, retry_backoff_s=0.01)
    assert engine.rollout(["flaky"], n=1, max_new_tokens=5)[0].texts == ["flaky"]
    assert len(state.requests) == 3
    state.fail_first[json.dumps("down")] = 10
    with pytest.raises(RolloutServerError, match=r"prompt 0: .*503"):
        engine.rollout(["down"], n=1)


def test_timeout_is_reported(server):
    url, state = server
    state.slow.add(json.dumps("slow"))
    engine = OpenAIRolloutEngine(base_url=url, model="m", timeout_s=0.3, max_retries=0)
    with pytest.raises(RolloutServerError, match="prompt 1: .*within 0.3 s"):
        engine.rollout(["fast", "slow"], n=1)


def test_bad_config_and_registry():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIRolloutEngine(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="n \\(completions per prompt\\)"):
        OpenAIRolloutEngine(base_url="http://127.0.0.1:1/v1", model="m").rollout(["a"], n=0)
    assert ROLLOUT_ENGINES.get("openai") is OpenAIRolloutEngine
    with pytest.raises(NotImplementedError, match="openai"):
        OpenAIRolloutEngine(base_url="http://127.0.0.1:1/v1", model="m").update_weights({})
