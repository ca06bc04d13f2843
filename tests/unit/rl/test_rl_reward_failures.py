"""Reward failures are not zeros: a sample whose reward errored / timed out / was unavailable leaves the advantages.

Hand-checkable cases on :func:`score_completions` / :func:`select_groups` with a scripted reward, then a real run
whose rewards time out in the bounded pool stops with a message naming the reward and its last error.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemotron_plugins.rewards.base import Reward, RewardResult
from nemotron_plugins.rewards.pool import PooledReward
from nemotron_plugins.rl.advantages import group_advantages
from nemotron_plugins.rl.trainer import (
    RewardFailureError,
    Samples,
    build_rewards,
    check_reward_failures,
    estimate_pass_rates,
    reward_failure_metrics,
    run_grpo,
    score_completions,
    select_groups,
)
from tests.run_configs import tiny_grpo


class Scripted(Reward):
    """Scores ``float(text)``; the texts ``err``, ``slow`` and ``down`` give error / timeout / unavailable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, samples):
        out = []
        for s in samples:
            if s.completion == "err":
                out.append(RewardResult.error(f"{self.name}: boom"))
            elif s.completion == "slow":
                out.append(RewardResult.timeout(f"{self.name}: too slow"))
            elif s.completion == "down":
                out.append(RewardResult.unavailable(f"{self.name}: judge down"))
            else:
                out.append(RewardResult(score=float(s.completion)))
        return out


def _rows(n: int, reward: str | None = None):
    return [{"ground_truth": "x", "messages": [], "reward": reward} for _ in range(n)]


def test_failures_are_nan_not_zero_and_kept_apart_from_not_applicable():
    rewards = {"a": (1.0, Scripted("a")), "b": (0.5, Scripted("b"))}
    # Rows 0-2 are routed to reward "a" (b does not apply there: NaN, not a failure); row 3 to "b".
    rows = _rows(3, "a") + _rows(1, "b")
    scores = score_completions(rewards, ["1", "err", "down", "slow"], rows)
    assert scores.per["a"][0] == 1.0 and math.isnan(scores.per["a"][1]) and math.isnan(scores.per["a"][3])
    assert scores.failed["a"].tolist() == [False, True, True, False]
    assert scores.applies["b"].tolist() == [False, False, False, True]
    assert scores.failed["b"].tolist() == [False, False, False, True]
    assert scores.total[0] == 1.0 and all(math.isnan(v) for v in scores.total[1:].tolist())
    assert scores.last_error["a"] == "unavailable: a: judge down"
    assert scores.last_error["b"] == "timeout: b: too slow"
    metrics = reward_failure_metrics(scores)
    assert metrics == {"reward_failures/a": 2.0, "reward_failures/b": 1.0, "reward_failures/rate": 0.75}


def test_failed_sample_leaves_its_group_and_small_groups_drop_out():
    rewards = {"a": (1.0, Scripted("a"))}
    # Group 0: rewards 1, 0, 0 and a failure -> renormalised over the three scored samples.
    # Group 1: one scored sample left -> drops out. Group 2: all equal -> skipped only with skip_uniform_groups.
    texts = ["1", "0", "0", "err", "1", "err", "slow", "down", "1", "1", "1", "1"]
    total = score_completions(rewards, texts, _rows(12)).total
    adv = group_advantages(total.float().view(3, 4))
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = [(1 - mean) / std, -mean / std, -mean / std, 0.0]
    assert adv.advantages[0].tolist() == pytest.approx(expected)
    assert adv.advantages[1].tolist() == [0.0] * 4
    assert select_groups(total, adv, 4, skip_uniform_groups=True).tolist() == [True, False, False]
    assert select_groups(total, adv, 4, skip_uniform_groups=False).tolist() == [True, False, True]


def test_failure_rate_past_the_limit_stops_naming_the_reward_and_its_error():
    rewards = {"a": (1.0, Scripted("a")), "b": (1.0, Scripted("b"))}
    scores = score_completions(rewards, ["1", "1", "1", "err"], _rows(4))
    check_reward_failures(scores, 0.25, "step 1")  # exactly at the limit: allowed
    with pytest.raises(RewardFailureError, match=r"step 1: reward 'a' .* 1 of 4 .* last error: error: a: boom"):
        check_reward_failures(scores, 0.2, "step 1")


def test_build_rewards_bounds_every_cpu_reward_in_a_pool(tmp_path):
    rewards = build_rewards(tiny_grpo(tmp_path, "reward_timeout_s=3.5"))
    try:
        assert rewards, "the tiny recipe has rewards"
        for _, reward in rewards.values():
            assert isinstance(reward, PooledReward) and reward.timeout_s == 3.5 and reward.workers == 1
    finally:
        for _, reward in rewards.values():
            reward.close()


def test_run_stops_when_rewards_time_out(tmp_path):
    torch.set_num_threads(1)
    # Every sample's scoring is cut off after a microsecond: each reward gives no verdict at all.
    config = tiny_grpo(tmp_path, "train_steps=1", "reward_timeout_s=0.000001")
    with pytest.raises(RewardFailureError, match=r"step 1: reward '(math|think_format)' .* last error: timeout: "):
        run_grpo(config)


class FixedGeneration:
    """A generation worker that returns fixed completion texts per prompt (the engine is not under test)."""

    def __init__(self, tokenizer, texts):
        self.ids = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in group] for group in texts]

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed):
        assert len(prompts) == len(self.ids) and all(len(g) == n for g in self.ids)
        flat = [c for group in self.ids for c in group]
        return Samples(
            prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
            completion_ids=flat,
            logprobs=[[0.0] * len(c) for c in flat],
            finished=[True] * len(flat),
        )


def test_pass_rates_use_each_rows_reward_and_skip_failures():
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    rows = [
        {"id": i, "ground_truth": "x", "messages": [{"role": "user", "content": "q"}], "reward": r}
        for i, r in enumerate(["a", "a", "b"])
    ]
    rewards = {"a": (1.0, Scripted("a")), "b": (1.0, Scripted("b"))}
    generation = FixedGeneration(tokenizer, [["1", "0"], ["1", "err"], ["1", "1"]])
    kwargs = {"samples_per_prompt": 2, "accuracy_reward": "a", "max_new_tokens": 4, "temperature": 1.0, "seed": 0}
    rates = estimate_pass_rates(generation, tokenizer, rows, rewards, max_reward_failure_rate=0.5, **kwargs)
    # Row 1's failed sample leaves its mean; row 2 is scored by its own reward "b" (not 0 for "not applicable").
    assert rates == [0.5, 1.0, 1.0]
    generation = FixedGeneration(tokenizer, [["1", "0"], ["err", "err"], ["1", "1"]])
    with pytest.raises(RewardFailureError, match="reward 'a' gave no verdict on any of the 2 samples of prompt id 1"):
        estimate_pass_rates(generation, tokenizer, rows, rewards, max_reward_failure_rate=0.5, **kwargs)
