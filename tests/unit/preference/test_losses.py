"""Preference losses on hand-computed tensors: Bradley-Terry, DPO, RPO (each distance), DPO as RPO's limit."""

from __future__ import annotations

import math

import pytest
import torch

from nemotron_plugins.preference.losses import (
    bradley_terry_loss,
    dpo_loss,
    implicit_reward_gap,
    rpo_distance,
    rpo_loss,
    sequence_logps,
)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bradley_terry_by_hand() -> None:
    chosen = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    expected = [-math.log(_sig(1.0)), math.log(2.0), -math.log(_sig(-2.0))]
    assert bradley_terry_loss(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-12)
    # A margin the chosen reward must clear: -log sigmoid(r_c - r_r - m).
    margin = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    expected_m = [-math.log(_sig(0.5)), -math.log(_sig(-1.0)), -math.log(_sig(-2.0))]
    assert bradley_terry_loss(chosen, rejected, margin).tolist() == pytest.approx(expected_m, rel=1e-12)


def test_bradley_terry_gradient_pushes_the_pair_apart() -> None:
    chosen = torch.tensor([0.3], requires_grad=True)
    rejected = torch.tensor([0.1], requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    # d/dr_c = -(1 - sigmoid(0.2)), d/dr_r = +(1 - sigmoid(0.2))
    assert chosen.grad.item() == pytest.approx(-(1 - _sig(0.2)), rel=1e-6)
    assert rejected.grad.item() == pytest.approx(1 - _sig(0.2), rel=1e-6)


# One pair with hand-picked sequence log-probs: policy chosen / rejected, reference chosen / rejected.
PC, PR, RC, RR = -10.0, -12.0, -11.0, -11.5
H_RAW = (PC - RC) - (PR - RR)  # = 1.0 - (-0.5) = 1.5


def _t(x: float) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float64)


def test_implicit_gap_and_dpo_by_hand() -> None:
    assert implicit_reward_gap(_t(PC), _t(PR), _t(RC), _t(RR), 0.1).item() == pytest.approx(0.15)
    assert dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=0.1).item() == pytest.approx(-math.log(_sig(0.15)))


@pytest.mark.parametrize("distance", ["bwd_kl", "fwd_kl", "sq"])
def test_rpo_by_hand(distance: str) -> None:
    beta, eta, rc, rr = 0.2, 3.0, 0.7, 0.2
    h, g = beta * H_RAW, eta * (rc - rr)  # 0.3, 1.5
    ph, pg = _sig(h), _sig(g)
    expected = {
        "bwd_kl": pg * math.log(pg / ph) + (1 - pg) * math.log((1 - pg) / (1 - ph)),
        "fwd_kl": ph * math.log(ph / pg) + (1 - ph) * math.log((1 - ph) / (1 - pg)),
        "sq": (h - g) ** 2,
    }[distance]
    got = rpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), _t(rc), _t(rr), beta=beta, reward_scale=eta, distance=distance)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("distance", ["bwd_kl", "fwd_kl", "sq"])
def test_rpo_is_zero_where_the_implicit_gap_matches_the_reward_gap(distance: str) -> None:
    h = torch.tensor([-2.0, 0.0, 0.4, 7.0], dtype=torch.float64)
    assert rpo_distance(h, h.clone(), distance).abs().max().item() < 1e-12
    assert (rpo_distance(h, h + 0.5, distance) > 0).all()


def test_dpo_is_rpo_bwd_kl_with_a_certain_reward_gap() -> None:
    """With ``eta (r_c - r_r) -> +inf`` the reward model's preference is certain and bwd-KL RPO is DPO exactly."""
    gen = torch.Generator().manual_seed(0)
    logps = [torch.randn(16, generator=gen, dtype=torch.float64) * 5 - 20 for _ in range(4)]
    rc, rr = torch.full((16,), 1.0, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    rpo = rpo_loss(*logps, rc, rr, beta=0.1, reward_scale=1e4, distance="bwd_kl")
    dpo = dpo_loss(*logps, beta=0.1)
    torch.testing.assert_close(rpo, dpo, rtol=0, atol=1e-12)


def test_rpo_pushes_back_when_the_implicit_gap_overshoots() -> None:
    """DPO always widens the gap; RPO narrows it once it is past the reward model's."""
    pc = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(1, dtype=torch.float64)
    # h = beta * pc = 5 while g = 1: RPO's gradient on pc is positive (descent lowers the chosen log-prob).
    rpo_loss(pc + 50.0, zeros, zeros, zeros, _t(1.0), _t(0.0), beta=0.1, reward_scale=1.0).sum().backward()
    assert pc.grad.item() > 0
    pc.grad = None
    dpo_loss(pc + 50.0, zeros, zeros, zeros, beta=0.1).sum().backward()
    assert pc.grad.item() < 0


def test_unknown_distance_is_refused() -> None:
    with pytest.raises(ValueError, match="distance='l1'"):
        rpo_distance(torch.zeros(1), torch.zeros(1), "l1")


def test_sequence_logps_sum_reply_tokens_only() -> None:
    token = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert sequence_logps(token, mask).tolist() == [-5.0, -0.5]
