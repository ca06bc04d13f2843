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

from nemotron_plugins.preference.config import PreferenceConfig
from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.runtime.config import (
    CheckpointConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
)

Task = Literal["sft", "grpo", "rloo", "reward_model", "rpo"]
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


DATASETS: tuple[str, ...] = ("synthetic_addition", "post_training", "preference_pairs")
"""Values of ``data.dataset``: the generated arithmetic task of the tiny recipes, files in the
Llama-Nemotron Post-Training-Dataset format, or HelpSteer-style preference pairs (JSONL; reward models, offline RPO:
:mod:`nemotron_plugins.preference.data`)."""


@dataclass(kw_only=True, slots=True)
class SyntheticDataConfig:
    """The generated addition task (``data.dataset="synthetic_addition"``; tiny CPU recipes only)."""

    problems: int = 2000
    """Training problems written (each gives a reasoning-on and a reasoning-off SFT row, and one RL prompt)."""
    heldout_problems: int = 500
    """Held-out problems written (evaluation prompts come from these; never trained on)."""
    corrupt_fraction: float = 0.0
    """Fraction of training traces corrupted (a forgotten carry), leaving headroom for a later RL stage."""
    reversed_answer_fraction: float = 0.0
    """Fraction of training problems whose final answer is also written reversed (drawn independently of
    ``corrupt_fraction``): a second, answer-level mistake for RL to remove."""
    min_value: int = 10
    """Smallest operand."""
    max_value: int = 999
    """Largest operand."""
    seed: int = 0
    """Generation seed (an RL stage with the same seed and ``problems`` sees the SFT stage's held-out set)."""


@dataclass(kw_only=True, slots=True)
class BlendSource:
    """One source of a multi-domain data blend (``data.blend``; Nemotron-CrossThink style, see
    :mod:`nemotron_plugins.data.blend`)."""

    path: str
    """The source's rows: a JSONL / parquet file, a directory of them, or a saved ``datasets`` directory."""
    weight: float = 1.0
    """Share of the blend: ``weight / sum(weights)`` of its rows (> 0)."""
    template: Literal["as_is", "mcq", "open_ended"] = "as_is"
    """RL prompts: ``as_is`` keeps the rows; ``mcq`` writes question + lettered options + "answer with the letter"
    (gold: the letter); ``open_ended`` writes the question without options (gold: the answer text). SFT: ``as_is``
    only."""
    domain: str | None = None
    """Name in the blend report (several sources may share one); ``None``: the file / directory name."""
    max_rows: int | None = None
    """Read at most this many usable rows of the source (in file order); ``None``: all."""
    reward: str | None = None
    """RL: the reward (one of ``rewards``) that scores this source's rows, written to their ``reward`` column;
    ``None``: the rows' own ``reward`` column, else every reward of the recipe."""
    max_answer_words: int | None = None
    """``open_ended``: drop rows whose answer has more words (CrossThink keeps short answers); ``None``: no cap."""


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where the training examples (SFT) or prompts (RL) come from."""

    dataset: str = "post_training"
    """``post_training``: files in the Llama-Nemotron Post-Training-Dataset format at ``path`` (JSONL, parquet, or
    a ``datasets`` directory saved with ``save_to_disk``); ``synthetic_addition``: the generated task of the tiny
    recipes, chosen explicitly (never a fallback)."""
    hub_id: str | None = None
    """The Hugging Face dataset the recipe is written for; named in the error when ``path`` is missing (nothing is
    downloaded at run time)."""
    path: str | None = None
    """Training rows: a JSONL / parquet file, a directory of them, or a saved ``datasets`` directory. Required for
    ``post_training``; ``synthetic_addition`` writes its rows to ``<output_dir>/data``."""
    eval_path: str | None = None
    """Held-out rows in the same format (evaluation); ``None``: no held-out evaluation for ``post_training``."""
    splits: list[str] = field(default_factory=list)
    """Categories to keep (the rows' ``category`` column, e.g. ``math``, ``code``, ``science``, ``chat``); empty
    keeps all."""
    reasoning: Literal["on", "off", "both"] = "both"
    """Which reasoning-toggle rows to keep (the system prompt ``detailed thinking on|off``)."""
    chat_template: str = "llama-nemotron-super"
    """Registered chat template (``CHAT_TEMPLATES``) used to render prompts."""
    tokenizer: str | None = None
    """Tokenizer directory, or ``tiny`` (the builtin character tokenizer); ``None`` = ``model.checkpoint``'s."""
    max_seq_length: int = 4096
    """Longest tokenised example (SFT) or prompt (RL); longer ones are dropped and counted."""
    pack_sequences: bool = False
    """SFT: pack several examples into one sequence; attention sees the boundaries (megatron ``PackedSeqParams``)."""
    dynamic_padding: bool = True
    """SFT: cut each step's rows to the longest sequence of its global batch (a multiple of 8) instead of
    ``max_seq_length``; the loss is unchanged."""
    num_train_samples: int | None = None
    """Cap on training rows (RL: prompts) after filtering; ``None`` uses all."""
    synthetic: SyntheticDataConfig | None = None
    """Settings of ``dataset="synthetic_addition"`` (required there, rejected otherwise)."""
    blend: list[BlendSource] | None = None
    """``post_training`` only, instead of ``path``: weighted sources with MCQ / open-ended templates, filtered to
    answers the recipe's rewards can verify, sampled by weight from ``seed`` (``num_train_samples`` rows, else the
    most the weights allow without repeating a row); see ``docs/recipes.md``, "Data blends (CrossThink)"."""


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    """Held-out evaluation (SFT: greedy reasoning-toggle accuracy; RL: reward-based accuracy)."""

    num_samples: int = 0
    """Held-out prompts evaluated (0 disables evaluation)."""
    interval: int = 0
    """Evaluate every N steps; 0 evaluates only before (``at_start``) and after training."""
    at_start: bool = True
    """Also evaluate before the first step (a baseline)."""
    greedy: bool = True
    """RL: also report greedy (temperature 0) accuracy beside the sampled one."""
    max_new_tokens: int | None = None
    """Longest generated response; ``None`` = ``generation.max_new_tokens`` (required for SFT)."""
    batch_size: int = 64
    """Prompts decoded together in SFT evaluation."""
    accuracy_reward: str | None = None
    """RL: the reward (one of ``rewards``) reported as accuracy; ``None`` = the first reward."""
    format_reward: str | None = None
    """RL: a reward reported as the format score (``None``: none)."""


@dataclass(kw_only=True, slots=True)
class SamplerConfig:
    """Curriculum: pass-rate filtering and the progressive batch sampler (RL prompts)."""

    name: str = "progressive_gaussian"
    """Registered batch sampler (``BATCH_SAMPLERS``): ``progressive_gaussian`` or ``random``."""
    pass_rates_path: str | None = None
    """Pass rates from ``nemotron-plugins curriculum estimate`` (JSONL ``{"id", "pass_rate"}``, ids matching the
    prompt rows' ``id``); ``None`` estimates them with the initial policy before training."""
    pass_rate_responses: int = 8
    """Responses per prompt when the trainer estimates pass rates itself."""
    drop_pass_rate_at_least: float | None = 0.75
    """Prompts whose pass rate is at least this are dropped as too easy; ``None`` keeps all."""
    num_bins: int = 10
    """Equal-width pass-rate bins over [0, 1] the Gaussian target distribution is placed over."""
    center_start: float | None = None
    """Pass-rate centre of the target Gaussian in the first batch; ``None`` = the easiest bin's mean."""
    center_end: float | None = None
    """Pass-rate centre in the last batch; ``None`` = the hardest bin's mean."""
    width: float = 0.15
    """Standard deviation of the target Gaussian, in pass-rate units."""
    schedule: Literal["linear", "cosine", "sqrt", "quadratic", "constant"] = "linear"
    """How the centre moves from start to end over the run's ``train_steps`` batches."""
    balance: Literal["none", "sinkhorn"] = "none"
    """``none``: the paper's plain Gaussian per batch; ``sinkhorn``: targets rescaled to each bin's supply."""


@dataclass(kw_only=True, slots=True)
class RewardSpec:
    """One reward in a weighted sum."""

    name: str
    """Registered reward (``REWARDS``), e.g. ``math``, ``llm_judge``, ``think_format``, ``ifeval``."""
    weight: float = 1.0
    """Weight of this reward in the sum (non-zero)."""
    options: dict[str, object] = field(default_factory=dict)
    """Keyword arguments of the reward's constructor (e.g. the judge's ``base_url``); validation builds the
    reward with them, so an unknown option is rejected."""


@dataclass(kw_only=True, slots=True)
class GenerationConfig:
    """Rollout generation, colocated with training on the same devices."""

    engine: str = "megatron"
    """Registered rollout engine (``ROLLOUT_ENGINES``) the trainer drives: ``megatron`` (CPU-capable, the policy
    itself with a KV cache) or ``vllm`` (GPU)."""
    tensor_model_parallel_size: int = 1
    """Generation TP (vLLM, or the ``megatron`` engine with ``megatron_layout="generation"``); the ``megatron`` engine
    at the training layout generates at the training TP and needs this equal to it."""
    megatron_layout: Literal["training", "generation"] = "training"
    """``megatron`` engine only. ``training``: decode with the policy module itself, at the training layout (no
    pipeline parallelism). ``generation``: decode with a whole-model copy of the policy at
    ``tensor_model_parallel_size`` (generation DP = world / that), refreshed from the training shards after every
    update through the refit stream; any training TP / PP / DP, at the memory of one more model replica per
    generation-TP group."""
    async_rollouts: bool = False
    """GRPO / RLOO: one-step off-policy generation overlapped with training. While the policy worker updates on
    step ``t``'s rollouts, a background thread generates and scores step ``t + 1``'s with the weights the generation
    engine holds (those before update ``t``), and the engine is refitted after the update; the update trains on
    rollouts one policy version old, corrected by ``algorithm.importance_sampling_correction`` (required). Needs an
    engine with weights of its own: ``megatron_layout="generation"`` or ``engine="vllm"`` (the colocated megatron
    engine decodes with the model being updated). The step before a checkpoint does not prefetch, so a resumed run
    is the uninterrupted one (see ``docs/grpo.md``)."""
    temperature: float = 1.0
    """Sampling temperature; the loss uses log-probs of the same tempered distribution."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 1024
    """Longest generated response."""
    batch_size: int = 128
    """``megatron`` engine: sequences decoded together (one static KV cache of this batch size)."""
    fp8: bool = False
    """vLLM: generate with FP8 weights (per-tensor weight scales, dynamic activation scales)."""
    kv_cache_dtype: Literal["auto", "bfloat16", "float16", "float32", "fp8"] = "auto"
    """vLLM KV-cache element type; ``auto`` = the model dtype. Also sizes the cache in the memory estimate."""
    max_num_seqs: int | None = None
    """vLLM: most sequences one replica decodes at once; ``None`` = vLLM's default."""
    gpu_memory_utilization: float = 0.6
    """vLLM's share of device memory while generating."""


@dataclass(kw_only=True, slots=True)
class RecipeConfig:
    """A complete training run: what a recipe function returns."""

    name: str
    """Recipe name (the registered name in ``RECIPES``)."""
    task: Task
    """``sft``, ``grpo``, ``rloo``, ``reward_model`` or ``rpo``; selects the trainer."""
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
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    sampler: SamplerConfig | None = None
    """Curriculum sampler (RL); ``None`` samples prompts uniformly at random."""
    rewards: list[RewardSpec] | None = None
    """Weighted rewards (RL only)."""
    reward_workers: int | None = None
    """RL: worker processes per reward pool on each rank; every reward is scored in a pool with a hard per-sample
    time bound (``reward_timeout_s``) and memory cap (server-backed rewards keep their own deadlines). ``None`` = 1."""
    reward_timeout_s: float = 10.0
    """RL: a sample still being scored after this many seconds has its worker killed and gets status ``timeout``."""
    max_reward_failure_rate: float = 0.1
    """RL: the run stops when a reward gives no verdict (timeout / error / unavailable) on more than this fraction
    of the samples it applies to in one step (or in an evaluation); below it, such samples leave the advantage
    computation and are counted in ``reward_failures/*``. 0 stops at the first failure."""
    algorithm: GRPOConfig | None = None
    """RL algorithm: advantages and the clipped policy-gradient loss (RL only)."""
    generation: GenerationConfig | None = None
    """Rollout generation (RL and online RPO)."""
    preference: PreferenceConfig | None = None
    """Reward-model training and RPO / DPO settings (``task`` ``reward_model`` or ``rpo`` only)."""
    train_steps: int = 100
    """Optimizer steps (SFT) or rollout steps (RL)."""
    micro_batch_size: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks (RL: a rollout of
    ``prompts x generations x epochs`` gives ``rollout / global_batch_size`` optimizer steps)."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation: ``selective`` recomputes attention cores, ``full`` whole layers."""
    seed: int = 1234
    """Random seed (weights, data order, sampling)."""
    output_dir: str | None = None
    """Run directory; defaults to ``runs/<name>``. Unset checkpoint / log paths are placed inside it."""
    init_from_recipe: str | None = None
    """A recipe whose final checkpoint initialises this one (e.g. the SFT stage before GRPO). ``train`` runs it
    first, in ``<parent of output_dir>/<that recipe>``, when its checkpoint is missing."""
    init_checkpoint: str | None = None
    """Training checkpoint directory whose model weights (and architecture, tokenizer) start this run; the
    optimizer state is not loaded."""
    stop_after_steps: int | None = None
    """Stop (after saving a checkpoint) once this many steps are done, keeping the ``train_steps`` schedule: a
    deliberate interruption to resume later (preemptible jobs, tests)."""
    torch_threads: int | None = None
    """``torch.set_num_threads`` per process (CPU runs); ``None`` leaves torch's default."""

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
