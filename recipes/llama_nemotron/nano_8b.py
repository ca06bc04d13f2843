"""Llama-3.1-Nemotron-Nano-8B (dense Llama-3.1-8B architecture) on H100 nodes."""

from __future__ import annotations

from nemotron_plugins.launch.recipe_config import ClusterConfig, RecipeConfig, RewardSpec
from nemotron_plugins.runtime.config import ModelConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    NANO_8B_CONFIG,
    NEMO_CONTAINER,
    curriculum_sampler,
    gpu_logging,
    grpo_algorithm,
    if_rl_data,
    paper_model,
    post_training_sft_data,
    reasoning_rewards,
    reasoning_rl_data,
    rloo_algorithm,
    vllm_generation,
)

CHAT_TEMPLATE = "llama-nemotron-nano"


def _model(seq_length: int) -> ModelConfig:
    return paper_model(NANO_8B_CONFIG, seq_length)


def _cluster(nodes: int) -> ClusterConfig:
    return ClusterConfig(nodes=nodes, devices_per_node=8, device="cuda", container_image=NEMO_CONTAINER)


def llama_nemotron_nano_8b_sft_8gpu_h100_bf16_config() -> RecipeConfig:
    """Reasoning-toggle SFT of Nano 8B on one node: TP2 + SP, DP4, distributed optimizer, 16k packed sequences."""
    return RecipeConfig(
        name="llama_nemotron_nano_8b_sft_8gpu_h100_bf16",
        task="sft",
        description="SFT on the Llama-Nemotron post-training data (reasoning on/off pairs), 1 x 8 H100",
        model=_model(16384),
        parallel=ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True),
        optimizer=OptimizerConfig(lr=1e-5, min_lr=1e-6, warmup_steps=100, lr_schedule="cosine", bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(1),
        data=post_training_sft_data(CHAT_TEMPLATE),
        train_steps=4000,
        micro_batch_size=1,
        global_batch_size=64,
        recompute="full",
    )


def llama_nemotron_nano_8b_grpo_16gpu_h100_bf16_config() -> RecipeConfig:
    """Scientific-reasoning GRPO of Nano 8B on two nodes; vLLM rollouts at TP2 on the same GPUs."""
    return RecipeConfig(
        name="llama_nemotron_nano_8b_grpo_16gpu_h100_bf16",
        task="grpo",
        description="Reasoning GRPO (LLM-judge accuracy + format reward, curriculum), 2 x 8 H100",
        model=_model(20480),
        parallel=ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True),
        optimizer=OptimizerConfig(lr=1e-6, warmup_steps=10, bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(2),
        data=reasoning_rl_data(CHAT_TEMPLATE),
        sampler=curriculum_sampler(),
        rewards=reasoning_rewards(),
        algorithm=grpo_algorithm(),
        generation=vllm_generation(2, max_new_tokens=16384, max_num_seqs=16),
        train_steps=500,
        micro_batch_size=1,
        global_batch_size=576,
        recompute="full",
    )


def llama_nemotron_nano_8b_rloo_8gpu_h100_bf16_config() -> RecipeConfig:
    """Instruction-following RL (RLOO, IFEval-style verifier) of Nano 8B on one node."""
    return RecipeConfig(
        name="llama_nemotron_nano_8b_rloo_8gpu_h100_bf16",
        task="rloo",
        description="IF-RL: RLOO with the instruction verifier, 128 prompts per step, < 120 steps, 1 x 8 H100",
        model=_model(8192),
        parallel=ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True),
        optimizer=OptimizerConfig(lr=5e-7, bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(1),
        data=if_rl_data(CHAT_TEMPLATE),
        rewards=[RewardSpec(name="ifeval", weight=1.0)],
        algorithm=rloo_algorithm(),
        generation=vllm_generation(1, max_new_tokens=4096, max_num_seqs=32),
        train_steps=100,
        micro_batch_size=1,
        global_batch_size=1024,
        recompute="selective",
    )
