"""A dead judge costs one timeout per step, not one per request: a 1152-sample GRPO step (72 prompts x 16 rollouts)
against a judge that accepts connections and never answers makes only the first round of requests wait (at most
``max_concurrency`` of them reach the judge; the open breaker fails the rest at once), every judge reward is
``unavailable`` (score NaN, ``None`` through TRL), no zeros. The step's wall time is printed, not asserted (it depends
on the machine's load); ``python benchmarks/rewards.py --only judge`` reports it next to the cost without the breaker.
"""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

from nemotron_plugins.rewards.adapters import make_openrlhf_reward_func, make_trl_reward_func, make_verl_compute_score
from nemotron_plugins.rewards.base import RewardSample, RewardStatus, build_reward

pytestmark = pytest.mark.timeout(120)

STEP = 72 * 16
TIMEOUT_S = 5.0


class DeadJudge:
    """A server on loopback that accepts every connection, counts it and never replies (closed at the end)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture()
def dead_judge():
    judge = DeadJudge()
    yield judge
    judge.close()


def step_samples() -> list[RewardSample]:
    return [
        RewardSample(completion=f"<think>...</think>answer {i}", ground_truth=str(i % 7), prompt=f"question {i // 16}")
        for i in range(STEP)
    ]


def test_dead_judge_step_is_bounded_and_unavailable(dead_judge):
    # The recipe's judge with the defaults (3 retries, 32 in flight, breaker after 5 failures), a 5 s request timeout.
    reward = build_reward("llm_judge", base_url=dead_judge.url, model="judge", timeout_s=TIMEOUT_S)
    start = time.monotonic()
    results = reward.score(step_samples())
    print(f"dead judge: {STEP} samples in {time.monotonic() - start:.1f} s at a {TIMEOUT_S:g} s request timeout")
    assert len(results) == STEP
    assert all(r.status is RewardStatus.UNAVAILABLE for r in results)
    assert all(math.isnan(r.score) for r in results)  # no reward known: never a 0 that reads as a wrong answer
    # One round of requests waited on the judge; without the breaker all 1152 would, four attempts each.
    assert 0 < len(dead_judge.connections) <= reward.max_concurrency, len(dead_judge.connections)
    # The next step meets the open breaker: no request reaches the judge at all.
    reached = len(dead_judge.connections)
    again = reward.score(step_samples()[:64])
    assert all(r.status is RewardStatus.UNAVAILABLE and "circuit breaker open" in r.message for r in again)
    assert len(dead_judge.connections) == reached


def test_dead_judge_through_trl_is_none_not_zero(dead_judge):
    f = make_trl_reward_func({"reward": "llm_judge", "base_url": dead_judge.url, "timeout_s": TIMEOUT_S}, name="judge")
    samples = step_samples()
    out = f(
        prompts=[s.prompt for s in samples],
        completions=[s.completion for s in samples],
        ground_truth=[s.ground_truth for s in samples],
    )
    assert out == [None] * STEP
    assert 0 < len(dead_judge.connections) <= 32


def test_dead_judge_through_verl_and_openrlhf_is_flagged_not_nan():
    with socket.socket() as s:  # a closed port: connections are refused at once
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    spec = {"reward": "llm_judge", "base_url": refused, "max_retries": 0, "breaker_failures": 1}
    out = make_verl_compute_score(spec)("science", "<think>x</think>42", "42")
    assert out["status_ok"] == 0.0 and out["score"] == 0.0 and out["judged"] == 0.0
    rewards = make_openrlhf_reward_func(spec, return_dict=True)(["q a", "q b"], ["q", "q"], ["a", "b"])
    assert [float(x) for x in rewards["extra_logs"]["status_ok"]] == [0.0, 0.0]
    assert not any(math.isnan(float(x)) for x in rewards["rewards"])
