"""The algorithm options of issue 17 on hand-computed tensors: leave-one-out std, Dr. GRPO, GSPO, dual clip, k3
clamps, DAPO's overlong filtering and soft overlong penalty, and the registered presets.

Agreement with TRL's own code for the options TRL implements is in ``test_rl_trl_agreement.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemotron_plugins.registry import ALGORITHMS
from nemotron_plugins.rl.advantages import group_advantages
from nemotron_plugins.rl.algorithms import GRPO
from nemotron_plugins.rl.config import GRPOConfig, GRPOConfigError
from nemotron_plugins.rl.loss import PolicyLossConfig, compute_policy_loss, kl_k3

NAN = float("nan")


def _lp(values):
    return torch.log(torch.tensor(values, dtype=torch.float64))


# ---- leave-one-out std ------------------------------------------------------------------------------------------


def test_leave_one_out_std_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, NAN, 0.9, 0.1], [1.0, 0.0, NAN, NAN]], dtype=torch.float64)
    a = group_advantages(rewards, leave_one_out=True, leave_one_out_std=True)
    # group 0, sample 0: the others [0, 0, 0] agree (std 0): the raw difference 1 - 0 stays undivided.
    # samples 1-3: others [1, 0, 0], mean 1/3, unbiased var ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3.
    s = math.sqrt(1 / 3)
    assert a.advantages[0].tolist() == pytest.approx([1.0, -(1 / 3) / s, -(1 / 3) / s, -(1 / 3) / s])
    assert a.std[0].tolist() == pytest.approx([0.0, s, s, s])
    # group 1 (sample 1 unscorable): sample 0's others [0.9, 0.1]: mean 0.5, std sqrt(0.16 + 0.16);
    # sample 2's others [0.3, 0.1]: mean 0.2, std sqrt(0.02); sample 3's others [0.3, 0.9]: mean 0.6, std sqrt(0.18)
    expected = [(0.3 - 0.5) / math.sqrt(0.32), 0.0, (0.9 - 0.2) / math.sqrt(0.02), (0.1 - 0.6) / math.sqrt(0.18)]
    assert a.advantages[1].tolist() == pytest.approx(expected)
    assert a.std[1, 1] == 0 and math.isnan(a.baseline[1, 1])
    # group 2: two scorable samples, each has one other: no std, the leave-one-out difference +-1 stays
    assert a.advantages[2].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])

    biased = group_advantages(rewards, leave_one_out=True, leave_one_out_std=True, std_unbiased=False)
    # divide by the number of others: sample 1 of group 0 has var (4/9 + 2/9) / 3 = 2/9
    assert biased.advantages[0, 1].item() == pytest.approx(-(1 / 3) / math.sqrt(2 / 9))
    # the group-std variant divides every sample by the same std
    whole = group_advantages(rewards, leave_one_out=True)
    assert whole.std[0].unique().numel() == 1 and not torch.allclose(whole.advantages[0], a.advantages[0])


def test_leave_one_out_std_from_config_and_refused_alone():
    cfg = ALGORITHMS.get("loo_grpo").default_config(num_prompts_per_rollout=1, num_generations=4)
    assert cfg.leave_one_out_std and cfg.leave_one_out_baseline and cfg.normalize_advantages_by_std
    out = GRPO.advantages([[1.0, 0.0, 0.0, 0.0]], cfg).advantages[0]
    assert out.tolist() == pytest.approx([1.0, -math.sqrt(1 / 3), -math.sqrt(1 / 3), -math.sqrt(1 / 3)])
    with pytest.raises(GRPOConfigError, match=r"GRPOConfig\.leave_one_out_std = True"):
        GRPOConfig(leave_one_out_std=True)
    with pytest.raises(GRPOConfigError, match=r"GRPOConfig\.leave_one_out_std"):
        GRPOConfig(leave_one_out_std=True, leave_one_out_baseline=True, normalize_advantages_by_std=False)
    with pytest.raises(ValueError, match="leave_one_out_std needs"):
        group_advantages(torch.ones(1, 2), leave_one_out_std=True)


# ---- Dr. GRPO -----------------------------------------------------------------------------------------------------


def test_dr_grpo_advantages_and_constant_normaliser():
    cfg = ALGORITHMS.get("dr_grpo").default_config(num_prompts_per_rollout=1, num_generations=4)
    assert not cfg.normalize_advantages_by_std and cfg.loss_aggregation == "constant"
    assert GRPO.advantages([[1.0, 0.0, 0.0, 3.0]], cfg).advantages[0].tolist() == [0.0, -1.0, -1.0, 2.0]

    # two sequences of 2 and 3 completion tokens, ratio 1 everywhere: the per-token loss is -A
    lp = _lp([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, _ = compute_policy_loss(lp, lp.detach(), adv, mask, cfg=cfg, max_response_length=4)
    assert loss.item() == pytest.approx((-1.0 * 2 + 2.0 * 3) / (2 * 4))  # / (sequences x budget), not / 5 tokens
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.flatten().tolist() == pytest.approx([-1 / 8, -1 / 8, 0.0, 2 / 8, 2 / 8, 2 / 8])
    # the global batch's sequence count replaces the local one (gradient accumulation / DP)
    loss6, _ = compute_policy_loss(
        lp, lp.detach(), adv, mask, cfg=cfg, max_response_length=4, total_sequences_in_global_batch=6
    )
    assert loss6.item() == pytest.approx(4.0 / 24)
    with pytest.raises(ValueError, match=r"loss_aggregation='constant' \(Dr. GRPO\) needs max_response_length"):
        compute_policy_loss(lp, lp.detach(), adv, mask, cfg=cfg)


# ---- GSPO ---------------------------------------------------------------------------------------------------------


def test_gspo_sequence_ratio_hand_computed():
    cfg = PolicyLossConfig(epsilon=0.2, ratio_level="sequence", loss_aggregation="sequence")
    old = _lp([[0.5, 0.5, 0.5, 0.5]])
    # token ratios 2, 0.5, 1.0 and a padding token with ratio 1.8: geometric mean of the 3 real ones = 1
    new = _lp([[1.0, 0.25, 0.5, 0.9]]).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, m = compute_policy_loss(new, old, torch.tensor([1.0]), mask, cfg=cfg)
    assert loss.item() == pytest.approx(-1.0)  # the token-level loss would clip the ratio-2 token
    assert m["ratio_mean"] == pytest.approx(1.0) and m["ratio_max"] == pytest.approx(1.0)
    (grad,) = torch.autograd.grad(loss, new)
    # d(-s A)/d logp_t = -s A / |y| on real tokens, 0 on padding
    assert grad[0].tolist() == pytest.approx([-1 / 3, -1 / 3, -1 / 3, 0.0])

    # token ratios 1.5 and 1.5 * 4/3 = 2: s = sqrt(3) > 1.2, clipped as one sequence: no gradient for A > 0
    new2 = _lp([[0.75, 1.0, 0.5, 0.5]]).requires_grad_()
    mask2 = torch.tensor([[1, 1, 0, 0]])
    loss2, m2 = compute_policy_loss(new2, old, torch.tensor([2.0]), mask2, cfg=cfg)
    assert loss2.item() == pytest.approx(-1.2 * 2.0)
    assert m2["clip_high_fraction"] == 1.0 and m2["ratio_max"] == pytest.approx(math.sqrt(3))
    (grad2,) = torch.autograd.grad(loss2, new2)
    assert grad2.abs().max() == 0
    # here the token-level loss clips both tokens to the same value
    tok, _ = compute_policy_loss(
        new2, old, torch.tensor([2.0]), mask2, cfg=PolicyLossConfig(loss_aggregation="sequence")
    )
    assert tok.item() == pytest.approx(-(1.2 * 2 + 1.2 * 2) / 2) and tok.item() == pytest.approx(loss2.item())
    new3 = _lp([[0.75, 0.4, 0.5, 0.5]])  # ratios 1.5, 0.8: tokens clip one of two, the sequence ratio sqrt(1.2) not
    seq3, _ = compute_policy_loss(new3, old, torch.tensor([1.0]), mask2, cfg=cfg)
    tok3, _ = compute_policy_loss(
        new3, old, torch.tensor([1.0]), mask2, cfg=PolicyLossConfig(loss_aggregation="sequence")
    )
    assert seq3.item() == pytest.approx(-math.sqrt(1.2)) and tok3.item() == pytest.approx(-(1.2 + 0.8) / 2)

    preset = ALGORITHMS.get("gspo").default_config()
    assert (preset.ratio_level, preset.loss_aggregation, preset.epsilon, preset.clip_high) == (
        "sequence",
        "sequence",
        3e-4,
        4e-4,
    )


# ---- dual clip ----------------------------------------------------------------------------------------------------


def test_dual_clip_hand_computed():
    old = _lp([[0.1, 0.1, 0.1]])
    new = _lp([[0.5, 0.2, 0.5]]).requires_grad_()  # ratios 5, 2, 5
    adv = torch.tensor([[-1.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    cfg = PolicyLossConfig(epsilon=0.2, dual_clip=3.0)
    loss, m = compute_policy_loss(new, old, adv, mask, cfg=cfg)
    # A < 0: max(r, clip(r)) * |A| = 5 and 2; the dual clip caps the first at 3. A > 0: -min(5, 1.2) = -1.2
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert m["dual_clip_fraction"] == pytest.approx(1 / 3)
    (grad,) = torch.autograd.grad(loss, new)
    assert grad[0].tolist() == pytest.approx([0.0, 2.0 / 3, 0.0])  # held and clipped tokens carry no gradient
    plain, m0 = compute_policy_loss(new, old, adv, mask, cfg=PolicyLossConfig(epsilon=0.2))
    assert plain.item() == pytest.approx((5.0 + 2.0 - 1.2) / 3) and m0["dual_clip_fraction"] == 0.0
    for bad in (1.0, 0.5):
        with pytest.raises(GRPOConfigError, match=r"GRPOConfig\.dual_clip ="):
            GRPOConfig(dual_clip=bad)


# ---- k3 clamps ----------------------------------------------------------------------------------------------------


def test_k3_input_and_output_clamps():
    logp = torch.tensor([[-30.0, -1.0, -2.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    raw = kl_k3(logp, ref)
    assert raw[0, 0].item() == pytest.approx(math.exp(30) - 31) and raw[0, 1].item() == pytest.approx(math.e - 2)
    only_in = kl_k3(logp, ref, input_clamp=20.0)
    assert only_in[0, 0].item() == pytest.approx(math.exp(20) - 21)
    both = kl_k3(logp, ref, input_clamp=20.0, output_clamp=10.0)
    # r = 30 -> clamped to 20 -> k3 clamped to 10; r = 1 -> e - 2 untouched; r = 2.5 -> e^2.5 - 3.5 = 8.68 untouched
    assert both[0].tolist() == pytest.approx([10.0, math.e - 2, math.exp(2.5) - 3.5])
    (grad,) = torch.autograd.grad(both.sum(), logp)
    assert grad[0, 0] == 0 and grad[0, 1].item() == pytest.approx(-(math.e - 1))  # d/dlogp (e^r - 1 - r) = 1 - e^r

    # through the loss with the GRPOConfig defaults (NeMo-RL / verl: 20 and 10)
    cfg = GRPOConfig(beta=0.1)
    assert (cfg.kl_input_clamp, cfg.kl_output_clamp) == (20.0, 10.0)
    lp = logp.detach()
    loss, m = compute_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 3), cfg=cfg, ref_logprobs=ref)
    assert m["kl"] == pytest.approx((10.0 + math.e - 2 + math.exp(2.5) - 3.5) / 3)
    unclamped = cfg.replace(kl_input_clamp=None, kl_output_clamp=None)
    _, m_raw = compute_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 3), cfg=unclamped, ref_logprobs=ref)
    assert m_raw["kl"] == pytest.approx((math.exp(30) - 31 + math.e - 2 + math.exp(2.5) - 3.5) / 3)
    for name in ("kl_input_clamp", "kl_output_clamp"):
        with pytest.raises(GRPOConfigError, match=rf"GRPOConfig\.{name} ="):
            GRPOConfig(**{name: 0.0})


# ---- DAPO: overlong filtering and soft overlong penalty -----------------------------------------------------------


def test_overlong_filtering_masks_truncated_samples():
    finished = torch.tensor([True, False, True, False])
    assert GRPO.loss_sample_mask(finished, GRPOConfig()).tolist() == [True] * 4
    assert GRPO.loss_sample_mask(finished, GRPOConfig(overlong_filtering=True)).tolist() == [True, False, True, False]


def test_soft_overlong_penalty_hand_computed():
    cfg = GRPOConfig(overlong_buffer=4, overlong_penalty=0.5)
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, NAN], dtype=torch.float64)
    lengths = torch.tensor([5, 6, 7, 8, 10, 10], dtype=torch.float64)
    finished = torch.tensor([True, True, True, True, False, False])
    out = GRPO.shape_rewards(rewards, lengths, finished, cfg, max_response_length=10)
    # budget 10, buffer 4: no penalty up to 6 tokens, then 0.5 * (n - 6) / 4
    assert out[:5].tolist() == pytest.approx([1.0, 1.0, -0.125, 0.75, 0.5])
    assert math.isnan(out[5])  # an unscorable sample stays unscorable (never a number)
    # off by default: unchanged, no budget needed
    assert GRPO.shape_rewards(rewards, lengths, finished, GRPOConfig()) is rewards
    with pytest.raises(ValueError, match=r"algorithm\.overlong_buffer=4 .* needs the generation budget"):
        GRPO.shape_rewards(rewards, lengths, finished, cfg)
    with pytest.raises(ValueError, match=r"algorithm\.overlong_buffer=4 must be < generation\.max_new_tokens=4"):
        GRPO.shape_rewards(rewards, lengths, finished, cfg, max_response_length=4)
    with pytest.raises(GRPOConfigError, match=r"GRPOConfig\.overlong_buffer ="):
        GRPOConfig(overlong_buffer=-1)
    with pytest.raises(GRPOConfigError, match=r"GRPOConfig\.overlong_penalty ="):
        GRPOConfig(overlong_penalty=0.0)


def test_dapo_preset():
    cfg = ALGORITHMS.get("dapo").default_config(num_generations=4, overlong_buffer=2)
    assert cfg.algorithm == "grpo" and (cfg.epsilon, cfg.clip_high, cfg.beta) == (0.2, 0.28, 0.0)
    assert cfg.overlong_filtering and cfg.overlong_buffer == 2 and cfg.loss_aggregation == "token"
    dapo = ALGORITHMS.get("dapo")
    shaped = dapo.shape_rewards(
        torch.tensor([1.0, 1.0]), torch.tensor([3.0, 4.0]), torch.tensor([True, False]), cfg, max_response_length=4
    )
    assert shaped.tolist() == pytest.approx([0.5, 0.0])
    assert dapo.loss_sample_mask(torch.tensor([True, False]), cfg).tolist() == [True, False]


# ---- config ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ratio_level": "group"}, "ratio_level"),
        ({"loss_aggregation": "tokens"}, "loss_aggregation"),
        ({"overlong_buffer": 1.5}, "overlong_buffer"),
        ({"dual_clip": True}, "dual_clip"),
    ],
)
def test_option_values_are_checked(changes, field):
    with pytest.raises(GRPOConfigError, match=rf"GRPOConfig\.{field} ="):
        GRPOConfig(**changes)


def test_presets_registered_and_same_loss():
    for name in ("loo_grpo", "dr_grpo", "gspo", "dapo"):
        algo = ALGORITHMS.get(name)
        assert algo.name == name and algo.description
        cfg = algo.default_config(num_prompts_per_rollout=2, num_generations=4)
        assert cfg.algorithm == "grpo"  # a GRPO-task recipe runs it; the fields make the difference
        assert cfg.num_generations == 4


# ---- through the trainer ------------------------------------------------------------------------------------------


def test_options_run_through_the_trainer(tmp_path):
    """One GRPO step of the tiny recipe with every loss / advantage option on: the trainer hands the generation
    budget to the hooks (the constant normaliser and the soft overlong penalty need it) and the update runs."""
    import math as _math

    from nemotron_plugins.rl.trainer import run_grpo
    from nemotron_plugins.runtime.metrics import read_jsonl
    from tests.run_configs import tiny_grpo

    torch.set_num_threads(1)
    config = tiny_grpo(
        tmp_path,
        "train_steps=1",
        "algorithm.leave_one_out_baseline=true",
        "algorithm.leave_one_out_std=true",
        "algorithm.loss_aggregation=constant",
        "algorithm.ratio_level=sequence",
        "algorithm.dual_clip=3.0",
        "algorithm.epsilon_high=0.28",
        "algorithm.overlong_buffer=4",
        "algorithm.overlong_penalty=0.5",
        "algorithm.beta=0.01",
    )
    run_grpo(config)
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert row["train/sequences"] > 0
    assert _math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert 0.0 <= row["dual_clip_fraction"] <= 1.0  # logged when the dual clip is on
