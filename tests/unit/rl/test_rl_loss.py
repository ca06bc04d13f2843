from __future__ import annotations

import math

import pytest
import torch

from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.rl.logprobs import token_logprobs
from nemotron_plugins.rl.loss import PolicyLossConfig, compute_policy_loss, global_token_count, kl_k3


def _lp(values):
    return torch.log(torch.tensor(values, dtype=torch.float64))


def test_ratios_and_clipping_hand_computed():
    # one sequence, 4 tokens; old probs 0.5 everywhere, new probs chosen to give ratios 1.0, 1.5, 0.5, 1.1
    old = _lp([[0.5, 0.5, 0.5, 0.5]])
    new = _lp([[0.5, 0.75, 0.25, 0.55]]).requires_grad_()
    mask = torch.ones(1, 4)
    cfg = PolicyLossConfig(epsilon=0.2)
    # positive advantage: min(r*A, clip(r)*A) -> 1.0, 1.2 (clipped), 0.5, 1.1
    loss, m = compute_policy_loss(new, old, torch.tensor([1.0]), mask, cfg=cfg)
    assert loss.item() == pytest.approx(-(1.0 + 1.2 + 0.5 + 1.1) / 4)
    assert m["clip_fraction"] == pytest.approx(0.25) and m["clip_high_fraction"] == pytest.approx(0.25)
    assert m["ratio_max"] == pytest.approx(1.5) and m["ratio_mean"] == pytest.approx((1 + 1.5 + 0.5 + 1.1) / 4)
    loss.backward()
    # d/dlogp of -r*A/4 = -r/4 where unclipped; 0 on the clipped token
    assert torch.allclose(new.grad, torch.tensor([[-0.25, 0.0, -0.125, -1.1 / 4]], dtype=torch.float64))

    # negative advantage: -min(-r, -clip(r)) = max(r, clip(r)) -> 1.0, 1.5, 0.8 (clipped), 1.1
    loss, m = compute_policy_loss(new, old, torch.tensor([-1.0]), mask, cfg=cfg)
    assert loss.item() == pytest.approx((1.0 + 1.5 + 0.8 + 1.1) / 4)
    assert m["clip_low_fraction"] == pytest.approx(0.25) and m["clip_high_fraction"] == 0.0


def test_asymmetric_upper_clip():
    old = _lp([[0.5, 0.5]])
    new = _lp([[0.75, 0.25]])
    loss, _ = compute_policy_loss(new, old, torch.tensor([2.0]), torch.ones(1, 2), cfg=GRPOConfig(epsilon_high=0.28))
    assert loss.item() == pytest.approx(-(1.28 * 2 + 0.5 * 2) / 2)


def test_kl_k3_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.0, -1.5]], dtype=torch.float64)
    r = ref - logp  # 0, 1, -1
    expected = [0.0, math.e - 2.0, math.exp(-1) - 1 + 1]
    assert kl_k3(logp, ref)[0].tolist() == pytest.approx(expected)
    assert (kl_k3(logp, ref) >= 0).all() and torch.equal(kl_k3(logp, ref), torch.exp(r) - 1 - r)
    cfg = PolicyLossConfig(beta=0.1)
    # ratio 1 everywhere (old == new), A = 0: only the KL term remains
    loss, m = compute_policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 3), cfg=cfg, ref_logprobs=ref)
    assert loss.item() == pytest.approx(0.1 * sum(expected) / 3)
    assert m["kl"] == pytest.approx(sum(expected) / 3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 3), cfg=cfg)


def test_token_vs_sequence_aggregation():
    # seq 0 has 1 valid token with loss -2 (A=2, ratio 1); seq 1 has 3 valid tokens with loss +1 each (A=-1)
    lp = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, -1.0])
    tok, m = compute_policy_loss(lp, lp, adv, mask, cfg=PolicyLossConfig())
    seq, _ = compute_policy_loss(lp, lp, adv, mask, cfg=PolicyLossConfig(loss_aggregation="sequence"))
    assert tok.item() == pytest.approx((-2 + 3) / 4)
    assert seq.item() == pytest.approx((-2 + 1) / 2)
    assert m["num_tokens"] == 4


def test_importance_sampling_weights_truncated():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64))
    gen = torch.log(torch.tensor([[0.5, 0.1, 0.4]], dtype=torch.float64))  # weights 1, 5 -> cap 2, 1.25
    cfg = PolicyLossConfig(importance_sampling_correction=True, importance_sampling_cap=2.0)
    loss, m = compute_policy_loss(old, old, torch.tensor([1.0]), torch.ones(1, 3), cfg=cfg, generator_logprobs=gen)
    assert loss.item() == pytest.approx(-(1 + 2 + 1.25) / 3)
    assert m["is_weight_max"] == pytest.approx(2.0) and m["is_weight_min"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="generator_logprobs"):
        compute_policy_loss(old, old, torch.tensor([1.0]), torch.ones(1, 3), cfg=cfg)


def test_micro_batches_sum_to_the_global_token_mean():
    torch.manual_seed(0)
    b, t = 6, 5
    logits = torch.randn(b, t, requires_grad=True)
    old = (logits.detach() + 0.3 * torch.randn(b, t)).clamp(max=-0.01)
    mask = (torch.rand(b, t) > 0.3).long()
    mask[:, 0] = 1
    adv = torch.randn(b)
    ref = old - 0.1
    cfg = PolicyLossConfig(beta=0.05, epsilon=0.2)
    lp = torch.nn.functional.logsigmoid(logits)
    full, _ = compute_policy_loss(lp, old, adv, mask, cfg=cfg, ref_logprobs=ref)
    (g_full,) = torch.autograd.grad(full, logits)

    splits = [slice(0, 1), slice(1, 4), slice(4, 6)]
    n_tok = global_token_count(mask[s] for s in splits)
    assert n_tok == int(mask.sum())
    total = 0.0
    grad = torch.zeros_like(logits)
    for s in splits:
        lp_s = torch.nn.functional.logsigmoid(logits)[s]
        part, _ = compute_policy_loss(
            lp_s, old[s], adv[s], mask[s], cfg=cfg, ref_logprobs=ref[s], total_tokens_in_global_batch=n_tok
        )
        total += part.item()
        (g,) = torch.autograd.grad(part, logits)
        grad += g
    assert total == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(grad, g_full, atol=1e-7)


def test_shape_errors_name_the_argument():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logprobs"):
        compute_policy_loss(lp, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3), cfg=PolicyLossConfig())
    with pytest.raises(ValueError, match="advantages"):
        compute_policy_loss(lp, lp, torch.zeros(3), torch.ones(2, 3), cfg=PolicyLossConfig())
    with pytest.raises(TypeError, match="epsilon"):
        compute_policy_loss(lp, lp, torch.zeros(2), torch.ones(2, 3), cfg=object())


def test_token_logprobs_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 2]])
    got = token_logprobs(logits, ids, temperature=2.0)
    expected = torch.log_softmax(logits / 2.0, -1)[0, [0, 1], [0, 2]]
    assert torch.allclose(got[0], expected)
