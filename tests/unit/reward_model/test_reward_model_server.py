"""The reward-model HTTP server: scores over the wire equal the in-process ``megatron_reward_model`` scores, bad
requests get a 4xx naming the problem, a down server is a failure status (never a 0)."""

from __future__ import annotations

import http.client
import json
import math
import socket

import pytest

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.dispatch import run_recipe
from nemotron_plugins.preference.synthetic import write_preference_task
from nemotron_plugins.reward_model.server import ServerLimits, build_server, check_server
from nemotron_plugins.rewards.base import RewardSample, RewardStatus, build_reward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny reward model trained for 2 steps (a large lr, so its head and scores are far from 0)."""
    data = write_preference_task(
        tmp_path_factory.mktemp("rm_data"),
        seed=1,
        sft_rows=4,
        train_pairs=16,
        heldout_pairs=4,
        train_prompts=2,
        heldout_prompts=2,
    )
    out = tmp_path_factory.mktemp("rm_run")
    overrides = [
        f"output_dir={out}",
        f"data.path={data['pairs_train']}",
        f"data.eval_path={data['pairs_heldout']}",
        "evaluation.num_samples=0",
        "train_steps=2",
        "micro_batch_size=4",
        "global_batch_size=8",
        "optimizer.lr=0.05",
        "optimizer.warmup_steps=0",
        "torch_threads=1",
    ]
    result = run_recipe(build_recipe("tiny_reward_model_cpu", overrides))
    assert result.steps_done == 2
    return str(out / "checkpoints")


@pytest.fixture(scope="module")
def server(checkpoint):
    srv = build_server(checkpoint, port=0, max_length=128, limits=ServerLimits(max_request_bytes=4096, max_batch=8))
    srv.start()
    yield srv
    srv.stop()


def _samples() -> list[RewardSample]:
    prompts = ["Write 6 letters, as many vowels as you can. Seed: abcdef", "hi"]
    replies = ["aeioua", "xkcdqz", "<think>some thoughts</think>aaa", "b", "uuuuuu", "hello there"]
    return [
        RewardSample(
            completion=r,
            prompt=[
                {"role": "system", "content": "detailed thinking off"},
                {"role": "user", "content": prompts[i % 2]},
            ],
        )
        for i, r in enumerate(replies)
    ] + [RewardSample(completion="plain prompt string", prompt="a string prompt")]


def _post(srv, body: bytes, path: str = "/score") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_http_scores_equal_in_process_scores(server, checkpoint) -> None:
    samples = _samples()
    local = build_reward("megatron_reward_model", checkpoint=checkpoint, max_length=128)
    try:
        expected = local.score(samples)
    finally:
        local.close()
    assert all(r.ok for r in expected)
    assert max(abs(r.score) for r in expected) > 1e-3  # a trained head: the comparison is not 0 == 0
    assert len({round(r.score, 6) for r in expected}) > 1
    # batch_size 3: three requests (the server's batches differ from the in-process one), two in flight at once.
    remote = build_reward("reward_model", url=server.url, batch_size=3, max_concurrency=2, timeout_s=60)
    got = remote.score(samples)
    assert [r.status for r in got] == [RewardStatus.OK] * len(samples)
    for g, e in zip(got, expected, strict=True):
        assert g.score == pytest.approx(e.score, abs=1e-6)
    ok, message = check_server(server.url)
    assert ok, message


def test_sample_too_long_is_an_error_not_a_score(server) -> None:
    remote = build_reward("reward_model", url=server.url, timeout_s=60, max_retries=0)
    long = RewardSample(completion="a" * 300, prompt="hi")
    short = RewardSample(completion="aeiou", prompt="hi")
    results = remote.score([long, short])
    assert results[0].status == RewardStatus.ERROR and "non-numeric reward None" in results[0].message
    assert results[1].ok
    status, reply = _post(server, json.dumps({"messages": [[{"role": "assistant", "content": "a" * 300}]]}).encode())
    assert status == 200 and reply["rewards"] == [None]
    assert reply["errors"][0]["status"] == "invalid_input" and "max_length=128" in reply["errors"][0]["message"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "body is not JSON"),
        (b'{"query": ["x"]}', 400, 'body must be {"messages"'),
        (b'{"messages": []}', 400, "non-empty list of conversations"),
        (b'{"messages": ["text"]}', 400, "messages[0] must be a non-empty list of messages"),
        (b'{"messages": [[{"role": "bot", "content": "x"}]]}', 400, "messages[0][0].role must be one of"),
        (b'{"messages": [[{"role": "user", "content": 3}]]}', 400, "messages[0][0].content must be a string"),
        (b'{"messages": [[{"role": "user", "content": "x"}]]}', 400, "must end with the assistant's reply"),
        (
            json.dumps({"messages": [[{"role": "assistant", "content": "x"}]] * 9}).encode(),
            413,
            "9 conversations in one request; at most 8",
        ),
        (json.dumps({"messages": [[{"role": "assistant", "content": "x" * 5000}]]}).encode(), 413, "at most 4096"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(server, body, status, needle) -> None:
    got, reply = _post(server, body)
    assert got == status
    assert needle in reply["error"]


def test_health_and_unknown_paths(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        health = json.loads(resp.read())
        assert resp.status == 200 and health["status"] == "ok" and health["max_batch"] == 8
        conn.request("GET", "/nope")
        resp = conn.getresponse()
        assert resp.status == 404 and "GET /health" in json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_a_down_server_is_a_failure_status_never_zero() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    remote = build_reward("reward_model", url=url, timeout_s=2, max_retries=0)
    results = remote.score([RewardSample(completion="x", prompt="hi")])
    assert results[0].status in (RewardStatus.ERROR, RewardStatus.UNAVAILABLE, RewardStatus.TIMEOUT)
    assert not results[0].ok
    ok, message = check_server(url, timeout_s=2)
    assert not ok and "/health failed" in message
    # The RL trainer's scoring leaves such a sample out (NaN), it does not score it 0.
    from nemotron_plugins.rl.controller import score_completions

    scores = score_completions({"reward_model": (1.0, remote)}, ["x"], [{"messages": [], "ground_truth": None}])
    assert math.isnan(float(scores.total[0]))
