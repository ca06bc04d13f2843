"""The top-level run config a recipe returns and a trainer consumes.

A :class:`RecipeConfig` bundles the shared parts from :mod:`nemotron_plugins.runtime.config` (model, parallelism,
optimizer, checkpointing, logging) with the parts that only some tasks use: data, the curriculum sampler, rewards,
the RL algorithm and the rollout generation settings, plus the cluster it is sized for. Trainers take the parts they
need (``run_sft(config)`` / ``run_grpo(config)``); launchers turn the cluster block into torchrun / Slurm settings.

Plain data only (no torch import), so configs build and validate on any machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from nemotron_plugins.runtime.config import (
    CheckpointConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
)

Task = Literal["sft", "grpo", "rloo"]
RL_TASKS: tuple[str, ...] = ("grpo", "rloo")


@dataclass(kw_only=True, slots=True)
class ClusterConfig:
    """The machines a recipe is sized for; ``world_size = nodes * devices_per_node``."""

    nodes: int = 1
    """Number of nodes (Slurm ``--nodes``; torchrun ``--nnodes``)."""
    devices_per_node: int = 8
    """GPUs per node (CPU recipes: processes per node)."""
    device: Literal["cuda", "cpu"] = "cuda"
    """``cuda`` for GPU recipes (NCCL); ``cpu`` runs megatron-core over gloo."""
    gpu_memory_gb: float = 80.0
    """Memory per GPU the pre-launch memory estimate must fit in (H100 SXM: 80 GB)."""
    container_image: str | None = None
    """Container image for Slurm (pyxis ``--container-image``); ``None`` runs on the host environment."""
    container_mounts: list[str] = field(default_factory=list)
    """Slurm container mounts ``src:dst`` (pyxis ``--container-mounts``)."""
    time_limit: str = "04:00:00"
    """Slurm wall-clock limit per job (``HH:MM:SS``)."""

    @property
    def world_size(self) -> int:
        """Total number of ranks."""
        return self.nodes * self.devices_per_node


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where the training examples (SFT) or prompts (RL) come from."""

    dataset: str = "synthetic_addition"
    """Dataset name: a builtin synthetic task (``synthetic_addition``) or an HF dataset id / local path."""
    splits: list[str] = field(default_factory=lambda: ["train"])
    """Splits / categories to use (Post-Training dataset: code, math, science, chat, safety, instruction_following)."""
    path: str | None = None
    """Local directory or JSONL file with the rows; ``None`` means the dataset is synthetic or already cached."""
    reasoning: Literal["on", "off", "both"] = "both"
    """Which reasoning-toggle rows to keep (the system prompt ``detailed thinking on|off``)."""
    chat_template: str = "llama-nemotron-super"
    """Registered chat template (``CHAT_TEMPLATES``) used to render prompts."""
    tokenizer: str | None = None
    """Tokenizer directory or builtin name; ``None`` uses the one that ships with the dataset / model."""
    max_seq_length: int = 4096
    """Longest tokenised example (SFT) or prompt (RL); longer ones are dropped."""
    pack_sequences: bool = False
    """Pack several SFT examples into one sequence (attention and loss masks kept per example)."""
    num_train_samples: int | None = None
    """Cap on training rows (synthetic tasks: how many to generate)."""
    num_eval_samples: int = 0
    """Held-out rows for evaluation (0 disables evaluation)."""
    eval_interval: int = 0
    """Evaluate every N steps; 0 evaluates only at the end when there are eval rows."""
    options: dict[str, object] = field(default_factory=dict)
    """Dataset-specific options (e.g. ``corrupt_fraction`` for the synthetic task)."""


@dataclass(kw_only=True, slots=True)
class SamplerConfig:
    """Curriculum: pass-rate filtering and the progressive batch sampler (RL prompts)."""

    name: str = "progressive_gaussian"
    """Registered batch sampler (``BATCH_SAMPLERS``): ``progressive_gaussian`` or ``random``."""
    pass_rate_responses: int = 8
    """Responses per prompt from the weaker model used to estimate each prompt's pass rate."""
    drop_pass_rate_at_least: float = 0.75
    """Prompts whose estimated pass rate is at least this are dropped as too easy."""
    num_bins: int = 10
    """Equal-width pass-rate bins over [0, 1] the Gaussian target distribution is placed over."""
    center_start: float | None = None
    """Pass-rate centre of the target Gaussian in the first batch; ``None`` = the easiest bin's mean."""
    center_end: float | None = None
    """Pass-rate centre in the last batch; ``None`` = the hardest bin's mean."""
    width: float = 0.15
    """Standard deviation of the target Gaussian, in pass-rate units."""
    schedule: Literal["linear", "cosine", "sqrt", "quadratic", "constant"] = "linear"
    """How the centre moves from start to end over the batches."""
    pass_rates_path: str | None = None
    """Precomputed pass rates (JSONL ``{"id", "pass_rate"}``); ``None`` estimates them before training."""
    options: dict[str, object] = field(default_factory=dict)
    """Other keyword arguments for the sampler (e.g. ``balance``)."""

    @property
    def sigma(self) -> float:
        """Deprecated alias of ``width`` (an earlier name of this field, still read by the RL trainer)."""
        return self.width


@dataclass(kw_only=True, slots=True)
class RewardSpec:
    """One reward in a weighted sum."""

    name: str
    """Registered reward (``REWARDS``), e.g. ``llm_judge``, ``format``, ``ifeval``, ``exact_answer``."""
    weight: float = 1.0
    """Weight of this reward in the sum."""
    options: dict[str, object] = field(default_factory=dict)
    """Keyword arguments for the reward's constructor (e.g. the judge's ``base_url`` and ``model``)."""


@dataclass(kw_only=True, slots=True)
class AlgorithmConfig:
    """GRPO / RLOO: advantage estimation and the clipped policy-gradient loss."""

    name: Literal["grpo", "rloo"] = "grpo"
    """Registered algorithm (``ALGORITHMS``)."""
    prompts_per_rollout: int = 72
    """Prompts sampled per rollout step."""
    generations_per_prompt: int = 16
    """Responses generated per prompt (the group size)."""
    updates_per_rollout: int = 2
    """Gradient updates per rollout; the rollout's samples are split into this many global batches."""
    leave_one_out_baseline: bool = False
    """Baseline each response with the mean of the other responses in its group (RLOO); else the group mean."""
    normalize_std: bool = True
    """Divide advantages by the group's reward std where it is > 0 (GRPO)."""
    skip_uniform_groups: bool = True
    """Drop groups whose rewards are all equal (zero advantage)."""
    clip_eps: float = 0.2
    """Lower (and default upper) ratio clip."""
    clip_eps_high: float | None = None
    """Upper ratio clip (asymmetric clipping); ``None`` uses ``clip_eps``."""
    kl_beta: float = 0.0
    """Weight of the KL penalty to the reference policy (k3 estimator); 0 disables the reference model."""
    token_level_loss: bool = True
    """Average the loss over all tokens of the global batch (else per sequence, then over sequences)."""
    importance_correction: bool = False
    """Correct for generator/trainer log-prob mismatch with truncated importance weights."""


@dataclass(kw_only=True, slots=True)
class GenerationConfig:
    """Rollout generation, colocated with training on the same devices."""

    engine: str = "megatron"
    """Registered rollout engine (``ROLLOUT_ENGINES``): ``megatron`` (CPU-capable), ``vllm`` or ``openai``."""
    tensor_model_parallel_size: int = 1
    """Generation TP; generation DP is ``world_size / TP``."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 1024
    """Longest generated response."""
    fp8: bool = False
    """Generate with FP8 weights (vLLM: per-tensor weight scales, per-token activation scales)."""
    kv_cache_dtype: Literal["bfloat16", "float16", "float32", "fp8"] = "bfloat16"
    """KV-cache element type (sizes the cache in the memory estimate)."""
    max_num_seqs: int | None = None
    """Most sequences one generation replica decodes at once (vLLM ``max_num_seqs``); ``None`` = all of the
    rollout's sequences on that replica. Sizes the KV cache in the memory estimate."""
    gpu_memory_utilization: float = 0.6
    """vLLM's share of device memory while generating."""


@dataclass(kw_only=True, slots=True)
class RecipeConfig:
    """A complete training run: what a recipe function returns."""

    name: str
    """Recipe name (the registered name in ``RECIPES``)."""
    task: Task
    """``sft``, ``grpo`` or ``rloo``; selects the trainer."""
    description: str = ""
    """One line on what the recipe trains."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to build (HF ``block_configs`` file or builtin architecture)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Training parallelism (TP / PP / CP / DP, sequence parallel, layout)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW and the learning-rate schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint saving / resuming / HF initialisation."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics outputs."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """The machines this recipe is sized for."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data or RL prompts."""
    sampler: SamplerConfig | None = None
    """Curriculum sampler (RL); ``None`` samples prompts uniformly."""
    rewards: list[RewardSpec] | None = None
    """Weighted rewards (RL only)."""
    algorithm: AlgorithmConfig | None = None
    """RL algorithm (RL only)."""
    generation: GenerationConfig | None = None
    """Rollout generation (RL only)."""
    train_steps: int = 100
    """Optimizer steps (SFT) or rollout steps (RL)."""
    micro_batch_size: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation: ``selective`` recomputes attention cores, ``full`` whole layers."""
    seed: int = 1234
    """Random seed."""
    output_dir: str | None = None
    """Run directory; defaults to ``runs/<name>``. Unset checkpoint / log paths are placed inside it."""
    init_from_recipe: str | None = None
    """A recipe whose final checkpoint initialises this one (e.g. the SFT stage before GRPO). ``train`` runs it
    first, in ``<parent of output_dir>/<that recipe>``, when its checkpoint is missing."""
    init_checkpoint: str | None = None
    """Checkpoint directory whose model weights initialise this run (optimizer state is not loaded)."""

    @property
    def is_rl(self) -> bool:
        """Whether the task is an RL algorithm (GRPO / RLOO)."""
        return self.task in RL_TASKS

    @property
    def world_size(self) -> int:
        """Total ranks from the cluster block."""
        return self.cluster.world_size

    @property
    def data_parallel_size(self) -> int:
        """DP = world_size / (TP * PP * CP); the explicit value when the parallel block sets one."""
        p = self.parallel
        if p.data_parallel_size is not None:
            return p.data_parallel_size
        return max(
            1,
            self.world_size
            // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size),
        )


def resolve_paths(config: RecipeConfig) -> RecipeConfig:
    """Fill unset run paths from ``output_dir`` (in place) and return the config.

    ``output_dir`` defaults to ``runs/<name>``; an unset ``checkpoint.save_dir`` becomes ``<output_dir>/checkpoints``,
    an unset ``logging.jsonl_path`` ``<output_dir>/metrics.jsonl``; with ``init_from_recipe`` and no
    ``init_checkpoint``, the init checkpoint is ``<parent of output_dir>/<init recipe>/checkpoints``.
    """
    if config.output_dir is None:
        config.output_dir = os.path.join("runs", config.name)
    if config.checkpoint.save_dir is None:
        config.checkpoint.save_dir = os.path.join(config.output_dir, "checkpoints")
    if config.logging.jsonl_path is None:
        config.logging.jsonl_path = os.path.join(config.output_dir, "metrics.jsonl")
    if config.init_from_recipe is not None and config.init_checkpoint is None:
        config.init_checkpoint = os.path.join(init_stage_output_dir(config), "checkpoints")
    return config


def init_stage_output_dir(config: RecipeConfig) -> str:
    """Run directory of the ``init_from_recipe`` stage: a sibling of this run's ``output_dir``."""
    if config.init_from_recipe is None:
        raise ValueError(f"recipe {config.name!r} has no init_from_recipe")
    output_dir = config.output_dir or os.path.join("runs", config.name)
    return os.path.join(os.path.dirname(os.path.normpath(output_dir)) or ".", config.init_from_recipe)
