"""Llama-3.3-Nemotron-Super-49B (the released 80-block Puzzle config) on H100 nodes."""

from __future__ import annotations

from nemotron_plugins.launch.recipe_config import ClusterConfig, RecipeConfig, RewardSpec
from nemotron_plugins.runtime.config import ModelConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    NEMO_CONTAINER,
    SUPER_49B_CONFIG,
    curriculum_sampler,
    gpu_logging,
    grpo_algorithm,
    if_rl_data,
    paper_model,
    param_balanced_layout,
    post_training_sft_data,
    reasoning_rewards,
    reasoning_rl_data,
    rloo_algorithm,
    vllm_generation,
)

CHAT_TEMPLATE = "llama-nemotron-super"


def _model(seq_length: int) -> ModelConfig:
    return paper_model(SUPER_49B_CONFIG, seq_length)


def _parallel(pp: int) -> ParallelConfig:
    return ParallelConfig(
        tensor_model_parallel_size=8,
        sequence_parallel=True,
        pipeline_model_parallel_size=pp,
        pipeline_layout=param_balanced_layout(SUPER_49B_CONFIG, pp),
        use_distributed_optimizer=True,
    )


def _cluster(nodes: int) -> ClusterConfig:
    return ClusterConfig(nodes=nodes, devices_per_node=8, device="cuda", container_image=NEMO_CONTAINER)


def llama_nemotron_super_49b_sft_64gpu_h100_bf16_config() -> RecipeConfig:
    """Reasoning-toggle SFT of Super 49B on 8 nodes: TP8 + SP, PP2 (parameter-balanced), DP4, 16k sequences."""
    return RecipeConfig(
        name="llama_nemotron_super_49b_sft_64gpu_h100_bf16",
        task="sft",
        description="SFT on the Llama-Nemotron post-training data (reasoning on/off pairs), 8 x 8 H100",
        model=_model(16384),
        parallel=_parallel(2),
        optimizer=OptimizerConfig(lr=5e-6, min_lr=5e-7, warmup_steps=100, lr_schedule="cosine", bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(8),
        data=post_training_sft_data(CHAT_TEMPLATE),
        train_steps=4000,
        micro_batch_size=1,
        global_batch_size=256,
        recompute="full",
    )


def llama_nemotron_super_49b_grpo_64gpu_h100_bf16_config() -> RecipeConfig:
    """Scientific-reasoning GRPO of Super 49B on 8 nodes; vLLM rollouts at TP4 (16 replicas) on the same GPUs."""
    return RecipeConfig(
        name="llama_nemotron_super_49b_grpo_64gpu_h100_bf16",
        task="grpo",
        description="Reasoning GRPO (LLM-judge accuracy + format reward, curriculum), 8 x 8 H100",
        model=_model(20480),
        parallel=_parallel(2),
        optimizer=OptimizerConfig(lr=1e-6, warmup_steps=10, bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(8),
        data=reasoning_rl_data(CHAT_TEMPLATE),
        sampler=curriculum_sampler(),
        rewards=reasoning_rewards(),
        algorithm=grpo_algorithm(),
        generation=vllm_generation(4, max_new_tokens=16384, max_num_seqs=24),
        train_steps=300,
        micro_batch_size=1,
        global_batch_size=576,
        recompute="full",
    )


def llama_nemotron_super_49b_rloo_32gpu_h100_bf16_config() -> RecipeConfig:
    """Instruction-following RL (RLOO) of Super 49B on 4 nodes: TP8 + SP, PP2, DP2; vLLM at TP4."""
    return RecipeConfig(
        name="llama_nemotron_super_49b_rloo_32gpu_h100_bf16",
        task="rloo",
        description="IF-RL: RLOO with the instruction verifier, 128 prompts per step, < 120 steps, 4 x 8 H100",
        model=_model(8192),
        parallel=_parallel(2),
        optimizer=OptimizerConfig(lr=3e-7, bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(4),
        data=if_rl_data(CHAT_TEMPLATE),
        rewards=[RewardSpec(name="ifeval", weight=1.0)],
        algorithm=rloo_algorithm(),
        generation=vllm_generation(4, max_new_tokens=4096, max_num_seqs=64),
        train_steps=100,
        micro_batch_size=1,
        global_batch_size=1024,
        recompute="full",
    )
