from __future__ import annotations

import math

import pytest
import torch

from nemotron_plugins.rl.advantages import group_advantages


def test_grpo_hand_computed():
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: identical rewards -> no signal.
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    a = group_advantages(r)
    s = math.sqrt(1 / 3)
    assert torch.allclose(a.advantages[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)
    assert torch.equal(a.advantages[1], torch.zeros(4))
    assert a.zero_std_groups.tolist() == [False, True]
    assert torch.allclose(a.std[0], torch.full((4,), s))


def test_population_std_and_epsilon():
    r = torch.tensor([[2.0, 0.0]])
    assert torch.allclose(group_advantages(r, std_unbiased=False).advantages, torch.tensor([[1.0, -1.0]]))
    # unbiased std of [2, 0] is sqrt(2)
    eps = 1e-4
    got = group_advantages(r, std_epsilon=eps).advantages
    assert torch.allclose(got, torch.tensor([[1.0, -1.0]]) / (math.sqrt(2) + eps))


def test_leave_one_out_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    a = group_advantages(r, leave_one_out=True, normalize_by_std=False)
    # baseline_i = mean of the other three
    assert torch.allclose(a.baseline, torch.tensor([[2 / 3, 1.0, 1.0, 1 / 3]]))
    assert torch.allclose(a.advantages, torch.tensor([[1 / 3, -1.0, -1.0, 5 / 3]]))
    # identity: loo advantage = n/(n-1) * (r - mean)
    plain = group_advantages(r, normalize_by_std=False).advantages
    assert torch.allclose(a.advantages, plain * 4 / 3)


def test_nan_rewards_are_excluded():
    r = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, float("nan")]])
    a = group_advantages(r, normalize_by_std=False)
    assert torch.allclose(a.advantages[0], torch.tensor([0.5, 0.0, -0.5]))
    assert torch.equal(a.advantages[1], torch.zeros(3))  # a single valid sample has no baseline to beat
    assert a.valid.tolist() == [[True, False, True], [False, True, False]]
    assert a.zero_std_groups.tolist() == [False, True]
    loo = group_advantages(r, leave_one_out=True, normalize_by_std=False)
    assert torch.allclose(loo.advantages[0], torch.tensor([1.0, 0.0, -1.0]))


def test_flat_rewards_and_errors():
    flat = torch.tensor([1.0, 0.0, 5.0, 5.0])
    assert torch.equal(group_advantages(flat, group_size=2).advantages, group_advantages(flat.view(2, 2)).advantages)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(flat)
    with pytest.raises(ValueError, match="groups of group_size=3"):
        group_advantages(flat, group_size=3)


def test_invariant_to_reward_shift_and_scale():
    torch.manual_seed(0)
    r = torch.rand(5, 8)
    a = group_advantages(r).advantages
    assert torch.allclose(group_advantages(3.0 * r - 7.0).advantages, a, atol=1e-5)
    # normalised advantages of each group have zero mean and unbiased std 1
    assert torch.allclose(a.mean(1), torch.zeros(5), atol=1e-6)
    assert torch.allclose(a.std(1), torch.ones(5), atol=1e-5)
