"""Our advantages and clipped loss against TRL 1.16's GRPOTrainer / RLOOTrainer on the same tensors.

A real (tiny, CPU) TRL trainer is built once; its advantage code runs through ``_generate_and_score_completions``
with a reward function returning fixed rewards, and its loss through ``_compute_loss`` with the policy log-prob
computation replaced by our tensors. TRL's loss types map to ours as: ``grpo`` = sequence averaging (local),
``bnpo`` = token averaging over the micro-batch, ``dapo`` = token averaging over the global batch
(``num_items_in_batch``).
"""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.rl.advantages import advantages_from_config, group_advantages
from nemotron_plugins.rl.algorithms import GRPO
from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.rl.loss import compute_policy_loss

trl = pytest.importorskip("trl")
pytest.importorskip("datasets")

REWARDS = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.3, None, 0.9, 0.1, None, 5.0, None, None]
GROUP = 4


def _tiny_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>", *"abcdefghij "])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model_cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(model_cfg), hf_tok


def _reward_fn(prompts, completions, **kwargs):
    return REWARDS[: len(completions)]


def _common_args(tmp_dir):
    return dict(
        output_dir=str(tmp_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=len(REWARDS),
        num_generations=GROUP,
        max_completion_length=3,
        save_strategy="no",
        seed=0,
    )


@pytest.fixture(scope="module")
def trl_grpo(tmp_path_factory):
    from datasets import Dataset

    torch.set_num_threads(1)
    model, tok = _tiny_parts()
    args = trl.GRPOConfig(**_common_args(tmp_path_factory.mktemp("grpo")), use_vllm=False)
    ds = Dataset.from_dict({"prompt": ["abc", "def", "ghi", "jab"]})
    return trl.GRPOTrainer(model=model, reward_funcs=_reward_fn, args=args, train_dataset=ds, processing_class=tok)


def _prompts():
    return [{"prompt": p} for p in ["abc", "def", "ghi", "jab"] for _ in range(GROUP)]


def _rewards_tensor():
    return torch.tensor([float("nan") if r is None else r for r in REWARDS]).view(-1, GROUP)


def test_grpo_advantages_match_trl(trl_grpo):
    with torch.no_grad():
        out = trl_grpo._generate_and_score_completions(_prompts())
    ours = group_advantages(_rewards_tensor(), std_epsilon=1e-4).flat()  # TRL divides by (std + 1e-4)
    assert torch.allclose(out["advantages"].float(), ours, atol=1e-6), (out["advantages"], ours)
    # the constant group and the groups with < 2 scorable samples carry no signal in both
    assert ours[4:8].abs().max() == 0 and ours[12:].abs().max() == 0


def test_rloo_advantages_match_trl(tmp_path):
    from datasets import Dataset

    torch.set_num_threads(1)
    model, tok = _tiny_parts()
    args = trl.RLOOConfig(**_common_args(tmp_path), use_vllm=False, beta=0.0)  # KL-in-reward off: rewards only
    ds = Dataset.from_dict({"prompt": ["abc", "def", "ghi", "jab"]})
    trainer = trl.RLOOTrainer(model=model, reward_funcs=_reward_fn, args=args, train_dataset=ds, processing_class=tok)
    assert not trainer.normalize_advantages and trainer.beta == 0.0
    with torch.no_grad():
        out = trainer._generate_and_score_completions(_prompts())
    ours = group_advantages(_rewards_tensor(), leave_one_out=True, normalize_by_std=False).flat()
    assert torch.allclose(out["advantages"].float(), ours, atol=1e-6), (out["advantages"], ours)


def _loss_tensors(seed=0, b=6, t=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2 - 0.05
    new = (old + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    ref = old + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)
    gen = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=g) > 0.3).long()
    mask[:, 0] = 1
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    return new, old, ref, gen, mask, adv


@pytest.mark.parametrize(
    ("loss_type", "aggregation", "global_tokens"),
    [("grpo", "sequence", False), ("bnpo", "token", False), ("dapo", "token", True)],
)
@pytest.mark.parametrize(("beta", "eps_high", "use_is"), [(0.0, None, False), (0.04, 0.28, False), (0.02, None, True)])
def test_clipped_loss_matches_trl(
    trl_grpo, monkeypatch, loss_type, aggregation, global_tokens, beta, eps_high, use_is
):
    new, old, ref, gen, mask, adv = _loss_tensors()
    cap = 2.0
    extra_global_tokens = 7  # tokens of other micro-batches / ranks in the same global batch
    n_global = int(mask.sum()) + extra_global_tokens

    tr = trl_grpo
    monkeypatch.setattr(tr, "loss_type", loss_type)
    monkeypatch.setattr(tr, "epsilon_low", 0.2)
    monkeypatch.setattr(tr, "epsilon_high", 0.2 if eps_high is None else eps_high)
    monkeypatch.setattr(tr, "beta", beta)
    monkeypatch.setattr(tr, "use_vllm", use_is)
    monkeypatch.setattr(tr, "vllm_importance_sampling_correction", use_is)
    monkeypatch.setattr(tr.args, "use_bias_correction_kl", False)  # plain k3, as in NeMo-RL
    monkeypatch.setattr(tr, "current_gradient_accumulation_steps", 1, raising=False)
    trl_new = new.clone().requires_grad_()
    monkeypatch.setattr(
        tr, "_get_per_token_logps_and_entropies", lambda *a, **k: (trl_new, torch.zeros_like(trl_new), None)
    )
    b, t = new.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "importance_sampling_ratio": torch.exp((old - gen) * mask).clamp(max=cap),
        "num_items_in_batch": torch.tensor(float(n_global if global_tokens else mask.sum())),
    }
    tr.model.train()
    trl_loss = tr._compute_loss(tr.model, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, trl_new)

    cfg = GRPOConfig(
        num_prompts_per_rollout=3,
        num_generations=2,
        epsilon=0.2,
        epsilon_high=eps_high,
        beta=beta,
        loss_aggregation=aggregation,
        importance_sampling_correction=use_is,
        importance_sampling_cap=cap,
    )
    our_new = new.clone().requires_grad_()
    our_loss, metrics = compute_policy_loss(
        our_new,
        old,
        adv,
        mask,
        cfg=cfg,
        ref_logprobs=ref if beta else None,
        generator_logprobs=gen if use_is else None,
        total_tokens_in_global_batch=n_global if global_tokens else None,
    )
    (our_grad,) = torch.autograd.grad(our_loss, our_new)
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(our_grad, trl_grad, rtol=1e-9, atol=1e-12)
    trl_clip = tr._metrics["train"]["clip_ratio/region_mean"][-1]
    assert metrics["clip_fraction"] == pytest.approx(trl_clip)
    assert 0 < metrics["clip_fraction"] < 1  # the tensors exercise both clipped and unclipped tokens
    if beta:
        assert metrics["kl"] == pytest.approx(tr._metrics["train"]["kl"][-1])


# ---- the algorithm options TRL implements (issue 17) ------------------------------------------------------------


def test_dr_grpo_advantages_match_trl(trl_grpo, monkeypatch):
    monkeypatch.setattr(trl_grpo, "scale_rewards", "none")  # TRL's Dr. GRPO advantages: r - group mean
    with torch.no_grad():
        out = trl_grpo._generate_and_score_completions(_prompts())
    cfg = GRPOConfig(num_prompts_per_rollout=4, num_generations=GROUP, normalize_advantages_by_std=False)
    ours = advantages_from_config(_rewards_tensor(), cfg).flat()
    assert torch.allclose(out["advantages"].float(), ours, atol=1e-6), (out["advantages"], ours)


def _trl_and_our_loss(trl_grpo, monkeypatch, *, trl_settings, trl_args, cfg, max_len=None):
    """The same tensors through TRL's ``_compute_loss`` (configured by ``trl_settings`` / ``trl_args``) and ours."""
    new, old, ref, _gen, mask, adv = _loss_tensors(seed=1)
    tr = trl_grpo
    for key, value in {
        "beta": 0.0,
        "use_vllm": False,
        "vllm_importance_sampling_correction": False,
        **trl_settings,
    }.items():
        monkeypatch.setattr(tr, key, value)
    for key, value in {"use_bias_correction_kl": False, **trl_args}.items():
        monkeypatch.setattr(tr.args, key, value)
    monkeypatch.setattr(tr, "current_gradient_accumulation_steps", 1, raising=False)
    trl_new = new.clone().requires_grad_()
    monkeypatch.setattr(
        tr, "_get_per_token_logps_and_entropies", lambda *a, **k: (trl_new, torch.zeros_like(trl_new), None)
    )
    b, t = new.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(mask.sum())),
    }
    tr.model.train()
    trl_loss = tr._compute_loss(tr.model, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, trl_new)
    our_new = new.clone().requires_grad_()
    our_loss, metrics = compute_policy_loss(
        our_new, old, adv, mask, cfg=cfg, ref_logprobs=ref if cfg.beta else None, max_response_length=max_len
    )
    (our_grad,) = torch.autograd.grad(our_loss, our_new)
    return (trl_loss, trl_grad), (our_loss, our_grad), metrics


def _close(trl_out, our_out):
    (trl_loss, trl_grad), (our_loss, our_grad) = trl_out, our_out
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(our_grad, trl_grad, rtol=1e-9, atol=1e-12)
    assert our_grad.abs().max() > 0


def test_dr_grpo_loss_matches_trl(trl_grpo, monkeypatch):
    budget = 9  # TRL divides by batch x max_completion_length
    monkeypatch.setattr(trl_grpo, "max_completion_length", budget)
    cfg = GRPOConfig(num_prompts_per_rollout=3, num_generations=2, loss_aggregation="constant", beta=0.04)
    trl_out, our_out, _ = _trl_and_our_loss(
        trl_grpo,
        monkeypatch,
        trl_settings={"loss_type": "dr_grpo", "epsilon_low": 0.2, "epsilon_high": 0.2, "beta": 0.04},
        trl_args={},
        cfg=cfg,
        max_len=budget,
    )
    _close(trl_out, our_out)


@pytest.mark.parametrize(("loss_type", "aggregation"), [("grpo", "sequence"), ("dapo", "token")])
def test_gspo_sequence_ratio_matches_trl(trl_grpo, monkeypatch, loss_type, aggregation):
    eps_low, eps_high = 0.03, 0.054  # sequence ratios 0.967, 1.0543, 1.0535, 0.865, 1.099, 0.985
    cfg = GRPOConfig(
        num_prompts_per_rollout=3,
        num_generations=2,
        ratio_level="sequence",
        loss_aggregation=aggregation,
        epsilon=eps_low,
        epsilon_high=eps_high,
    )
    trl_out, our_out, metrics = _trl_and_our_loss(
        trl_grpo,
        monkeypatch,
        trl_settings={
            "loss_type": loss_type,
            "importance_sampling_level": "sequence",
            "epsilon_low": eps_low,
            "epsilon_high": eps_high,
        },
        trl_args={},
        cfg=cfg,
    )
    _close(trl_out, our_out)
    assert 0 < metrics["clip_fraction"] < 1


def test_dual_clip_matches_trl_delta(trl_grpo, monkeypatch):
    """TRL's two-sided clipping ``delta`` caps the ratio of the unclipped branch at ``delta``; for negative
    advantages that is the dual clip with ``c = delta``, and for positive ones it never binds (delta > 1 + eps)."""
    c = 1.3
    cfg = GRPOConfig(num_prompts_per_rollout=3, num_generations=2, loss_aggregation="token", dual_clip=c)
    trl_out, our_out, metrics = _trl_and_our_loss(
        trl_grpo,
        monkeypatch,
        trl_settings={"loss_type": "bnpo", "epsilon_low": 0.2, "epsilon_high": 0.2},
        trl_args={"delta": c},
        cfg=cfg,
    )
    _close(trl_out, our_out)
    assert metrics["dual_clip_fraction"] > 0  # the tensors exercise the bound
    new, old, _ref, _gen, mask, adv = _loss_tensors(seed=1)
    plain, _ = compute_policy_loss(new, old, adv, mask, cfg=cfg.replace(dual_clip=None))
    assert plain.item() != pytest.approx(our_out[0].item())


def test_soft_overlong_penalty_matches_trl():
    from trl.rewards import get_soft_overlong_punishment

    budget, buffer = 20, 6
    lengths = [3, 13, 14, 15, 17, 19, 20]
    trl_penalty = get_soft_overlong_punishment(max_completion_len=budget, soft_punish_cache=buffer)(
        [[1] * n for n in lengths]
    )
    cfg = GRPOConfig(overlong_buffer=buffer, overlong_penalty=1.0)
    ours = GRPO.shape_rewards(
        torch.zeros(len(lengths), dtype=torch.float64),
        torch.tensor(lengths, dtype=torch.float64),
        torch.tensor([n < budget for n in lengths]),
        cfg,
        max_response_length=budget,
    )
    assert ours.tolist() == pytest.approx(trl_penalty)
    assert min(trl_penalty) == -1.0 and max(trl_penalty) == 0.0
