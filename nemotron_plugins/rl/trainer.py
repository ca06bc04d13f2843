"""The GRPO / RLOO training loop on megatron-core: curriculum sampler -> rollouts -> rewards -> advantages -> update.

The policy is the Puzzle ``GPTModel`` (:func:`nemotron_plugins.puzzle.model.build_puzzle_model`) wrapped in
megatron-core's ``DistributedDataParallel`` with megatron's optimizer, at any TP / PP / DP layout that
:func:`nemotron_plugins.runtime.distributed.init_distributed` builds (gloo on CPU, NCCL on GPU). One step of
:func:`run_grpo`:

1. the batch sampler (the progressive-Gaussian curriculum over estimated pass rates, or uniform) hands out
   ``num_prompts_per_rollout`` prompt indices, the same on every rank;
2. rollouts: each data-parallel replica samples ``num_generations`` completions for its share of the prompts with
   the rollout engine (``megatron``: megatron-core's static KV cache on the policy itself; every TP rank of a replica
   draws the same tokens from the same seed), seeded per step and replica so a resumed run draws the same samples;
   the replicas' rollouts are all-gathered;
3. rewards: every rank scores a 1/world slice of the samples (in a worker pool when ``reward_workers > 0``) and the
   scores are all-gathered; the weighted sum is the reward;
4. group-relative advantages (:mod:`nemotron_plugins.rl.advantages`); groups whose rewards are all equal carry no
   signal and are skipped (``skip_uniform_groups``);
5. update: the kept samples are split into ``updates_per_rollout`` global batches (per epoch); each global batch is
   split over the data-parallel replicas and run through megatron's ``forward_backward_func`` (1F1B pipelining when
   PP > 1) with the clipped loss (:func:`nemotron_plugins.rl.loss.compute_policy_loss`, token-level mean over the
   GLOBAL batch: each micro-batch's loss is already divided by the global token count, so
   ``calculate_per_token_loss`` keeps megatron from rescaling and DDP sums the replicas' gradients);
   ``finalize_model_grads`` reduces the gradients (DP, sequence-parallel norms, tied embeddings) and megatron's
   optimizer clips and steps. Log-probs come from vocab-parallel cross entropy on the logits of the real vocabulary
   (megatron's padding ids masked), at the sampling temperature;
6. weight sync: the ``megatron`` engine samples from the trained module itself (nothing to copy); other engines get
   :meth:`~nemotron_plugins.rl.engines.base.RolloutEngine.update_weights` after every step;
7. metrics (rewards per component, accuracy, advantage stats, KL, clip fraction, response length, tokens/s) go to the
   console (progress bar), a JSONL file and TensorBoard / W&B when configured; an atomic checkpoint (every rank its
   shard) holds the model, optimizer, sampler position, pass rates and RNG, so a killed run resumes exactly.

Public API::

    GRPOTrainConfig(...)                           # everything a run needs
    run_grpo(config: GRPOTrainConfig | RecipeConfig) -> GRPOResult
    build_policy_optimizer(model, config)          # megatron DDP + optimizer for a policy
    policy_update(model, optimizer, batch, config) -> dict   # one rollout's gradient updates (any TP / PP / DP)
    evaluate_policy(engine, tokenizer, rows, rewards, ...) -> dict   # held-out accuracy, sampled and greedy
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.runtime.config import ParallelConfig
from nemotron_plugins.runtime.distributed import barrier

logger = logging.getLogger(__name__)

EMBEDDED_ENGINES = ("megatron", "embedded")
TRAINER_ENGINES = (*EMBEDDED_ENGINES, "vllm")


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
    """Adam learning rate (SYSTEM.md section 5: 5e-5; >= 1e-4 collapsed the tiny model)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""

    model_config: Any = None
    """A ``PuzzleModelConfig``; ``None`` uses ``tiny_puzzle_config(len(tokenizer))``. An SFT ``init_checkpoint``
    brings its own architecture and tokenizer, which win."""
    init_checkpoint: str | None = None
    """Weights to start from: an SFT checkpoint (root or ``step_XXXXXX`` directory written by ``run_sft``; a
    single-rank checkpoint is resharded to this run's TP / PP layout, others must match it), a
    ``save_training_state`` checkpoint, or a ``.pt`` single-rank state dict of the ``GPTModel``. ``None`` starts
    from a random initialisation (``init_weights_layout_invariant_``: the same weights at any layout)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor / pipeline parallel sizes of the policy (data parallel is what is left of the world). The
    ``megatron`` rollout engine needs ``pipeline_model_parallel_size == 1``."""
    seq_length: int = 256
    """Longest prompt + completion in tokens (the model's ``max_sequence_length``)."""
    params_dtype: str = "float32"
    """Parameter dtype (``"float32"`` on CPU; ``"bfloat16"`` on GPU with megatron's mixed-precision optimizer)."""
    engine_batch_size: int = 128
    """Sequences the ``megatron`` engine decodes together (one KV cache of this batch size)."""
    vllm_options: dict[str, Any] = field(default_factory=dict)
    """``VLLMEngineConfig`` fields for ``grpo.rollout_engine == "vllm"`` (``model_path`` defaults to an HF export of
    the initial policy in ``<output_dir>/hf_policy``)."""

    data_dir: str | None = None
    """Directory with ``rl_train.jsonl`` and ``rl_heldout.jsonl``; ``None`` writes the synthetic addition data into
    ``<output_dir>/data``."""
    num_train_prompts: int = 512
    """Training prompts (synthetic data / cap on the file's rows)."""
    num_heldout_prompts: int = 500
    """Held-out prompts for evaluation (0 disables evaluation)."""
    data_seed: int = 0
    """Seed of the synthetic data."""
    synthetic_train_problems: int | None = None
    """Training problems written to the synthetic data (default ``num_train_prompts``). Set it to the SFT stage's
    count (with the same ``data_seed``) so the held-out problems are exactly the SFT stage's held-out ones, disjoint
    from everything SFT trained on; the run then uses the first ``num_train_prompts`` of them."""

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
        if self.grpo.rollout_engine not in TRAINER_ENGINES:
            raise ValueError(
                f"GRPOTrainConfig.grpo.rollout_engine = {self.grpo.rollout_engine!r}: the trainer drives one of "
                f"{TRAINER_ENGINES} ('openai' serves evaluation and pass-rate estimation, it cannot take weights)"
            )
        if self.grpo.rollout_engine in EMBEDDED_ENGINES and self.parallel.pipeline_model_parallel_size > 1:
            raise ValueError(
                "GRPOTrainConfig.parallel.pipeline_model_parallel_size > 1 with the 'megatron' rollout engine: it "
                "decodes with the whole model on each rank; use grpo.rollout_engine='vllm' for a pipelined policy"
            )
        if self.grpo.max_new_tokens >= self.seq_length:
            raise ValueError(
                f"GRPOTrainConfig.seq_length = {self.seq_length} leaves no room for prompts with "
                f"grpo.max_new_tokens = {self.grpo.max_new_tokens}"
            )
        if self.engine_batch_size < 1:
            raise ValueError(f"GRPOTrainConfig.engine_batch_size = {self.engine_batch_size} must be >= 1")
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

            problems = max(config.num_train_prompts, config.synthetic_train_problems or 0)
            write_synthetic_dataset(data_dir, problems, config.num_heldout_prompts, config.data_seed)
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


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------------------------


def _layout() -> tuple[int, int, int, int]:
    """``(world, rank, dp, dp_rank)`` from megatron's ``parallel_state``."""
    from megatron.core import parallel_state as ps

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return world, rank, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()


def _all_gather(obj: Any, group: Any = None) -> list[Any]:
    """``obj`` of every rank of ``group`` (default: the world), in rank order; ``[obj]`` without a group."""
    if not torch.distributed.is_initialized():
        return [obj]
    size = torch.distributed.get_world_size(group)
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    torch.distributed.all_gather_object(out, obj, group=group)
    return out


def _mix_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 7919) % (2**62)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Policy, optimizer, engine
# ----------------------------------------------------------------------------------------------------------------


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


def _load_initial_state(path: str) -> tuple[dict[str, torch.Tensor], int]:
    """``(model state, world size it was saved at)`` from a ``.pt`` state dict or a ``save_training_state``
    checkpoint."""
    p = Path(path)
    if p.is_file():
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        return state, 1
    from nemotron_plugins.runtime.checkpoint import load_training_state

    loaded = load_training_state(p, restore_rng=False)
    if loaded.model_state is None:
        raise ValueError(f"init_checkpoint {loaded.path} holds no model state")
    return loaded.model_state, loaded.world_size


def _load_into(model: Any, state: Mapping[str, torch.Tensor], saved_world: int, cfg: Any, source: str) -> None:
    """Load ``state`` into this rank's ``model``: directly when the layouts match, resharded from a single-rank
    state otherwise."""
    from megatron.core import parallel_state as ps

    model_parallel = ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size()
    if model_parallel > 1 and saved_world == 1:
        from nemotron_plugins.puzzle.hf_checkpoint import reshard_single_rank_state

        state = reshard_single_rank_state(state, cfg, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"init_checkpoint {source}: its weights do not fit this rank's model (saved by {saved_world} rank(s); a "
            f"multi-rank checkpoint must be loaded at the TP / PP layout that wrote it): {exc}"
        ) from exc


def build_policy(config: GRPOTrainConfig, tokenizer: Any) -> tuple[Any, Any, Any]:
    """This rank's policy ``GPTModel``, its ``PuzzleModelConfig`` and the tokenizer to use.

    An SFT ``init_checkpoint`` brings its architecture and tokenizer; other checkpoints load into
    ``config.model_config`` (default: the tiny Puzzle model).
    """
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_

    model_config = config.model_config
    state: Mapping[str, torch.Tensor] | None = None
    saved_world = 1
    if config.init_checkpoint:
        sft = _try_load_sft_checkpoint(config.init_checkpoint)
        if sft is not None:
            model_config, tokenizer, state, saved_world = (
                sft.model_config,
                sft.tokenizer,
                sft.model_state,
                sft.world_size,
            )
        else:
            state, saved_world = _load_initial_state(config.init_checkpoint)
    if model_config is None:
        from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

        model_config = tiny_puzzle_config(len(tokenizer))
    if model_config.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size {model_config.vocab_size} < tokenizer size {len(tokenizer)}")
    model = build_puzzle_model(
        model_config,
        parallel=config.parallel,
        seq_length=config.seq_length,
        params_dtype=config.params_dtype,
        perform_initialization=state is None,
    )
    if state is None:
        init_weights_layout_invariant_(model, seed=config.seed)
    else:
        _load_into(model, state, saved_world, model_config, str(config.init_checkpoint))
    return model, model_config, tokenizer


def build_policy_optimizer(model: Any, config: GRPOTrainConfig) -> tuple[Any, Any]:
    """Wrap ``model`` in megatron DDP and build megatron's Adam optimizer (with global-norm clipping).

    The wrapper is set up for :func:`policy_update`: ``calculate_per_token_loss`` (the loss is normalised by the
    global batch already; replicas' gradients are summed, not averaged) and ``finalize_model_grads`` called by the
    update itself.

    Returns:
        ``(ddp_model, optimizer)``.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    mconfig = model.config
    mconfig.calculate_per_token_loss = True
    mconfig.finalize_model_grads_func = None
    if ps.get_pipeline_model_parallel_world_size() > 1:
        mconfig.pipeline_dtype = next(model.parameters()).dtype
    ddp = DistributedDataParallel(
        config=mconfig,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=config.parallel.use_distributed_optimizer,
        ),
        module=model,
    )
    bf16 = config.params_dtype in ("bfloat16", "bf16")
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=config.lr,
            weight_decay=config.weight_decay,
            adam_beta1=config.adam_betas[0],
            adam_beta2=config.adam_betas[1],
            clip_grad=config.clip_grad,
            bf16=bf16,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_distributed_optimizer=config.parallel.use_distributed_optimizer,
        ),
        [ddp],
    )
    return ddp, optimizer


def build_engine(config: GRPOTrainConfig, model: Any, model_config: Any, tokenizer: Any) -> Any:
    """The rollout engine of ``config.grpo.rollout_engine`` for this rank's policy ``model`` (unwrapped)."""
    cfg = config.grpo
    if cfg.rollout_engine in EMBEDDED_ENGINES:
        from nemotron_plugins.rl.engines.megatron_engine import MegatronEngineConfig, MegatronRolloutEngine

        return MegatronRolloutEngine(
            model,
            tokenizer,
            config=MegatronEngineConfig(max_batch_size=config.engine_batch_size, vocab_size=len(tokenizer)),
        )
    # vLLM colocated with training: an HF export of the initial policy to start from, refreshed after every step.
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint
    from nemotron_plugins.rl.engines.vllm_engine import VLLMEngineConfig, VLLMRolloutEngine

    options = dict(config.vllm_options)
    path = Path(options.pop("model_path", Path(config.output_dir) / "hf_policy"))
    export_hf_checkpoint(model, model_config, path)
    if _layout()[1] == 0:
        tokenizer.save_pretrained(str(path))
    barrier()
    return VLLMRolloutEngine(
        VLLMEngineConfig(model_path=str(path), seed=config.seed, **options),
        tokenizer=tokenizer,
        puzzle_config=model_config,
    )


# ----------------------------------------------------------------------------------------------------------------
# Rollouts, scoring and evaluation (data parallel)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Samples:
    """Completions of a list of prompts, prompt-major (``n`` consecutive entries per prompt)."""

    prompt_index: list[int]
    """Index of each completion's prompt in the list given to :func:`distributed_rollout`."""
    completion_ids: list[list[int]]
    """Sampled token ids (end-of-sequence token included when sampled)."""
    logprobs: list[list[float]]
    """The engine's sampling log-prob of each token."""
    finished: list[bool]
    """Whether the completion ended (eos / stop string) rather than hitting the length limit."""


def distributed_rollout(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> Samples:
    """Sample ``n`` completions per prompt: each data-parallel replica takes a contiguous share of the prompts
    (seeded by ``seed`` and its DP rank), then the shares are all-gathered, so every rank returns all samples."""
    from megatron.core import parallel_state as ps

    _, _, dp, dp_rank = _layout()
    lo, hi = len(prompts) * dp_rank // dp, len(prompts) * (dp_rank + 1) // dp
    local = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    if hi > lo:
        groups = engine.rollout(
            [list(p) for p in prompts[lo:hi]],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=_mix_seed(seed, dp_rank),
        )
        for group in groups:
            for r in group.rollouts:
                local.prompt_index.append(lo + group.prompt_index)
                local.completion_ids.append(list(r.completion_ids or []))
                local.logprobs.append(list(r.logprobs or []))
                local.finished.append(r.finish_reason == "stop")
    if dp == 1:
        return local
    out = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    for part in _all_gather(local, group=ps.get_data_parallel_group()):
        out.prompt_index += part.prompt_index
        out.completion_ids += part.completion_ids
        out.logprobs += part.logprobs
        out.finished += part.finished
    return out


def distributed_score(
    rewards: Mapping[str, tuple[float, Any]], texts: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`score_completions` with the work split over all ranks (rank r scores samples r, r + world, ...) and
    the scores all-gathered; every rank returns all scores."""
    world, rank, _, _ = _layout()
    if world == 1:
        return score_completions(rewards, texts, rows)
    mine = list(range(rank, len(texts), world))
    _, per = score_completions(rewards, [texts[i] for i in mine], [rows[i] for i in mine]) if mine else (None, {})
    local = {name: (mine, per[name].tolist() if mine else []) for name in rewards}
    per_all = {name: torch.zeros(len(texts), dtype=torch.float64) for name in rewards}
    for part in _all_gather(local):
        for name, (idx, scores) in part.items():
            per_all[name][idx] = torch.tensor(scores, dtype=torch.float64)
    total = torch.zeros(len(texts), dtype=torch.float64)
    for name, (weight, _) in rewards.items():
        total += weight * per_all[name]
    return total, per_all


@torch.no_grad()
def evaluate_policy(
    engine: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    rewards: Mapping[str, tuple[float, Any]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    accuracy_reward: str = "math",
    format_reward: str | None = "think_format",
    greedy: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out accuracy with one sample per prompt at ``temperature`` and, with ``greedy``, the arg-max decode.

    Returns:
        ``n``, ``accuracy_sampled``, ``format_sampled``, ``response_length_sampled``, the same ``*_greedy`` keys and,
        when the rows carry both reasoning modes, ``accuracy_<label>_on`` / ``accuracy_<label>_off``.
    """
    if not rows:
        return {}
    prompt_ids = encode_prompts(tokenizer, rows)
    modes = [("sampled", temperature, top_p)] + ([("greedy", 0.0, 1.0)] if greedy else [])
    result: dict[str, float] = {"n": float(len(rows))}
    reasoning = [str(row.get("reasoning", "on")) for row in rows]
    for label, temp, p in modes:
        samples = distributed_rollout(
            engine, prompt_ids, n=1, temperature=temp, top_p=p, max_new_tokens=max_new_tokens, seed=seed + 17
        )
        texts = decode_completions(tokenizer, samples.completion_ids)
        _, per = distributed_score(rewards, texts, rows)
        acc = per[accuracy_reward]
        result[f"accuracy_{label}"] = float(acc.mean())
        if format_reward is not None:
            result[f"format_{label}"] = float(per[format_reward].mean())
        result[f"response_length_{label}"] = float(sum(map(len, samples.completion_ids)) / len(rows))
        if len(set(reasoning)) > 1:
            for mode in ("on", "off"):
                sel = torch.tensor([m == mode for m in reasoning])
                if sel.any():
                    result[f"accuracy_{label}_{mode}"] = float(acc[sel].mean())
    return result


@torch.no_grad()
def estimate_pass_rates(
    engine: Any,
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
    samples = distributed_rollout(
        engine,
        encode_prompts(tokenizer, rows),
        n=samples_per_prompt,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed + 29,
    )
    texts = decode_completions(tokenizer, samples.completion_ids)
    only = {accuracy_reward: rewards[accuracy_reward]}
    _, per = distributed_score(only, texts, [rows[i] for i in samples.prompt_index])
    passed = (per[accuracy_reward] > 0.5).double().view(len(rows), samples_per_prompt)
    return passed.mean(1).tolist()


# ----------------------------------------------------------------------------------------------------------------
# The policy update (megatron forward_backward_func, any TP / PP / DP)
# ----------------------------------------------------------------------------------------------------------------

# Loss metrics averaged over tokens (weights: completion tokens) and reduced over all ranks.
_TOKEN_METRICS = (
    "pg_loss",
    "clip_fraction",
    "clip_low_fraction",
    "clip_high_fraction",
    "ratio_mean",
    "kl",
    "is_weight_mean",
    "generator_trainer_logprob_diff",
)


@dataclass(kw_only=True, slots=True)
class PolicyBatch:
    """The samples of one rollout that enter the update, as right-padded tensors (identical on every rank)."""

    input_ids: torch.Tensor
    """``[N, W]`` prompt + completion tokens without the last one."""
    targets: torch.Tensor
    """``[N, W]`` the next tokens."""
    mask: torch.Tensor
    """``[N, W]`` float, 1 where the target is a completion token."""
    advantages: torch.Tensor
    """``[N]`` float advantages."""
    generator_logprobs: torch.Tensor
    """``[N, W]`` the rollout engine's log-probs of the targets (0 outside the mask)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def pack_policy_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    generator_logprobs: Sequence[Sequence[float]],
    advantages: torch.Tensor,
    *,
    pad_id: int,
    multiple_of: int = 8,
) -> PolicyBatch:
    """Right-pad prompt + completion pairs into a :class:`PolicyBatch` (width rounded up to ``multiple_of``)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs) - 1
    width = -(-width // multiple_of) * multiple_of
    n = len(seqs)
    ids = torch.full((n, width + 1), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width)
    gen = torch.zeros(n, width)
    for r, (p, s, lp) in enumerate(zip(prompts, seqs, generator_logprobs, strict=True)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, len(p) - 1 : len(s) - 1] = 1.0
        gen[r, len(p) - 1 : len(p) - 1 + len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return PolicyBatch(
        input_ids=ids[:, :-1].contiguous(),
        targets=ids[:, 1:].contiguous(),
        mask=mask,
        advantages=advantages.float(),
        generator_logprobs=gen,
    )


def _micro_batches(batch: PolicyBatch, rows: torch.Tensor, micro: int, pad_rows: bool) -> list[dict[str, Any]]:
    """``rows`` of ``batch`` cut into micro-batches; with ``pad_rows`` every micro-batch has exactly ``micro`` rows
    (extra rows are fully masked), as pipeline-parallel communication needs one shape."""
    out = []
    for s in range(0, rows.numel(), micro):
        idx = rows[s : s + micro]
        mb = {
            "input_ids": batch.input_ids[idx],
            "targets": batch.targets[idx],
            "mask": batch.mask[idx],
            "advantages": batch.advantages[idx],
            "generator_logprobs": batch.generator_logprobs[idx],
            "rows": idx,
        }
        missing = micro - idx.numel()
        if pad_rows and missing:
            for key in ("input_ids", "targets", "mask", "advantages", "generator_logprobs"):
                t = mb[key]
                mb[key] = torch.cat([t, t.new_zeros(missing, *t.shape[1:])])
        out.append(mb)
    return out


def _forward_micro_batch(model: Any, mb: Mapping[str, Any]) -> torch.Tensor:
    """The model chunk's forward on a micro-batch's ``input_ids`` (causal, positions 0..W-1): logits on the last
    pipeline stage, hidden states elsewhere (megatron's schedule feeds the previous stage's output in)."""
    device = next(model.parameters()).device
    tokens = mb["input_ids"].to(device)
    positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0).expand_as(tokens)
    return model(tokens, positions, None)


def _logprobs(output: torch.Tensor, targets: torch.Tensor, temperature: float, vocab_size: int) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    from nemotron_plugins.rl.logprobs import token_logprobs

    return token_logprobs(
        output,
        targets,
        temperature=temperature,
        vocab_parallel=ps.get_tensor_model_parallel_world_size() > 1,
        vocab_size=vocab_size,
    )


def _run_schedule(
    model: Any, micro_batches: list[dict[str, Any]], width: int, micro: int, step_fn: Any, *, forward_only: bool
) -> list[Any]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not micro_batches:
        return []
    return get_forward_backward_func()(
        forward_step_func=step_fn,
        data_iterator=iter(micro_batches),
        model=[model],
        num_microbatches=len(micro_batches),
        seq_length=width,
        micro_batch_size=micro,
        forward_only=forward_only,
    )


@torch.no_grad()
def _forward_logprobs(
    model: Any, micro_batches: list[dict[str, Any]], width: int, micro: int, temperature: float, vocab_size: int
) -> list[torch.Tensor]:
    """Per-micro-batch target log-probs (on the last pipeline stage; empty elsewhere)."""

    def step_fn(data_iterator: Any, model_: Any) -> tuple[torch.Tensor, Any]:
        mb = next(data_iterator)
        output = _forward_micro_batch(model_, mb)

        def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            lp = _logprobs(out, mb["targets"].to(out.device), temperature, vocab_size)
            return out.new_zeros(()), torch.tensor(0, dtype=torch.int), {"logprobs": lp.detach().cpu()}

        return output, loss_func

    reports = _run_schedule(model, micro_batches, width, micro, step_fn, forward_only=True)
    return [r["logprobs"] for r in reports]


def policy_update(
    model: Any,
    optimizer: Any,
    batch: PolicyBatch,
    config: GRPOTrainConfig,
    *,
    vocab_size: int,
    ref_model: Any | None = None,
) -> dict[str, float]:
    """``updates_per_rollout`` (x ``epochs_per_rollout``) optimizer steps on the clipped policy loss.

    Every rank passes the same ``batch``. The samples are split into ``updates_per_rollout`` global batches, each
    split over the data-parallel replicas (replica r takes rows r, r + dp, ...) and cut into micro-batches of
    ``grpo.micro_batch_size`` that go through megatron's ``forward_backward_func``.

    Args:
        model: The policy wrapped by :func:`build_policy_optimizer` (megatron DDP).
        optimizer: Its megatron optimizer.
        batch: The samples (:func:`pack_policy_batch`).
        config: Run config (``grpo`` holds the loss settings).
        vocab_size: Real vocabulary size (the logits of megatron's padding ids are excluded, as in the engine).
        ref_model: Frozen reference policy (same layout), needed when ``grpo.beta > 0``.

    Returns:
        Metrics identical on every rank: ``loss`` (mean over optimizer steps of the global-batch loss),
        ``grad_norm`` (mean), the token-weighted loss metrics (``clip_fraction``, ``kl``, ``ratio_mean``, ...),
        ``ratio_max`` and ``generator_trainer_logprob_diff`` (mean of generator minus trainer log-prob).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads

    from nemotron_plugins.rl.loss import compute_policy_loss

    cfg = config.grpo
    temp = cfg.temperature
    micro = cfg.micro_batch_size
    _, _, dp, dp_rank = _layout()
    pad_rows = ps.get_pipeline_model_parallel_world_size() > 1
    width = int(batch.input_ids.shape[1])
    reports_rank = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
    n = len(batch)
    chunks = [c for c in torch.arange(n).tensor_split(cfg.updates_per_rollout) if c.numel()]
    plans = [_micro_batches(batch, chunk[dp_rank::dp], micro, pad_rows) for chunk in chunks]

    # Log-probs of the policy before any update ("old") and of the reference, attached to the micro-batches (on the
    # last pipeline stage, the only one that computes the loss).
    module = model.module if hasattr(model, "module") else model
    module.eval()
    if not (cfg.updates_per_rollout == 1 and cfg.epochs_per_rollout == 1):
        for plan in plans:
            for mb, lp in zip(plan, _forward_logprobs(model, plan, width, micro, temp, vocab_size), strict=False):
                mb["old_logprobs"] = lp
    if cfg.beta > 0:
        if ref_model is None:
            raise ValueError(f"grpo.beta = {cfg.beta} > 0 needs ref_model")
        for plan in plans:
            for mb, lp in zip(plan, _forward_logprobs(ref_model, plan, width, micro, temp, vocab_size), strict=False):
                mb["ref_logprobs"] = lp
    module.train()

    sums = torch.zeros(len(_TOKEN_METRICS) + 2, dtype=torch.float64)  # metrics..., token weight, loss
    ratio_max = torch.zeros((), dtype=torch.float64)
    grad_norms: list[float] = []
    for _epoch in range(cfg.epochs_per_rollout):
        for chunk, plan in zip(chunks, plans, strict=True):
            global_tokens = float(batch.mask[chunk].sum())
            global_sequences = float(chunk.numel())

            def step_fn(
                data_iterator: Any, model_: Any, gt: float = global_tokens, gs: float = global_sequences
            ) -> tuple[torch.Tensor, Any]:
                mb = next(data_iterator)
                output = _forward_micro_batch(model_, mb)

                def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                    dev = out.device
                    mask = mb["mask"].to(dev)
                    lp = _logprobs(out, mb["targets"].to(dev), temp, vocab_size)
                    old = mb["old_logprobs"].to(dev) if "old_logprobs" in mb else lp.detach()
                    gen = mb["generator_logprobs"].to(dev)
                    loss, metrics = compute_policy_loss(
                        lp,
                        old,
                        mb["advantages"].to(dev),
                        mask,
                        cfg=cfg,
                        ref_logprobs=mb["ref_logprobs"].to(dev) if "ref_logprobs" in mb else None,
                        generator_logprobs=gen if cfg.importance_sampling_correction else None,
                        total_tokens_in_global_batch=gt,
                        total_sequences_in_global_batch=gs,
                    )
                    tokens_here = float(mask.sum())
                    metrics["generator_trainer_logprob_diff"] = (
                        float(((gen - lp.detach()) * mask).sum()) / tokens_here if tokens_here else 0.0
                    )
                    report = {key: float(metrics.get(key, 0.0)) * tokens_here for key in _TOKEN_METRICS}
                    report["_tokens"] = tokens_here
                    report["_loss"] = float(loss.detach())
                    report["_ratio_max"] = float(metrics.get("ratio_max", 0.0))
                    return loss, mask.sum().to(torch.int), report

                return output, loss_func

            model.zero_grad_buffer()
            optimizer.zero_grad()
            reports = _run_schedule(model, plan, width, micro, step_fn, forward_only=False)
            finalize_model_grads([model])
            ok, grad_norm, _ = optimizer.step()
            if not ok:
                raise RuntimeError("the optimizer step failed (non-finite gradients)")
            grad_norms.append(float(grad_norm) if grad_norm is not None else 0.0)
            if reports_rank:
                for report in reports:
                    for i, key in enumerate(_TOKEN_METRICS):
                        sums[i] += report[key]
                    sums[-2] += report["_tokens"]
                    sums[-1] += report["_loss"]
                    ratio_max = torch.maximum(ratio_max, torch.tensor(report["_ratio_max"], dtype=torch.float64))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(ratio_max, op=torch.distributed.ReduceOp.MAX)
    steps = max(1, len(grad_norms))
    out = {key: float(sums[i] / sums[-2]) if sums[-2] > 0 else 0.0 for i, key in enumerate(_TOKEN_METRICS)}
    if not cfg.importance_sampling_correction:
        out.pop("is_weight_mean")
    out["loss"] = float(sums[-1]) / steps
    out["ratio_max"] = float(ratio_max)
    out["grad_norm"] = sum(grad_norms) / steps
    out["optimizer_steps"] = float(len(grad_norms))
    return out


# ----------------------------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------------------------


def train_step(
    *,
    step: int,
    model: Any,
    optimizer: Any,
    engine: Any,
    config: GRPOTrainConfig,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int],
    rewards: Mapping[str, tuple[float, Any]],
    vocab_size: int,
    ref_model: Any | None = None,
    pass_rates: Sequence[float] | None = None,
) -> dict[str, float]:
    """One rollout + update on the prompts ``batch`` (every rank calls it); returns the step's metrics."""
    from nemotron_plugins.rl.advantages import advantages_from_config

    cfg = config.grpo
    g = cfg.num_generations
    t0 = time.perf_counter()
    samples = distributed_rollout(
        engine,
        [prompt_ids[i] for i in batch],
        n=g,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=_mix_seed(config.seed, step),
    )
    t_rollout = time.perf_counter() - t0
    sample_rows = [rows[batch[i]] for i in samples.prompt_index]
    texts = decode_completions(tokenizer, samples.completion_ids)
    t1 = time.perf_counter()
    total, per = distributed_score(rewards, texts, sample_rows)
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
        packed = pack_policy_batch(
            [prompt_ids[batch[samples.prompt_index[i]]] for i in keep],
            [samples.completion_ids[i] for i in keep],
            [samples.logprobs[i] for i in keep],
            flat_adv[keep],
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        metrics.update(policy_update(model, optimizer, packed, config, vocab_size=vocab_size, ref_model=ref_model))
        metrics["train/sequences"] = float(len(keep))
        metrics["train/tokens"] = float(packed.mask.sum())
        if config.grpo.rollout_engine not in EMBEDDED_ENGINES:
            engine.update_weights(model=model.module if hasattr(model, "module") else model)
    else:
        metrics["train/sequences"] = 0.0
        metrics["train/tokens"] = 0.0
    t_train = time.perf_counter() - t2
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


def _fmt(ev: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={int(v) if k == 'n' else round(v, 4)}" for k, v in ev.items())


def run_grpo(config: Any) -> GRPOResult:
    """Run GRPO / RLOO training end to end (see the module docstring); every rank of a torchrun /
    :func:`~nemotron_plugins.runtime.distributed.run_local_processes` group calls it.

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
    from nemotron_plugins.runtime.distributed import ensure_distributed

    with ensure_distributed(config.parallel, seed=config.seed):
        return _run(config)


def _run(config: GRPOTrainConfig) -> GRPOResult:  # noqa: PLR0915 - one linear training procedure
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.runtime.checkpoint import latest_step, load_training_state, save_training_state
    from nemotron_plugins.runtime.metrics import MetricsLogger

    start = time.perf_counter()
    world, rank, dp, _ = _layout()
    is_rank0 = rank == 0

    def say(text: str) -> None:
        if is_rank0:
            print(f"[grpo] {text}", flush=True)

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    if is_rank0:
        load_prompt_rows(config)  # writes the synthetic data once
    barrier()
    rows, heldout, _ = load_prompt_rows(config)
    model, model_config, tokenizer = build_policy(config, build_tiny_tokenizer())
    vocab_size = len(tokenizer)
    prompt_ids = encode_prompts(tokenizer, rows)
    longest = max(len(p) for p in prompt_ids)
    if longest + config.grpo.max_new_tokens > config.seq_length:
        raise ValueError(
            f"a training prompt has {longest} tokens; with grpo.max_new_tokens = {config.grpo.max_new_tokens} it "
            f"needs seq_length >= {longest + config.grpo.max_new_tokens} (GRPOTrainConfig.seq_length = "
            f"{config.seq_length})"
        )
    ref_model = None
    if config.grpo.beta > 0:
        from nemotron_plugins.puzzle.model import build_puzzle_model

        ref_model = build_puzzle_model(
            model_config,
            parallel=config.parallel,
            seq_length=config.seq_length,
            params_dtype=config.params_dtype,
            perform_initialization=False,
        )
        ref_model.load_state_dict(model.state_dict())
        ref_model.eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        if config.parallel.pipeline_model_parallel_size > 1:
            ref_model.config.pipeline_dtype = next(ref_model.parameters()).dtype
    engine = build_engine(config, model, model_config, tokenizer)
    ddp, optimizer = build_policy_optimizer(model, config)
    rewards = build_rewards(config)
    say(
        f"{len(rows)} training / {len(heldout)} held-out prompts; policy {type(model).__name__} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters on rank 0), world {world} "
        f"(TP{config.parallel.tensor_model_parallel_size} PP{config.parallel.pipeline_model_parallel_size} DP{dp}), "
        f"engine {config.grpo.rollout_engine}"
    )
    eval_kwargs = {
        "max_new_tokens": config.grpo.max_new_tokens,
        "temperature": config.grpo.temperature,
        "top_p": config.grpo.top_p,
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
            model.load_state_dict(state.model_state)
            optimizer.load_state_dict(state.optimizer_state)
            pass_rates = state.extra.get("pass_rates")
            result.before = dict(state.extra.get("before", {}))
            if ref_model is not None and "ref_model" in state.extra:
                ref_model.load_state_dict(state.extra["ref_model"])
            sampler = _build_sampler(config, pass_rates, len(rows))
            sampler.load_state_dict(state.sampler_state)
            step = resumed
            say(f"resumed from step {resumed} ({state.path})")
        else:
            if heldout:
                t = time.perf_counter()
                result.before = evaluate_policy(engine, tokenizer, heldout, rewards, **eval_kwargs)
                say(f"held-out before ({time.perf_counter() - t:.0f}s): {_fmt(result.before)}")
            if config.curriculum:
                t = time.perf_counter()
                pass_rates = estimate_pass_rates(
                    engine,
                    tokenizer,
                    rows,
                    rewards,
                    samples_per_prompt=config.pass_rate_samples,
                    accuracy_reward=config.accuracy_reward,
                    max_new_tokens=config.grpo.max_new_tokens,
                    temperature=config.grpo.temperature,
                    seed=config.seed,
                )
                say(
                    f"curriculum: pass rates of {len(rows)} prompts x {config.pass_rate_samples} samples, mean "
                    f"{sum(pass_rates) / len(pass_rates):.3f} ({time.perf_counter() - t:.1f}s)"
                )
            sampler = _build_sampler(config, pass_rates, len(rows))
            step = 0
        metrics_log = MetricsLogger(
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
            if ref_model is not None:
                extra["ref_model"] = ref_model.state_dict()
            save_training_state(
                ckpt_dir,
                step=at,
                model_state=model.state_dict(),
                optimizer_state=optimizer.state_dict(),
                sampler_state=sampler.state_dict(),
                extra=extra,
                keep_last=config.keep_last,
            )

        with metrics_log:
            while step < config.train_steps:
                batch = _next_batch(sampler)
                metrics = train_step(
                    step=step,
                    model=ddp,
                    optimizer=optimizer,
                    engine=engine,
                    config=config,
                    tokenizer=tokenizer,
                    rows=rows,
                    prompt_ids=prompt_ids,
                    batch=batch,
                    rewards=rewards,
                    vocab_size=vocab_size,
                    ref_model=ref_model,
                    pass_rates=pass_rates,
                )
                step += 1
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                if heldout and config.eval_interval and step % config.eval_interval == 0 and step < config.train_steps:
                    ev = evaluate_policy(engine, tokenizer, heldout, rewards, **eval_kwargs)
                    metrics.update({f"eval/{k}": v for k, v in ev.items()})
                metrics_log.log(step, metrics)
                result.history.append(metrics)
                if (config.save_interval and step % config.save_interval == 0) or step == config.train_steps:
                    save(step)
        result.steps = step
        if heldout:
            t = time.perf_counter()
            result.after = evaluate_policy(engine, tokenizer, heldout, rewards, **eval_kwargs)
            say(f"held-out after ({time.perf_counter() - t:.0f}s):  {_fmt(result.after)}")
    finally:
        for _, reward in rewards.values():
            reward.close()
        engine.close()
    result.wall_time_s = time.perf_counter() - start
    if is_rank0:
        _report(result, out)
    return result


def _report(result: GRPOResult, out: Path) -> None:
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
    b, a = result.before, result.after
    if b and a:
        print(f"[grpo] held-out accuracy over n={int(a['n'])} prompts (T=1 sampled, one sample each; greedy beside):")
        for key in sorted(k for k in a if k.startswith(("accuracy_", "format_"))):
            print(f"[grpo]   {key:24s} before {b.get(key, float('nan')):.3f}  after {a[key]:.3f}", flush=True)
    command = shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    print(f"[grpo] {result.steps} steps, {result.wall_time_s:.0f}s; output {out}", flush=True)
    if command:
        print(f"[grpo] reproduce: {command}", flush=True)


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
        parallel=recipe.parallel,
        seq_length=recipe.model.seq_length if recipe.model.seq_length > 0 else 256,
        params_dtype=recipe.model.params_dtype,
        data_dir=recipe.data.path,
        num_train_prompts=recipe.data.num_train_samples or 512,
        num_heldout_prompts=recipe.data.num_eval_samples,
        data_seed=int(options.get("data_seed", 0)),
        synthetic_train_problems=int(options["synthetic_train_problems"])
        if "synthetic_train_problems" in options
        else None,
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
