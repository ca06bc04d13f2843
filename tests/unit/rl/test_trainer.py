"""The GRPO trainer: a 2-step run writes the expected metrics; an interrupted-then-resumed run matches a straight one."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.launch.recipe_config import RewardSpec
from nemotron_plugins.rewards.base import Reward, RewardResult
from nemotron_plugins.rl.trainer import run_grpo
from nemotron_plugins.runtime.metrics import read_jsonl
from tests.run_configs import tiny_grpo

EXPECTED = {
    "reward/total",
    "reward/math",
    "reward/think_format",
    "accuracy",
    "advantage/mean",
    "advantage/std",
    "groups/skipped_fraction",
    "response_length/mean",
    "tokens_per_s/rollout",
    "lr",
}


def _config(out, steps: int, *overrides: str):
    torch.set_num_threads(1)
    return tiny_grpo(out, f"train_steps={steps}", *overrides)


def _strip(rows):
    return [
        {k: v for k, v in r.items() if k != "timestamp" and not k.startswith(("time/", "tokens_per_s/"))} for r in rows
    ]


def test_two_steps_write_metrics(tmp_path):
    result = run_grpo(_config(tmp_path, 2))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert EXPECTED <= set(rows[-1])
    assert "loss" in rows[-1] and "clip_fraction" in rows[-1]
    assert result.steps == 2 and (tmp_path / "checkpoints").exists()


def test_resume_matches_uninterrupted(tmp_path):
    straight = run_grpo(_config(tmp_path / "a", 3))
    interrupted = run_grpo(_config(tmp_path / "b", 3, "stop_after_steps=2"))
    assert interrupted.steps == 2
    resumed = run_grpo(_config(tmp_path / "b", 3))
    assert resumed.resumed_from == 2
    assert _strip(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == _strip(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert _strip(straight.history)[-1] == _strip(resumed.history)[-1]


class LengthParity(Reward):
    """1 for a completion of odd length in characters, else 0: groups with and without signal on any policy."""

    name = "test_length_parity"

    def score(self, samples):
        return [RewardResult(score=float(len(s.completion) % 2)) for s in samples]


@pytest.fixture
def parity_reward():
    from nemotron_plugins.registry import REWARDS

    REWARDS.register("test_length_parity", f"{__name__}:LengthParity", override=True)
    yield RewardSpec(name="test_length_parity", weight=1.0)


@pytest.mark.parametrize(("rounds", "refill"), [(0, None), (3, None), (3, 1)])
def test_dynamic_sampling_refills_the_batch_from_extra_rollouts(tmp_path, parity_reward, rounds, refill):
    config = _config(
        tmp_path,
        2,
        "algorithm.skip_uniform_groups=true",
        f"algorithm.max_refill_rounds={rounds}",
        f"algorithm.refill_prompts={'null' if refill is None else refill}",
    )
    config.rewards = [*config.rewards, parity_reward]
    result = run_grpo(config)
    g, wanted = 4, 2
    per_round = wanted if refill is None else refill  # prompts a refill round generates for
    for h in result.history:
        drawn_groups = wanted + per_round * h["dynamic_sampling/rounds"]
        assert h["dynamic_sampling/extra_rollouts"] == (drawn_groups - wanted) * g
        with_signal = round(drawn_groups * (1 - h["groups/skipped_fraction"]))
        assert h["groups/kept"] == min(wanted, with_signal)
        assert h["train/sequences"] == h["groups/kept"] * g
        assert h["dynamic_sampling/rounds"] <= rounds
        if h["dynamic_sampling/rounds"] < rounds:  # stopped early: the batch is full
            assert h["groups/kept"] == wanted
        if rounds == 0:
            assert h["dynamic_sampling/extra_rollouts"] == 0


def test_epochs_keep_full_batches_and_the_lr_schedule_follows_the_optimizer_block(tmp_path, parity_reward):
    # 8 samples per rollout, global batch 8, 2 epochs: 2 optimizer steps per rollout, each on all 8 samples (the old
    # split halved the batch and took 4). Warmup over 4 optimizer steps, then linear decay to 0 at the run's 6th.
    lr = 1e-3
    config = _config(
        tmp_path,
        3,
        "algorithm.epochs_per_rollout=2",
        "optimizer.warmup_steps=4",
        "optimizer.lr_schedule=linear",
        f"optimizer.lr={lr}",
    )
    config.rewards = [*config.rewards, parity_reward]  # non-zero advantages on a random policy
    result = run_grpo(config)
    steps = [h["optimizer_steps"] for h in result.history]
    assert steps == [2.0, 2.0, 2.0]
    assert [h["train/sequences"] for h in result.history] == [8.0, 8.0, 8.0]
    assert [h["lr"] for h in result.history] == pytest.approx([lr * 2 / 4, lr * 4 / 4, 0.0])
    # The generator (the megatron engine: the policy itself) against the OLD policy: the same weights, so the gap is
    # numerical noise even after the first epoch's update moved the policy (lr 1e-3).
    for h in result.history:
        assert abs(h["generator_trainer_logprob_diff"]) < 1e-4
    # The second epoch of step 2 sees a moved policy (step 1's first optimizer step ran at the warmup's lr 0).
    assert result.history[1]["ratio_max"] > 1.0 + 1e-4
