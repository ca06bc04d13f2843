"""Shared pieces of the recipes: shipped model configs, the paper's RL settings, balanced pipeline layouts.

Recipes only choose combinations of components; everything here is plain data (no torch import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_plugins.launch.pipeline_layout import balanced_layout
from nemotron_plugins.launch.recipe_config import (
    ClusterConfig,
    DataConfig,
    GenerationConfig,
    RewardSpec,
    SamplerConfig,
)
from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.runtime.config import LoggingConfig, ModelConfig, OptimizerConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""Model configs shipped with the recipes (package data)."""

NANO_8B_CONFIG = "llama-3_1-nemotron-nano-8b-v1.json"
SUPER_49B_CONFIG = "llama-3_3-nemotron-super-49b-v1.json"
ULTRA_253B_CONFIG = "llama-3_1-nemotron-ultra-253b-v1.reconstructed.json"
TINY_PUZZLE_CONFIG = "tiny-puzzle-cpu.json"

NEMO_CONTAINER = "nvcr.io/nvidia/nemo:25.04"
"""Default container for the GPU recipes (megatron-core, Transformer Engine and vLLM preinstalled)."""

POST_TRAINING_DATASET = "nvidia/Llama-Nemotron-Post-Training-Dataset"
"""The Hugging Face dataset the paper recipes are written for (its files are passed as ``data.path``)."""

HUB_MODELS = {
    NANO_8B_CONFIG: "nvidia/Llama-3.1-Nemotron-Nano-8B-v1",
    SUPER_49B_CONFIG: "nvidia/Llama-3_3-Nemotron-Super-49B-v1",
    ULTRA_253B_CONFIG: "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
}
"""The released checkpoint each shipped architecture describes."""


def model_config_path(file_name: str) -> str:
    """Absolute path of a shipped model config."""
    path = CONFIG_DIR / file_name
    if not path.is_file():
        raise FileNotFoundError(f"shipped model config {file_name!r} is missing from {CONFIG_DIR}")
    return str(path)


def paper_model(file_name: str, seq_length: int) -> ModelConfig:
    """A paper model: weights from ``model.checkpoint`` (the user's download of the released model, or an earlier
    stage's export), the shipped architecture for pre-download validation, bf16."""
    return ModelConfig(
        init="checkpoint",
        hub_id=HUB_MODELS[file_name],
        config_path=model_config_path(file_name),
        seq_length=seq_length,
        params_dtype="bfloat16",
    )


def tiny_model(seq_length: int, **overrides: Any) -> ModelConfig:
    """The tiny CPU Puzzle model (~1M parameters, ``tiny-puzzle-cpu.json``) from a random initialisation, fp32;
    ``overrides`` change its architecture (e.g. ``max_position_embeddings`` for long rows)."""
    return ModelConfig(
        init="random",
        config_path=model_config_path(TINY_PUZZLE_CONFIG),
        overrides=dict(overrides),
        seq_length=seq_length,
        params_dtype="float32",
    )


def tiny_cluster() -> ClusterConfig:
    """One CPU process (``cluster.devices_per_node=2`` runs two gloo ranks, DP2, through torchrun)."""
    return ClusterConfig(nodes=1, devices_per_node=1, device="cpu", gpu_memory_gb=8.0, time_limit="00:30:00")


def tiny_sft_optimizer() -> OptimizerConfig:
    """The tiny SFT stages' optimizer: lr 1e-3 after 20 warmup steps, clip 1.0, no weight decay."""
    return OptimizerConfig(lr=1e-3, warmup_steps=20, clip_grad=1.0, weight_decay=0.0)


def tiny_data(path: str, *, max_seq_length: int, dataset: str = "post_training", **fields: Any) -> DataConfig:
    """Files written by one of the tiny tasks' ``write`` commands, read with the ``tiny`` tokenizer; ``fields`` set
    the rest of :class:`DataConfig` (default chat template ``llama-nemotron-super``)."""
    fields.setdefault("chat_template", "llama-nemotron-super")
    return DataConfig(dataset=dataset, path=path, tokenizer="tiny", max_seq_length=max_seq_length, **fields)


def param_balanced_layout(file_name: str, pipeline_model_parallel_size: int) -> list[int]:
    """Layers per pipeline stage balancing the cost model's parameters (embedding on stage 0, output on the last).

    Heterogeneous models have very uneven layers (a fused FFN of Ultra holds ~21B parameters, a no-op block none),
    so an even split by layer count leaves some stages far heavier than others.
    """
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.cost import estimate_cost

    cost = estimate_cost(load_hf_config(model_config_path(file_name)))
    return balanced_layout(
        [layer.params for layer in cost.layers],
        pipeline_model_parallel_size,
        first_stage_extra=cost.embedding_params,
        last_stage_extra=cost.lm_head_params + cost.final_norm_params,
    )


def post_training_sft_data(chat_template: str, max_seq_length: int = 16384) -> DataConfig:
    """The post-training SFT splits (code, math, science, chat, safety), reasoning on/off pairs, packed sequences."""
    return DataConfig(
        dataset="post_training",
        hub_id=POST_TRAINING_DATASET,
        splits=["code", "math", "science", "chat", "safety"],
        reasoning="both",
        chat_template=chat_template,
        max_seq_length=max_seq_length,
        pack_sequences=True,
    )


def reasoning_rl_data(chat_template: str, max_prompt_tokens: int = 4096) -> DataConfig:
    """Prompts for scientific-reasoning GRPO (reasoning on) from the post-training data's science/math split."""
    return DataConfig(
        dataset="post_training",
        hub_id=POST_TRAINING_DATASET,
        splits=["science", "math"],
        reasoning="on",
        chat_template=chat_template,
        max_seq_length=max_prompt_tokens,
    )


def if_rl_data(chat_template: str, max_prompt_tokens: int = 2048) -> DataConfig:
    """Prompts for instruction-following RL (the ``instruction_following`` split, both toggle modes)."""
    return DataConfig(
        dataset="post_training",
        hub_id=POST_TRAINING_DATASET,
        splits=["instruction_following"],
        reasoning="both",
        chat_template=chat_template,
        max_seq_length=max_prompt_tokens,
    )


def curriculum_sampler() -> SamplerConfig:
    """The paper's curriculum: drop prompts with pass rate >= 0.75 (8 responses), Gaussian easy -> hard."""
    return SamplerConfig(name="progressive_gaussian", pass_rate_responses=8, drop_pass_rate_at_least=0.75)


def reasoning_rewards(judge_model: str = "meta-llama/Llama-3.3-70B-Instruct") -> list[RewardSpec]:
    """Accuracy by an LLM judge over an OpenAI-compatible API plus the think-tag format reward."""
    return [
        RewardSpec(
            name="llm_judge",
            weight=1.0,
            options={"base_url": "http://127.0.0.1:8000/v1", "model": judge_model},
        ),
        RewardSpec(name="think_format", weight=1.0),
    ]


def grpo_algorithm() -> GRPOConfig:
    """LN-Ultra's scientific-reasoning GRPO: 72 prompts x 16 responses (with a global batch of 576: 2 updates per
    rollout), clip 0.2, no KL."""
    return GRPOConfig(
        algorithm="grpo",
        num_prompts_per_rollout=72,
        num_generations=16,
        normalize_advantages_by_std=True,
        epsilon=0.2,
        beta=0.0,
    )


def tiny_grpo_algorithm(prompts: int) -> GRPOConfig:
    """The tiny CPU GRPO recipes' algorithm: ``prompts`` x 8 responses per rollout, std-normalised advantages,
    uniform-reward groups skipped, clip 0.2, no KL."""
    return GRPOConfig(
        algorithm="grpo",
        num_prompts_per_rollout=prompts,
        num_generations=8,
        normalize_advantages_by_std=True,
        skip_uniform_groups=True,
        epsilon=0.2,
        beta=0.0,
    )


def rloo_algorithm(prompts: int = 128, generations: int = 8) -> GRPOConfig:
    """Instruction-following RL with RLOO: 128 prompts per batch, leave-one-out baseline, no std division (with a
    global batch of prompts x generations: one update per rollout)."""
    return GRPOConfig(
        algorithm="rloo",
        num_prompts_per_rollout=prompts,
        num_generations=generations,
        leave_one_out_baseline=True,
        normalize_advantages_by_std=False,
        epsilon=0.2,
        beta=0.0,
    )


def vllm_generation(
    tp: int, *, max_new_tokens: int, fp8: bool = False, max_num_seqs: int | None = None
) -> GenerationConfig:
    """vLLM rollouts with the paper's sampling for RL (temperature 1, top_p 1)."""
    return GenerationConfig(
        engine="vllm",
        tensor_model_parallel_size=tp,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        fp8=fp8,
        max_num_seqs=max_num_seqs,
    )


def gpu_logging() -> LoggingConfig:
    """Console every step plus TensorBoard (paths default into the run directory)."""
    return LoggingConfig(log_interval=1, progress_bar=False)
