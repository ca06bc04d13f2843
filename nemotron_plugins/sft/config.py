"""Configuration of an SFT run on the Megatron heterogeneous ("Puzzle") model.

:class:`SFTRunConfig` is what :func:`nemotron_plugins.sft.trainer.run_sft` takes: the shared runtime parts
(:mod:`nemotron_plugins.runtime.config`) plus :class:`SFTDataConfig`, :class:`SFTEvalConfig` and the batch sizes.
:func:`from_recipe` converts the recipes' :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` (``task ==
"sft"``). :meth:`SFTRunConfig.validate` checks everything before any torch work and raises :class:`SFTConfigError`
naming the field and what would be valid.

Plain data only (no torch import).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from nemotron_plugins.runtime.config import (
    CheckpointConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
)

__all__ = [
    "BUILTIN_ARCHITECTURES",
    "SFTConfigError",
    "SFTDataConfig",
    "SFTEvalConfig",
    "SFTRunConfig",
    "from_recipe",
]

BUILTIN_ARCHITECTURES: tuple[str, ...] = ("tiny_puzzle",)
"""Names accepted in ``model.architecture`` (``tiny_puzzle``: :func:`nemotron_plugins.puzzle.tiny.tiny_puzzle_config`
sized to the tokenizer)."""

SYNTHETIC_DATASETS: tuple[str, ...] = ("synthetic_addition",)


class SFTConfigError(ValueError):
    """An SFT config value that cannot run; the message names the field and what would be valid."""


@dataclass(kw_only=True, slots=True)
class SFTDataConfig:
    """Training rows and how they become token sequences."""

    dataset: str = "synthetic_addition"
    """``synthetic_addition`` (generated into ``<output_dir>/data`` unless ``path`` is given) or ``jsonl`` (rows in
    the Post-Training-Dataset schema at ``path``)."""
    path: str | None = None
    """Directory holding ``sft_train.jsonl`` / ``sft_heldout.jsonl`` (or one ``.jsonl`` file of training rows)."""
    tokenizer: str = "tiny"
    """Tokenizer directory, or ``tiny`` for the character-level tokenizer."""
    num_train_problems: int = 2000
    """Synthetic task: training problems (each gives an on row and an off row)."""
    num_heldout_problems: int = 200
    """Synthetic task: held-out problems (evaluation prompts come from these)."""
    corrupt_fraction: float = 0.0
    """Synthetic task: fraction of training traces corrupted (headroom for a later GRPO stage)."""
    min_value: int = 10
    """Synthetic task: smallest operand."""
    max_value: int = 999
    """Synthetic task: largest operand."""
    data_seed: int = 0
    """Synthetic task: generation seed."""
    reasoning: str = "both"
    """Which reasoning-toggle rows to train on: ``on``, ``off`` or ``both`` (the system prompt's ``detailed
    thinking on|off``)."""
    max_seq_length: int = 128
    """Row length in tokens; longer examples are dropped (counted in the data report)."""
    pack_sequences: bool = False
    """Pack several examples per row (block-diagonal attention mask, per-sequence positions)."""
    dynamic_padding: bool = True
    """Cut each step's rows to the longest sequence of its global batch (rounded up to a multiple of 8) instead of
    ``max_seq_length``. The loss is unchanged (only trailing padding is cut) and the length is the same on every
    rank, so pipeline-parallel shapes agree."""


@dataclass(kw_only=True, slots=True)
class SFTEvalConfig:
    """Held-out evaluation: greedy decoding of reasoning-on and -off prompts."""

    num_prompts: int = 100
    """Held-out problems evaluated; each is asked once with ``detailed thinking on`` and once with ``off``
    (0 disables evaluation)."""
    max_new_tokens: int = 64
    """Longest generated response."""
    batch_size: int = 64
    """Prompts decoded together."""
    at_start: bool = False
    """Also evaluate before training (a baseline for the rates)."""


@dataclass(kw_only=True, slots=True)
class SFTRunConfig:
    """A complete SFT run."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(architecture="tiny_puzzle", seq_length=128))
    """Architecture: ``architecture="tiny_puzzle"`` or ``hf_config_path`` to a ``config.json`` with block_configs."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """TP / PP (DP = world size / (TP * PP)). CP and sequence parallelism are not supported by this trainer."""
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, warmup_steps=20))
    """AdamW and the learning-rate schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Atomic training-state checkpoints; a run resumes from ``load_dir`` (or ``save_dir``) when one exists."""
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(log_interval=10, progress_bar=False))
    """Metrics outputs."""
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    """Training data."""
    eval: SFTEvalConfig = field(default_factory=SFTEvalConfig)
    """Held-out reasoning-toggle evaluation after training."""
    train_steps: int = 300
    """Optimizer steps."""
    micro_batch_size: int = 8
    """Rows per micro-batch per data-parallel rank."""
    global_batch_size: int = 32
    """Rows per optimizer step over all data-parallel ranks (a multiple of micro_batch_size * DP)."""
    seed: int = 1234
    """Seed of weight initialisation, data order and megatron's RNGs."""
    output_dir: str | None = None
    """Run directory (synthetic data, default checkpoint / metrics paths); ``None`` uses ``runs/sft``."""
    stop_after_steps: int | None = None
    """Stop (after saving a checkpoint) once this many steps are done, keeping the ``train_steps`` schedule: a
    deliberate interruption, to be resumed later (tests, preemptible jobs)."""
    init_checkpoint: str | None = None
    """Initialise the weights from this checkpoint (a previous run's ``checkpoints`` dir); optimizer not loaded."""
    num_threads: int | None = None
    """``torch.set_num_threads`` for the run (CPU); ``None`` leaves it."""

    def validate(self, world_size: int = 1) -> None:
        """Check the config for a run on ``world_size`` processes.

        Raises:
            SFTConfigError: naming the first bad field and what would be valid.
        """
        _positive("train_steps", self.train_steps)
        _positive("micro_batch_size", self.micro_batch_size)
        _positive("global_batch_size", self.global_batch_size)
        p = self.parallel
        _positive("parallel.tensor_model_parallel_size", p.tensor_model_parallel_size)
        _positive("parallel.pipeline_model_parallel_size", p.pipeline_model_parallel_size)
        if p.context_parallel_size != 1:
            raise SFTConfigError(
                f"parallel.context_parallel_size: must be 1 for this SFT trainer, got {p.context_parallel_size}"
            )
        if p.sequence_parallel:
            raise SFTConfigError("parallel.sequence_parallel: not supported by this SFT trainer; set it to false")
        model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
        if world_size % model_parallel:
            raise SFTConfigError(
                f"parallel: TP*PP = {model_parallel} does not divide the world size {world_size}; use a world size "
                f"that is a multiple of {model_parallel}"
            )
        dp = world_size // model_parallel
        if self.global_batch_size % (self.micro_batch_size * dp):
            raise SFTConfigError(
                f"global_batch_size: {self.global_batch_size} is not a multiple of micro_batch_size * DP = "
                f"{self.micro_batch_size} * {dp}"
            )
        if self.stop_after_steps is not None and not 1 <= self.stop_after_steps <= self.train_steps:
            raise SFTConfigError(
                f"stop_after_steps: must be between 1 and train_steps ({self.train_steps}), got {self.stop_after_steps}"
            )
        m = self.model
        if m.hf_config_path is None and m.architecture not in BUILTIN_ARCHITECTURES:
            raise SFTConfigError(
                f"model.architecture: unknown {m.architecture!r}; valid: {list(BUILTIN_ARCHITECTURES)}, or set "
                "model.hf_config_path"
            )
        d = self.data
        if d.dataset not in (*SYNTHETIC_DATASETS, "jsonl"):
            raise SFTConfigError(f"data.dataset: unknown {d.dataset!r}; valid: {[*SYNTHETIC_DATASETS, 'jsonl']}")
        if d.dataset == "jsonl" and not d.path:
            raise SFTConfigError("data.path: required when data.dataset is 'jsonl'")
        if d.path is not None and not os.path.exists(d.path):
            raise SFTConfigError(f"data.path: {d.path!r} does not exist")
        if d.reasoning not in ("on", "off", "both"):
            raise SFTConfigError(f"data.reasoning: must be on, off or both, got {d.reasoning!r}")
        _positive("data.max_seq_length", d.max_seq_length)
        if d.max_seq_length > m.seq_length and m.seq_length > 0:
            raise SFTConfigError(
                f"data.max_seq_length ({d.max_seq_length}) exceeds model.seq_length ({m.seq_length}); raise "
                "model.seq_length or lower data.max_seq_length"
            )
        if d.dataset in SYNTHETIC_DATASETS:
            _positive("data.num_train_problems", d.num_train_problems)
            if not 0.0 <= d.corrupt_fraction <= 1.0:
                raise SFTConfigError(f"data.corrupt_fraction: must be in [0, 1], got {d.corrupt_fraction}")
            if self.eval.num_prompts > d.num_heldout_problems:
                raise SFTConfigError(
                    f"eval.num_prompts ({self.eval.num_prompts}) exceeds data.num_heldout_problems "
                    f"({d.num_heldout_problems})"
                )
        if self.eval.num_prompts < 0:
            raise SFTConfigError(f"eval.num_prompts: must be >= 0, got {self.eval.num_prompts}")
        if self.eval.num_prompts:
            _positive("eval.max_new_tokens", self.eval.max_new_tokens)
            _positive("eval.batch_size", self.eval.batch_size)
        o = self.optimizer
        if not o.lr > 0:
            raise SFTConfigError(f"optimizer.lr: must be > 0, got {o.lr}")
        if o.lr_schedule not in ("constant", "cosine", "linear"):
            raise SFTConfigError(f"optimizer.lr_schedule: must be constant, cosine or linear, got {o.lr_schedule!r}")
        if o.warmup_steps < 0:
            raise SFTConfigError(f"optimizer.warmup_steps: must be >= 0, got {o.warmup_steps}")
        if o.clip_grad < 0:
            raise SFTConfigError(f"optimizer.clip_grad: must be >= 0 (0 disables), got {o.clip_grad}")
        if self.checkpoint.save_interval < 0:
            raise SFTConfigError(f"checkpoint.save_interval: must be >= 0, got {self.checkpoint.save_interval}")
        if self.logging.log_interval < 1:
            raise SFTConfigError(f"logging.log_interval: must be >= 1, got {self.logging.log_interval}")

    def resolved_output_dir(self) -> str:
        """``output_dir`` or the default ``runs/sft``."""
        return self.output_dir or os.path.join("runs", "sft")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SFTConfigError(f"{name}: must be a positive integer, got {value!r}")


def from_recipe(recipe: Any) -> SFTRunConfig:
    """Convert a :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` with ``task == "sft"``.

    Recipe data fields map as: ``data.path`` / ``tokenizer`` / ``reasoning`` / ``max_seq_length`` /
    ``pack_sequences`` directly, ``num_train_samples`` -> synthetic training problems, ``num_eval_samples`` ->
    held-out problems and evaluated prompts, ``options`` -> ``corrupt_fraction`` / ``min_value`` / ``max_value`` /
    ``data_seed`` / ``eval_max_new_tokens`` / ``eval_batch_size``.

    Raises:
        SFTConfigError: the recipe is not an SFT recipe or names an unknown data option.
    """
    if getattr(recipe, "task", None) != "sft":
        raise SFTConfigError(f"task: run_sft needs an 'sft' recipe, got {getattr(recipe, 'task', None)!r}")
    rd = recipe.data
    options = dict(rd.options)
    known = {"corrupt_fraction", "min_value", "max_value", "data_seed", "eval_max_new_tokens", "eval_batch_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SFTConfigError(f"data.options: unknown keys {unknown}; valid: {sorted(known)}")
    dataset = rd.dataset if rd.dataset in SYNTHETIC_DATASETS else "jsonl"
    data = SFTDataConfig(
        dataset=dataset,
        path=rd.path,
        tokenizer=rd.tokenizer or "tiny",
        reasoning=rd.reasoning,
        max_seq_length=rd.max_seq_length,
        pack_sequences=rd.pack_sequences,
    )
    if rd.num_train_samples is not None:
        data.num_train_problems = rd.num_train_samples
    if rd.num_eval_samples:
        data.num_heldout_problems = rd.num_eval_samples
    for key in ("corrupt_fraction", "min_value", "max_value", "data_seed"):
        if key in options:
            setattr(data, key, options[key])
    evaluation = SFTEvalConfig(num_prompts=rd.num_eval_samples)
    if "eval_max_new_tokens" in options:
        evaluation.max_new_tokens = int(options["eval_max_new_tokens"])
    if "eval_batch_size" in options:
        evaluation.batch_size = int(options["eval_batch_size"])
    return SFTRunConfig(
        model=recipe.model,
        parallel=recipe.parallel,
        optimizer=recipe.optimizer,
        checkpoint=recipe.checkpoint,
        logging=recipe.logging,
        data=data,
        eval=evaluation,
        train_steps=recipe.train_steps,
        micro_batch_size=recipe.micro_batch_size,
        global_batch_size=recipe.global_batch_size,
        seed=recipe.seed,
        output_dir=recipe.output_dir,
        init_checkpoint=recipe.init_checkpoint,
    )
