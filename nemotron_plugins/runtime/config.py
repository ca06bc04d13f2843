"""Configuration dataclasses shared by the trainers and the recipes.

Each trainer (``sft``, ``rl``) takes one run config composed of these parts plus its own algorithm config. Recipes
(``recipes/``) are functions that return such run configs; launchers serialise them. Everything here is plain data:
no torch import, so a config can be built and validated on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True, slots=True)
class ParallelConfig:
    """How the model is split across GPUs (or CPU processes with gloo)."""

    tensor_model_parallel_size: int = 1
    """Tensor parallel size (TP). Must divide the attention heads and every layer's KV heads."""
    pipeline_model_parallel_size: int = 1
    """Pipeline parallel size (PP)."""
    context_parallel_size: int = 1
    """Context parallel size (CP)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (requires TP > 1)."""
    pipeline_layout: list[int] | None = None
    """Layers per pipeline stage (uneven layouts allowed); ``None`` splits evenly."""
    data_parallel_size: int | None = None
    """Data parallel size; ``None`` derives it as world_size / (TP * PP * CP)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (megatron distributed optimizer)."""


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    """AdamW optimizer and learning-rate schedule."""

    lr: float = 1e-5
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of the decay schedule."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warmup."""
    bf16: bool = False
    """Train in bf16 with fp32 master weights (GPU recipes); CPU runs use fp32."""


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """Where and how often training state is saved. Saves are atomic (write to a temp dir, then rename)."""

    save_dir: str | None = None
    """Directory for checkpoints; ``None`` = ``<output_dir>/checkpoints``."""
    save_interval: int = 0
    """Save every N steps; 0 saves only at the end."""
    load_dir: str | None = None
    """Resume from the latest checkpoint here (defaults to ``save_dir`` when it holds one)."""
    keep_last: int = 2
    """How many checkpoints to keep (>= 1)."""
    resume: bool = True
    """Resume from the latest checkpoint in ``load_dir`` / ``save_dir`` when there is one; ``false`` refuses to
    start over an existing run's checkpoints (delete them or point ``save_dir`` elsewhere)."""


@dataclass(kw_only=True, slots=True)
class LoggingConfig:
    """Metrics outputs."""

    log_interval: int = 1
    """Print metrics every N steps."""
    jsonl_path: str | None = None
    """Append one JSON object of metrics per step here."""
    tensorboard_dir: str | None = None
    """TensorBoard log directory (used when tensorboard is installed)."""
    wandb_project: str | None = None
    """Weights & Biases project (used when wandb is installed)."""
    progress_bar: bool = True
    """Show a progress bar on the console."""


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """Which model to train and where its weights come from.

    ``init="checkpoint"`` (every paper recipe): the weights come from ``checkpoint``, a Hugging Face directory
    (nemotron-nas / DeciLM or Llama ``config.json``, safetensors shards, tokenizer files), or from the run's
    ``init_checkpoint`` / ``init_from_recipe`` (a training checkpoint of an earlier stage). ``config_path`` may name
    the architecture in advance, so ``recipes validate`` checks layout and memory before the download; when both are
    given they must describe the same architecture. ``init="random"`` (tiny CPU recipes, Puzzle children): a
    freshly initialised model of ``config_path``.
    """

    init: Literal["checkpoint", "random"] = "checkpoint"
    """Where the starting weights come from (see the class docstring)."""
    checkpoint: str | None = None
    """Hugging Face checkpoint directory (weights + config + tokenizer) the run starts from."""
    hub_id: str | None = None
    """The Hugging Face model the recipe is written for; named in the error when ``checkpoint`` is missing (nothing
    is downloaded at run time)."""
    config_path: str | None = None
    """Architecture file (an HF ``config.json`` with ``block_configs`` or plain Llama, or a directory holding one)."""
    overrides: dict[str, object] = field(default_factory=dict)
    """Top-level HF config keys to override (e.g. ``max_position_embeddings``); unknown keys are rejected. The
    megatron fusion switches (``bias_activation_fusion``, ``bias_dropout_fusion``, ``cross_entropy_loss_fusion``,
    ``apply_rope_fusion``, ``gradient_accumulation_fusion``: ``nemotron_plugins.puzzle.model.FUSION_FIELDS``) set
    the ``TransformerConfig`` instead; by default the torch-only ones are on for CUDA and all are off on CPU."""
    seq_length: int = 4096
    """Longest training sequence in tokens (megatron's ``max_sequence_length``)."""
    params_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype; ``bfloat16`` needs ``optimizer.bf16=true`` (fp32 main weights in the optimizer)."""
    layer_spec: str | None = None
    """Registered ``layer_specs`` plugin that builds the blocks (``puzzle_te``, ``puzzle_local``, ...); ``None``
    picks Transformer Engine when it is installed and CUDA is present, else the local modules."""
