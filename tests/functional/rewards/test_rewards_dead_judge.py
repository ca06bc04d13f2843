"""A dead judge costs one timeout per step, not one per request: a 1152-sample GRPO step (72 prompts x 16 rollouts)
against a judge that accepts connections and never answers finishes within twice the judge timeout, every judge reward
``unavailable`` (score NaN, ``None`` through TRL), no zeros."""

from __future__ import annotations

import math
import socket
import time

import pytest

from nemotron_plugins.rewards.adapters import make_openrlhf_reward_func, make_trl_reward_func, make_verl_compute_score
from nemotron_plugins.rewards.base import RewardSample, RewardStatus, build_reward

pytestmark = pytest.mark.timeout(120)

STEP = 72 * 16
TIMEOUT_S = 5.0


@pytest.fixture()
def dead_judge():
    """A listening socket that never accepts: connections queue (or hang in the handshake), nothing ever replies."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def step_samples() -> list[RewardSample]:
    return [
        RewardSample(completion=f"<think>...</think>answer {i}", ground_truth=str(i % 7), prompt=f"question {i // 16}")
        for i in range(STEP)
    ]


def test_dead_judge_step_is_bounded_and_unavailable(dead_judge):
    # The recipe's judge with the defaults (3 retries, 32 in flight, breaker after 5 failures), a 5 s request timeout.
    reward = build_reward("llm_judge", base_url=dead_judge, model="judge", timeout_s=TIMEOUT_S)
    start = time.monotonic()
    results = reward.score(step_samples())
    elapsed = time.monotonic() - start
    assert len(results) == STEP
    assert all(r.status is RewardStatus.UNAVAILABLE for r in results)
    assert all(math.isnan(r.score) for r in results)  # no reward known: never a 0 that reads as a wrong answer
    assert elapsed < 2 * TIMEOUT_S, f"a dead judge cost {elapsed:.1f} s for one step"
    # The next step meets the open breaker: no request waits at all.
    again = reward.score(step_samples()[:64])
    assert all(r.status is RewardStatus.UNAVAILABLE and "circuit breaker open" in r.message for r in again)


def test_dead_judge_through_trl_is_none_not_zero(dead_judge):
    f = make_trl_reward_func({"reward": "llm_judge", "base_url": dead_judge, "timeout_s": TIMEOUT_S}, name="judge")
    samples = step_samples()
    start = time.monotonic()
    out = f(
        prompts=[s.prompt for s in samples],
        completions=[s.completion for s in samples],
        ground_truth=[s.ground_truth for s in samples],
    )
    elapsed = time.monotonic() - start
    assert out == [None] * STEP
    assert elapsed < 2 * TIMEOUT_S, f"a dead judge cost {elapsed:.1f} s for one step"


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
