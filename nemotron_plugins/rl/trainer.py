"""The GRPO / RLOO training loop: curriculum sampler -> rollouts -> rewards -> advantages -> policy update.

One step of :func:`run_grpo`:

1. the batch sampler (the progressive-Gaussian curriculum over estimated pass rates, or uniform) hands out
   ``num_prompts_per_rollout`` prompt indices;
2. the policy samples ``num_generations`` completions per prompt with a KV cache (seeded per step, so a resumed run
   draws exactly the same samples);
3. every reward scores the batch (in a worker pool when ``reward_workers > 0``); the weighted sum is the reward;
4. group-relative advantages (:mod:`nemotron_plugins.rl.advantages`); groups whose rewards are all equal carry no
   signal and are skipped (``skip_uniform_groups``);
5. ``updates_per_rollout`` AdamW steps on the clipped loss (:func:`nemotron_plugins.rl.loss.compute_policy_loss`,
   token-level mean over each global batch, gradient accumulation over micro-batches);
6. weight sync: the rollout policy is the trained module itself (colocated), so new weights are used at once;
7. metrics (rewards per component, accuracy, advantage stats, KL, clip fraction, response length, tokens/s) go to the
   console (progress bar), a JSONL file and TensorBoard / W&B when configured; an atomic checkpoint holds the model,
   optimizer, sampler position, pass rates and RNG, so a killed run resumes exactly.

Policy: :class:`nemotron_plugins.rl.puzzle_policy.PuzzlePolicy` (plain PyTorch with the Puzzle heterogeneous block
layout and a KV cache). The megatron-core policy with TP/PP is not wired in here yet (its rollout engine did not
exist when this was written); ``rollout_engine`` must therefore be ``"megatron"`` / ``"embedded"``, which both mean
the embedded KV-cache sampler.

Public API::

    GRPOTrainConfig(...)                           # everything a run needs
    run_grpo(config: GRPOTrainConfig | RecipeConfig) -> GRPOResult
    evaluate_policy(policy, tokenizer, rows, rewards, ...) -> dict   # held-out accuracy, sampled and greedy
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nemotron_plugins.rl.config import GRPOConfig

logger = logging.getLogger(__name__)

EMBEDDED_ENGINES = ("megatron", "embedded")


@dataclass(kw_only=True, slots=True)
class RewardTerm:
    """One reward of the weighted sum."""

    name: str
    """Registered reward name (``REWARDS``) or composition spec understood by ``build_reward``."""
    weight: float = 1.0
    """Weight in the total reward."""
    options: dict[str, Any] = field(default_factory=dict)
    """Constructor keyword arguments."""


@dataclass(kw_only=True, slots=True)
class GRPOTrainConfig:
    """Everything one GRPO / RLOO run needs."""

    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            num_prompts_per_rollout=16, num_generations=8, global_batch_size=128, max_new_tokens=48
        )
    )
    """Algorithm: rollout sizes, sampling, advantages and the clipped loss."""
    train_steps: int = 60
    """Rollout steps (each with ``grpo.updates_per_rollout`` optimizer steps)."""
    rewards: list[RewardTerm] = field(
        default_factory=lambda: [RewardTerm(name="math"), RewardTerm(name="think_format")]
    )
    """Rewards summed (weighted) into the training reward."""
    accuracy_reward: str = "math"
    """Reward whose mean is reported as accuracy (must be one of ``rewards``)."""
    format_reward: str | None = "think_format"
    """Reward reported as the format score in evaluations (``None``: none)."""
    reward_workers: int = 0
    """Worker processes scoring rewards (``PooledReward``); 0 scores in this process."""
    skip_uniform_groups: bool = True
    """Drop groups whose rewards are all equal (no learning signal) from the update."""

    lr: float = 5e-5
    """AdamW learning rate (SYSTEM.md section 5: 5e-5; >= 1e-4 collapsed the tiny model)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""

    model_config: Any = None
    """A ``PuzzleModelConfig``; ``None`` uses ``tiny_puzzle_config(len(tokenizer))``."""
    init_checkpoint: str | None = None
    """Model weights to start from: a checkpoint root / step directory (``save_training_state`` layout) or a ``.pt``
    state dict. ``None`` starts from a random initialisation."""

    data_dir: str | None = None
    """Directory with ``rl_train.jsonl`` and ``rl_heldout.jsonl``; ``None`` writes the synthetic addition data into
    ``<output_dir>/data``."""
    num_train_prompts: int = 512
    """Training prompts (synthetic data / cap on the file's rows)."""
    num_heldout_prompts: int = 500
    """Held-out prompts for evaluation (0 disables evaluation)."""
    data_seed: int = 0
    """Seed of the synthetic data."""

    curriculum: bool = True
    """Order prompts with the progressive-Gaussian curriculum over pass rates of the initial policy; False samples
    uniformly at random."""
    pass_rate_samples: int = 2
    """Samples per training prompt used to estimate its pass rate (accuracy reward, T=``grpo.temperature``)."""
    curriculum_width: float = 0.15
    """Standard deviation of the curriculum's Gaussian, in pass-rate units."""

    eval_interval: int = 0
    """Evaluate on the held-out prompts every N steps (0: only before and after training)."""
    eval_greedy: bool = True
    """Also report greedy accuracy in evaluations."""

    output_dir: str = "runs/grpo"
    """Run directory (metrics.jsonl, checkpoints/, data/, result.json)."""
    save_interval: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept."""
    resume: bool = True
    """Resume from the latest checkpoint in ``<output_dir>/checkpoints`` when there is one."""
    tensorboard_dir: str | None = None
    """TensorBoard directory (used when tensorboard is installed)."""
    wandb_project: str | None = None
    """W&B project (used when wandb is installed)."""
    progress: bool = True
    """Show a progress bar."""
    torch_threads: int | None = None
    """``torch.set_num_threads`` for the run (``None`` leaves it)."""
    seed: int = 1234
    """Seed of model init, curriculum order and rollout sampling."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if not isinstance(self.grpo, GRPOConfig):
            raise ValueError(f"GRPOTrainConfig.grpo must be a GRPOConfig, got {type(self.grpo).__name__}")
        if self.grpo.rollout_engine not in EMBEDDED_ENGINES:
            raise ValueError(
                f"GRPOTrainConfig.grpo.rollout_engine = {self.grpo.rollout_engine!r}: this trainer samples with its "
                f"embedded KV-cache policy; use one of {EMBEDDED_ENGINES}"
            )
        if self.train_steps < 0:
            raise ValueError(f"GRPOTrainConfig.train_steps = {self.train_steps} must be >= 0")
        if not self.rewards:
            raise ValueError(
                "GRPOTrainConfig.rewards is empty: name at least one reward, e.g. RewardTerm(name='math')"
            )
        names = [r.name for r in self.rewards]
        if self.accuracy_reward not in names:
            raise ValueError(f"GRPOTrainConfig.accuracy_reward = {self.accuracy_reward!r} is not in rewards {names}")
        if self.format_reward is not None and self.format_reward not in names:
            raise ValueError(f"GRPOTrainConfig.format_reward = {self.format_reward!r} is not in rewards {names}")
        if not self.lr > 0:
            raise ValueError(f"GRPOTrainConfig.lr = {self.lr} must be > 0")
        for name in ("num_train_prompts", "pass_rate_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOTrainConfig.{name} = {getattr(self, name)} must be >= 1")
        if self.num_train_prompts < self.grpo.num_prompts_per_rollout:
            raise ValueError(
                f"GRPOTrainConfig.num_train_prompts = {self.num_train_prompts} is smaller than one rollout's "
                f"num_prompts_per_rollout = {self.grpo.num_prompts_per_rollout}"
            )
        for name in ("num_heldout_prompts", "eval_interval", "save_interval", "reward_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"GRPOTrainConfig.{name} = {getattr(self, name)} must be >= 0")


@dataclass(kw_only=True, slots=True)
class GRPOResult:
    """What :func:`run_grpo` returns."""

    steps: int
    """Steps completed (including those of a resumed run)."""
    resumed_from: int | None
    """Step the run resumed from (``None``: fresh start)."""
    before: dict[str, float] = field(default_factory=dict)
    """Held-out evaluation before training (empty when resuming or without held-out prompts)."""
    after: dict[str, float] = field(default_factory=dict)
    """Held-out evaluation after training."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step metrics of this process's steps."""
    output_dir: str = ""
    """Run directory."""
    checkpoint_dir: str = ""
    """Checkpoint root."""
    wall_time_s: float = 0.0
    """Wall time of this call."""


# ----------------------------------------------------------------------------------------------------------------
# Data, rewards, policy
# ----------------------------------------------------------------------------------------------------------------


def _read_rows(path: Path, limit: int | None) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" not in row or "ground_truth" not in row:
                raise ValueError(f"{path}:{line_no}: an RL prompt row needs 'messages' and 'ground_truth'")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def load_prompt_rows(config: GRPOTrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Training and held-out RL prompt rows (synthetic addition data written on first use)."""
    if config.data_dir is not None:
        data_dir = Path(config.data_dir)
    else:
        data_dir = Path(config.output_dir) / "data"
        if not (data_dir / "rl_train.jsonl").exists():
            from nemotron_plugins.data.synthetic import write_synthetic_dataset

            write_synthetic_dataset(data_dir, config.num_train_prompts, config.num_heldout_prompts, config.data_seed)
    for name in ("rl_train.jsonl", "rl_heldout.jsonl"):
        if not (data_dir / name).exists():
            raise FileNotFoundError(f"data_dir {data_dir} has no {name} (write it with write_synthetic_dataset)")
    train = _read_rows(data_dir / "rl_train.jsonl", config.num_train_prompts)
    heldout = (
        _read_rows(data_dir / "rl_heldout.jsonl", config.num_heldout_prompts) if config.num_heldout_prompts else []
    )
    if len(train) < config.grpo.num_prompts_per_rollout:
        raise ValueError(f"{data_dir}/rl_train.jsonl has {len(train)} rows, fewer than one rollout's prompts")
    return train, heldout, data_dir


def build_rewards(config: GRPOTrainConfig) -> dict[str, tuple[float, Any]]:
    """``name -> (weight, Reward)``; pooled in worker processes when ``reward_workers > 0``."""
    from nemotron_plugins.rewards.base import build_reward

    out: dict[str, tuple[float, Any]] = {}
    for term in config.rewards:
        reward = build_reward(term.name, **term.options)
        if config.reward_workers > 0:
            from nemotron_plugins.rewards.pool import PooledReward

            reward = PooledReward(reward, workers=config.reward_workers)
        out[term.name] = (float(term.weight), reward)
    return out


def score_completions(
    rewards: Mapping[str, tuple[float, Any]], texts: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score ``texts`` (one per row) with every reward; ``(weighted total, {name: scores})``."""
    from nemotron_plugins.rewards.base import RewardSample

    samples = [
        RewardSample(
            completion=text,
            ground_truth=row["ground_truth"],
            prompt=row["messages"],
            metadata={"reasoning": row.get("reasoning", "on")},
        )
        for text, row in zip(texts, rows, strict=True)
    ]
    per: dict[str, torch.Tensor] = {}
    total = torch.zeros(len(samples), dtype=torch.float64)
    for name, (weight, reward) in rewards.items():
        scores = torch.tensor([float(r.score) for r in reward.score(samples)], dtype=torch.float64)
        per[name] = scores
        total += weight * scores
    return total, per


def load_model_weights(path: str) -> dict[str, torch.Tensor]:
    """A model state dict from a ``.pt`` file or a checkpoint written by ``save_training_state``."""
    p = Path(path)
    if p.is_file():
        state = torch.load(p, map_location="cpu", weights_only=True)
        return state.get("model", state) if isinstance(state, dict) and "model" in state else state
    from nemotron_plugins.runtime.checkpoint import load_training_state

    loaded = load_training_state(p, restore_rng=False)
    if loaded.model_state is None:
        raise ValueError(f"checkpoint {loaded.path} holds no model state")
    return loaded.model_state


def build_policy(config: GRPOTrainConfig, vocab_size: int) -> Any:
    """The policy module, initialised from ``init_checkpoint`` when set."""
    from nemotron_plugins.rl.puzzle_policy import PuzzlePolicy

    model_config = config.model_config
    if model_config is None:
        from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

        model_config = tiny_puzzle_config(vocab_size)
    if model_config.vocab_size < vocab_size:
        raise ValueError(f"model vocab_size {model_config.vocab_size} < tokenizer size {vocab_size}")
    init_state = None
    if config.init_checkpoint:
        sft = _try_load_sft_checkpoint(config.init_checkpoint)
        if sft is not None:
            # An SFT stage's Megatron checkpoint: its own architecture wins over the default tiny one.
            model_config = sft.model_config
            init_state = megatron_state_to_policy_state(sft.model_state, model_config)
        else:
            init_state = load_model_weights(config.init_checkpoint)
    torch.manual_seed(config.seed)
    policy = PuzzlePolicy(model_config)
    if init_state is not None:
        policy.load_state_dict(init_state)
    return policy


def _try_load_sft_checkpoint(path: str) -> Any:
    """The :func:`nemotron_plugins.sft.trainer.load_sft_checkpoint` result, or ``None`` for other checkpoints."""
    from nemotron_plugins.runtime.checkpoint import CheckpointError

    if Path(path).is_file():
        return None
    from nemotron_plugins.sft.trainer import load_sft_checkpoint

    try:
        return load_sft_checkpoint(path)
    except CheckpointError:
        return None


def megatron_state_to_policy_state(megatron_state: Mapping[str, Any], cfg: Any) -> dict[str, torch.Tensor]:
    """Map a single-rank (TP1, PP1) Megatron Puzzle state dict to :class:`PuzzlePolicy` parameter names.

    Goes through the HF layout with the checkpoint converter's pure functions (QKV regrouping, fc1 split, vocabulary
    padding removed), then renames: HF ``q/k/v`` become the policy's stacked ``qkv``, ``gate/up`` its ``fc1``.

    Raises:
        KeyError: A tensor the architecture needs is missing from ``megatron_state`` (the name is in the message).
    """
    from nemotron_plugins.puzzle.hf_checkpoint import megatron_to_hf_tensors, plan_megatron_tensors

    hf: dict[str, torch.Tensor] = {}
    for plan in plan_megatron_tensors(cfg, model_keys=set(megatron_state)):
        if plan.megatron_name not in megatron_state:
            raise KeyError(f"SFT checkpoint lacks {plan.megatron_name} ({plan.where()})")
        hf.update(megatron_to_hf_tensors(plan, [megatron_state[plan.megatron_name]], cfg))
    out: dict[str, torch.Tensor] = {
        "embed.weight": hf["model.embed_tokens.weight"],
        "final_norm.weight": hf["model.norm.weight"],
    }
    out["output.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
    for i, block in enumerate(cfg.blocks):
        pre = f"model.layers.{i}."
        attn, ffn = block.attention.kind, block.ffn.kind
        if attn != "no_op":
            out[f"layers.{i}.attn.norm.weight"] = hf[pre + "input_layernorm.weight"]
        if attn == "gqa":
            qkv = [hf[pre + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")]
            out[f"layers.{i}.attn.qkv.weight"] = torch.cat(qkv, dim=0)
            out[f"layers.{i}.attn.proj.weight"] = hf[pre + "self_attn.o_proj.weight"]
        elif attn == "linear":
            out[f"layers.{i}.attn.linear.weight"] = hf[pre + "self_attn.linear_attn.weight"]
        if ffn != "no_op":
            out[f"layers.{i}.ffn.norm.weight"] = hf[pre + "post_attention_layernorm.weight"]
        if ffn == "swiglu":
            gate_up = [hf[pre + f"mlp.{n}_proj.weight"] for n in ("gate", "up")]
            out[f"layers.{i}.ffn.fc1.weight"] = torch.cat(gate_up, dim=0)
            out[f"layers.{i}.ffn.fc2.weight"] = hf[pre + "mlp.down_proj.weight"]
        elif ffn == "linear":
            out[f"layers.{i}.ffn.linear.weight"] = hf[pre + "mlp.linear_mlp.weight"]
    return out


def encode_prompts(tokenizer: Any, rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Chat-rendered prompt token ids (with the assistant generation header)."""
    from nemotron_plugins.chat.render import render_chat

    return [
        tokenizer(render_chat(row["messages"], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for row in rows
    ]


def decode_completions(tokenizer: Any, completions: Sequence[Sequence[int]]) -> list[str]:
    """Completion texts without special tokens (EOS / padding)."""
    return tokenizer.batch_decode([list(c) for c in completions], skip_special_tokens=True)


def _step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


def _sample_in_chunks(policy: Any, prompt_ids: Sequence[Sequence[int]], *, n: int, chunk: int, **kwargs: Any) -> Any:
    from nemotron_plugins.rl.puzzle_policy import Samples

    out = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    for start in range(0, len(prompt_ids), chunk):
        part = policy.generate(prompt_ids[start : start + chunk], n=n, **kwargs)
        out.prompt_index += [start + i for i in part.prompt_index]
        out.completion_ids += part.completion_ids
        out.logprobs += part.logprobs
        out.finished += part.finished
    return out


@torch.no_grad()
def evaluate_policy(
    policy: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    rewards: Mapping[str, tuple[float, Any]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    accuracy_reward: str = "math",
    format_reward: str | None = "think_format",
    greedy: bool = True,
    seed: int = 0,
    chunk: int = 128,
) -> dict[str, float]:
    """Held-out accuracy with one sample per prompt at ``temperature`` and, with ``greedy``, the arg-max decode.

    Returns:
        ``n``, ``accuracy_sampled``, ``format_sampled``, ``response_length_sampled`` and the same ``*_greedy`` keys.
    """
    if not rows:
        return {}
    was_training = policy.training
    policy.eval()
    prompt_ids = encode_prompts(tokenizer, rows)
    modes = [("sampled", False)] + ([("greedy", True)] if greedy else [])
    result: dict[str, float] = {"n": float(len(rows))}
    for label, is_greedy in modes:
        samples = _sample_in_chunks(
            policy,
            prompt_ids,
            n=1,
            chunk=chunk,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            greedy=is_greedy,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            generator=_step_generator(seed, 0, salt=17),
        )
        texts = decode_completions(tokenizer, samples.completion_ids)
        _, per = score_completions(rewards, texts, rows)
        result[f"accuracy_{label}"] = float(per[accuracy_reward].mean())
        if format_reward is not None:
            result[f"format_{label}"] = float(per[format_reward].mean())
        result[f"response_length_{label}"] = float(sum(map(len, samples.completion_ids)) / len(rows))
    policy.train(was_training)
    return result


@torch.no_grad()
def estimate_pass_rates(
    policy: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    rewards: Mapping[str, tuple[float, Any]],
    *,
    samples_per_prompt: int,
    accuracy_reward: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[float]:
    """Fraction of ``samples_per_prompt`` sampled completions per prompt that the accuracy reward scores > 0.5."""
    prompt_ids = encode_prompts(tokenizer, rows)
    samples = _sample_in_chunks(
        policy,
        prompt_ids,
        n=samples_per_prompt,
        chunk=max(1, 256 // samples_per_prompt),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        generator=_step_generator(seed, 0, salt=29),
    )
    texts = decode_completions(tokenizer, samples.completion_ids)
    _, per = score_completions(rewards, texts, [rows[i] for i in samples.prompt_index])
    passed = (per[accuracy_reward] > 0.5).double().view(len(rows), samples_per_prompt)
    return passed.mean(1).tolist()


# ----------------------------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------------------------


def _pack(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, shifted ``targets`` and the completion-token ``mask`` (aligned with targets)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1)
    for r, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, len(p) - 1 : len(s) - 1] = 1.0
    return ids[:, :-1], ids[:, 1:], mask


def _policy_update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    config: GRPOTrainConfig,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    generator_logprobs: torch.Tensor,
    ref_policy: Any | None,
) -> dict[str, float]:
    from nemotron_plugins.rl.logprobs import token_logprobs
    from nemotron_plugins.rl.loss import compute_policy_loss

    cfg = config.grpo
    temp = cfg.temperature
    n = inputs.shape[0]
    micro = cfg.micro_batch_size
    on_policy_single = cfg.updates_per_rollout == 1 and cfg.epochs_per_rollout == 1
    old_lp = ref_lp = None
    with torch.no_grad():
        if not on_policy_single:
            old_lp = torch.cat(
                [
                    token_logprobs(policy(inputs[s : s + micro]), targets[s : s + micro], temperature=temp)
                    for s in range(0, n, micro)
                ]
            )
        if ref_policy is not None and cfg.beta > 0:
            ref_lp = torch.cat(
                [
                    token_logprobs(ref_policy(inputs[s : s + micro]), targets[s : s + micro], temperature=temp)
                    for s in range(0, n, micro)
                ]
            )
    # Split the kept samples into updates_per_rollout global batches per epoch.
    chunks = torch.arange(n).tensor_split(cfg.updates_per_rollout)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    grad_norms = []
    gen_kl_num = gen_kl_den = 0.0
    for _epoch in range(cfg.epochs_per_rollout):
        for chunk in chunks:
            if chunk.numel() == 0:
                continue
            tokens = float(mask[chunk].sum())
            sequences = float(chunk.numel())
            optimizer.zero_grad(set_to_none=True)
            for s in range(0, chunk.numel(), micro):
                idx = chunk[s : s + micro]
                lp = token_logprobs(policy(inputs[idx]), targets[idx], temperature=temp)
                old = lp.detach() if old_lp is None else old_lp[idx]
                loss, metrics = compute_policy_loss(
                    lp,
                    old,
                    advantages[idx],
                    mask[idx],
                    cfg=cfg,
                    ref_logprobs=None if ref_lp is None else ref_lp[idx],
                    generator_logprobs=generator_logprobs[idx] if cfg.importance_sampling_correction else None,
                    total_tokens_in_global_batch=tokens,
                    total_sequences_in_global_batch=sequences,
                )
                loss.backward()
                weight = float(mask[idx].sum())
                for key, value in metrics.items():
                    if key in ("num_tokens", "num_sequences"):
                        continue
                    sums[key] = sums.get(key, 0.0) + float(value) * weight
                    counts[key] = counts.get(key, 0.0) + weight
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                counts["loss"] = 1.0
                with torch.no_grad():
                    m = mask[idx]
                    gen_kl_num += float(((generator_logprobs[idx] - lp.detach()) * m).sum())
                    gen_kl_den += float(m.sum())
            params = [p for p in policy.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad if config.clip_grad > 0 else math.inf)
            grad_norms.append(float(norm))
            optimizer.step()
    out = {k: sums[k] / max(counts[k], 1e-12) for k in sums}
    out["loss"] = sums.get("loss", 0.0) / max(1, len(grad_norms))
    out["grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
    out["generator_trainer_logprob_diff"] = gen_kl_num / max(gen_kl_den, 1.0)
    return out


def train_step(
    *,
    step: int,
    policy: Any,
    optimizer: torch.optim.Optimizer,
    config: GRPOTrainConfig,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int],
    rewards: Mapping[str, tuple[float, Any]],
    ref_policy: Any | None = None,
    pass_rates: Sequence[float] | None = None,
) -> dict[str, float]:
    """One rollout + update on the prompts ``batch``; returns the step's metrics."""
    from nemotron_plugins.rl.advantages import advantages_from_config

    cfg = config.grpo
    g = cfg.num_generations
    t0 = time.perf_counter()
    policy.eval()
    samples = policy.generate(
        [prompt_ids[i] for i in batch],
        n=g,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        generator=_step_generator(config.seed, step),
    )
    policy.train()
    t_rollout = time.perf_counter() - t0
    sample_rows = [rows[batch[i]] for i in samples.prompt_index]
    texts = decode_completions(tokenizer, samples.completion_ids)
    t1 = time.perf_counter()
    total, per = score_completions(rewards, texts, sample_rows)
    t_reward = time.perf_counter() - t1
    adv = advantages_from_config(total.float().view(len(batch), g), cfg)
    flat_adv = adv.flat()
    keep_groups = ~adv.zero_std_groups if config.skip_uniform_groups else torch.ones(len(batch), dtype=torch.bool)
    keep = keep_groups.repeat_interleave(g).nonzero().flatten().tolist()
    lengths = torch.tensor([len(c) for c in samples.completion_ids], dtype=torch.float64)
    metrics: dict[str, float] = {
        "reward/total": float(total.mean()),
        "accuracy": float(per[config.accuracy_reward].mean()),
        "advantage/mean": float(flat_adv.mean()),
        "advantage/std": float(flat_adv.std()),
        "advantage/abs_max": float(flat_adv.abs().max()),
        "groups/skipped_fraction": float(adv.zero_std_groups.float().mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncated_fraction": float(1.0 - sum(samples.finished) / len(samples.finished)),
    }
    for name, scores in per.items():
        metrics[f"reward/{name}"] = float(scores.mean())
    if pass_rates is not None:
        metrics["curriculum/batch_pass_rate"] = float(sum(pass_rates[i] for i in batch) / len(batch))
    t2 = time.perf_counter()
    if keep:
        inputs, targets, mask = _pack(
            [prompt_ids[batch[samples.prompt_index[i]]] for i in keep],
            [samples.completion_ids[i] for i in keep],
            tokenizer.pad_token_id,
        )
        gen_lp = torch.zeros_like(mask)
        for r, i in enumerate(keep):
            start = len(prompt_ids[batch[samples.prompt_index[i]]]) - 1
            gen_lp[r, start : start + len(samples.logprobs[i])] = torch.tensor(samples.logprobs[i])
        update = _policy_update(
            policy, optimizer, config, inputs, targets, mask, flat_adv[keep].float(), gen_lp, ref_policy
        )
        metrics.update(update)
        metrics["train/sequences"] = float(len(keep))
        metrics["train/tokens"] = float(mask.sum())
    else:
        metrics["train/sequences"] = 0.0
        metrics["train/tokens"] = 0.0
    t_train = time.perf_counter() - t2
    # Weight sync: the rollout policy is this module (colocated), nothing to copy.
    generated = float(lengths.sum())
    metrics["time/rollout_s"] = t_rollout
    metrics["time/reward_s"] = t_reward
    metrics["time/train_s"] = t_train
    metrics["time/step_s"] = time.perf_counter() - t0
    metrics["tokens_per_s/rollout"] = generated / max(t_rollout, 1e-9)
    metrics["tokens_per_s/train"] = metrics["train/tokens"] / max(t_train, 1e-9)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _build_sampler(config: GRPOTrainConfig, pass_rates: Sequence[float] | None, num_prompts: int) -> Any:
    from nemotron_plugins.curriculum.sampler import ProgressiveGaussianBatchSampler, RandomBatchSampler

    if pass_rates is not None:
        return ProgressiveGaussianBatchSampler(
            list(pass_rates),
            global_batch_size=config.grpo.num_prompts_per_rollout,
            width=config.curriculum_width,
            seed=config.seed,
        )
    return RandomBatchSampler(num_prompts, global_batch_size=config.grpo.num_prompts_per_rollout, seed=config.seed)


def _next_batch(sampler: Any) -> list[int]:
    for batch in sampler:
        return list(batch)
    raise RuntimeError("the batch sampler yielded no batch")  # pragma: no cover - a new epoch always has batches


def _time_free(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith(("time/", "tokens_per_s/"))}


def run_grpo(config: Any) -> GRPOResult:
    """Run GRPO / RLOO training end to end (see the module docstring).

    Args:
        config: A :class:`GRPOTrainConfig`, or a ``RecipeConfig`` with ``task`` ``grpo`` / ``rloo`` (converted by
            :func:`train_config_from_recipe`).

    Returns:
        A :class:`GRPOResult` with held-out evaluations before / after and the per-step metrics.
    """
    if not isinstance(config, GRPOTrainConfig):
        config = train_config_from_recipe(config)
    config.validate()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    start = time.perf_counter()
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.runtime.checkpoint import latest_step, load_training_state, save_training_state
    from nemotron_plugins.runtime.metrics import MetricsLogger

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    tokenizer = build_tiny_tokenizer()
    rows, heldout, _ = load_prompt_rows(config)
    prompt_ids = encode_prompts(tokenizer, rows)
    rewards = build_rewards(config)
    policy = build_policy(config, len(tokenizer))
    ref_policy = None
    if config.grpo.beta > 0:
        import copy

        ref_policy = copy.deepcopy(policy).eval()
        for p in ref_policy.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    eval_kwargs = {
        "max_new_tokens": config.grpo.max_new_tokens,
        "temperature": config.grpo.temperature,
        "accuracy_reward": config.accuracy_reward,
        "format_reward": config.format_reward,
        "greedy": config.eval_greedy,
        "seed": config.seed,
    }
    resumed = latest_step(ckpt_dir) if config.resume and ckpt_dir.exists() else None
    result = GRPOResult(steps=0, resumed_from=resumed, output_dir=str(out), checkpoint_dir=str(ckpt_dir))
    pass_rates: list[float] | None = None
    try:
        if resumed is not None:
            state = load_training_state(ckpt_dir, step=resumed, restore_rng=True)
            policy.load_state_dict(state.model_state)
            optimizer.load_state_dict(state.optimizer_state)
            pass_rates = state.extra.get("pass_rates")
            result.before = dict(state.extra.get("before", {}))
            if ref_policy is not None and "ref_model" in state.extra:
                ref_policy.load_state_dict(state.extra["ref_model"])
            sampler = _build_sampler(config, pass_rates, len(rows))
            sampler.load_state_dict(state.sampler_state)
            step = resumed
            print(f"[grpo] resumed from step {resumed} ({state.path})", flush=True)
        else:
            if heldout:
                result.before = evaluate_policy(policy, tokenizer, heldout, rewards, **eval_kwargs)
                print(f"[grpo] held-out before: {_fmt(result.before)}", flush=True)
            if config.curriculum:
                t = time.perf_counter()
                pass_rates = estimate_pass_rates(
                    policy,
                    tokenizer,
                    rows,
                    rewards,
                    samples_per_prompt=config.pass_rate_samples,
                    accuracy_reward=config.accuracy_reward,
                    max_new_tokens=config.grpo.max_new_tokens,
                    temperature=config.grpo.temperature,
                    seed=config.seed,
                )
                print(
                    f"[grpo] curriculum: pass rates of {len(rows)} prompts x {config.pass_rate_samples} samples, "
                    f"mean {sum(pass_rates) / len(pass_rates):.3f} ({time.perf_counter() - t:.1f}s)",
                    flush=True,
                )
            sampler = _build_sampler(config, pass_rates, len(rows))
            step = 0
        logger_ = MetricsLogger(
            jsonl_path=out / "metrics.jsonl",
            tensorboard_dir=config.tensorboard_dir,
            wandb_project=config.wandb_project,
            total=config.train_steps,
            progress=config.progress,
            progress_keys=[
                "reward/total",
                "accuracy",
                "reward/" + (config.format_reward or config.accuracy_reward),
                "loss",
            ],
            resume_step=step,
        )

        def save(at: int) -> None:
            extra: dict[str, Any] = {"pass_rates": pass_rates, "before": result.before}
            if ref_policy is not None:
                extra["ref_model"] = ref_policy.state_dict()
            save_training_state(
                ckpt_dir,
                step=at,
                model_state=policy.state_dict(),
                optimizer_state=optimizer.state_dict(),
                sampler_state=sampler.state_dict(),
                extra=extra,
                keep_last=config.keep_last,
            )

        with logger_:
            while step < config.train_steps:
                batch = _next_batch(sampler)
                metrics = train_step(
                    step=step,
                    policy=policy,
                    optimizer=optimizer,
                    config=config,
                    tokenizer=tokenizer,
                    rows=rows,
                    prompt_ids=prompt_ids,
                    batch=batch,
                    rewards=rewards,
                    ref_policy=ref_policy,
                    pass_rates=pass_rates,
                )
                step += 1
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                if heldout and config.eval_interval and step % config.eval_interval == 0 and step < config.train_steps:
                    ev = evaluate_policy(policy, tokenizer, heldout, rewards, **eval_kwargs)
                    metrics.update({f"eval/{k}": v for k, v in ev.items()})
                logger_.log(step, metrics)
                result.history.append(metrics)
                if (config.save_interval and step % config.save_interval == 0) or step == config.train_steps:
                    save(step)
        result.steps = step
        if heldout:
            result.after = evaluate_policy(policy, tokenizer, heldout, rewards, **eval_kwargs)
            print(f"[grpo] held-out after:  {_fmt(result.after)}", flush=True)
    finally:
        for _, reward in rewards.values():
            reward.close()
    result.wall_time_s = time.perf_counter() - start
    (out / "result.json").write_text(
        json.dumps(
            {
                "steps": result.steps,
                "resumed_from": result.resumed_from,
                "before": result.before,
                "after": result.after,
                "wall_time_s": result.wall_time_s,
            },
            indent=2,
        )
    )
    return result


def _fmt(ev: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={int(v) if k == 'n' else round(v, 4)}" for k, v in ev.items())


def train_config_from_recipe(recipe: Any) -> GRPOTrainConfig:
    """Convert a ``RecipeConfig`` (task ``grpo`` / ``rloo``) into a :class:`GRPOTrainConfig`.

    Raises:
        ValueError: If the recipe is not an RL recipe or misses its algorithm / rewards block.
    """
    task = getattr(recipe, "task", None)
    if task not in ("grpo", "rloo"):
        raise ValueError(f"run_grpo needs a recipe with task 'grpo' or 'rloo', got task={task!r}")
    algo = recipe.algorithm
    if algo is None:
        raise ValueError(f"recipe {recipe.name!r}: the 'algorithm' block is required for task {task!r}")
    if not recipe.rewards:
        raise ValueError(f"recipe {recipe.name!r}: 'rewards' must name at least one reward")
    gen = recipe.generation
    rollout = algo.prompts_per_rollout * algo.generations_per_prompt
    if rollout % algo.updates_per_rollout:
        raise ValueError(
            f"recipe {recipe.name!r}: algorithm.updates_per_rollout={algo.updates_per_rollout} must divide "
            f"prompts_per_rollout * generations_per_prompt = {rollout}"
        )
    global_batch = rollout // algo.updates_per_rollout
    micro = recipe.micro_batch_size if global_batch % recipe.micro_batch_size == 0 else global_batch
    grpo = GRPOConfig(
        algorithm=task,
        num_prompts_per_rollout=algo.prompts_per_rollout,
        num_generations=algo.generations_per_prompt,
        global_batch_size=global_batch,
        micro_batch_size=micro,
        temperature=gen.temperature if gen else 1.0,
        top_p=gen.top_p if gen else 1.0,
        max_new_tokens=gen.max_new_tokens if gen else 48,
        rollout_engine=gen.engine if gen else "megatron",
        leave_one_out_baseline=algo.leave_one_out_baseline,
        normalize_advantages_by_std=algo.normalize_std,
        epsilon=algo.clip_eps,
        epsilon_high=algo.clip_eps_high,
        beta=algo.kl_beta,
        loss_aggregation="token" if algo.token_level_loss else "sequence",
        importance_sampling_correction=algo.importance_correction,
        seed=recipe.seed,
    )
    output_dir = recipe.output_dir or os.path.join("runs", recipe.name)
    names = [r.name for r in recipe.rewards]
    options = dict(recipe.data.options)
    init = recipe.init_checkpoint
    return GRPOTrainConfig(
        grpo=grpo,
        train_steps=recipe.train_steps,
        rewards=[RewardTerm(name=r.name, weight=r.weight, options=dict(r.options)) for r in recipe.rewards],
        accuracy_reward=str(options.get("accuracy_reward", "math" if "math" in names else names[0])),
        format_reward=str(options.get("format_reward", "think_format")) if "think_format" in names else None,
        reward_workers=int(options.get("reward_workers", 0)),
        skip_uniform_groups=algo.skip_uniform_groups,
        lr=recipe.optimizer.lr,
        weight_decay=recipe.optimizer.weight_decay,
        adam_betas=(recipe.optimizer.adam_beta1, recipe.optimizer.adam_beta2),
        clip_grad=recipe.optimizer.clip_grad,
        init_checkpoint=init,
        data_dir=recipe.data.path,
        num_train_prompts=recipe.data.num_train_samples or 512,
        num_heldout_prompts=recipe.data.num_eval_samples,
        data_seed=int(options.get("data_seed", 0)),
        curriculum=recipe.sampler is not None and recipe.sampler.name != "uniform",
        curriculum_width=recipe.sampler.sigma if recipe.sampler is not None else 0.15,
        pass_rate_samples=recipe.sampler.pass_rate_responses if recipe.sampler is not None else 2,
        eval_interval=recipe.data.eval_interval,
        output_dir=output_dir,
        save_interval=recipe.checkpoint.save_interval,
        keep_last=recipe.checkpoint.keep_last,
        tensorboard_dir=recipe.logging.tensorboard_dir,
        wandb_project=recipe.logging.wandb_project,
        progress=recipe.logging.progress_bar,
        seed=recipe.seed,
    )
