"""Llama-3.1-Nemotron-Ultra-253B on 72 nodes of 8 H100 (the paper's RL layout).

The block layout is a reconstruction from the published counts (``recipes/configs/reconstruct_ultra_253b.py``); the
pipeline split is balanced on its per-layer parameters, so it is uneven (a fused FFN holds ~21B parameters).
"""

from __future__ import annotations

from nemotron_plugins.launch.recipe_config import ClusterConfig, RecipeConfig, RewardSpec
from nemotron_plugins.runtime.config import ModelConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    NEMO_CONTAINER,
    ULTRA_253B_CONFIG,
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
PIPELINE_STAGES = 18


def _model(seq_length: int) -> ModelConfig:
    return paper_model(ULTRA_253B_CONFIG, seq_length)


def _parallel(cp: int) -> ParallelConfig:
    """The paper's training layout: TP8 + sequence parallel, PP18, CP as given; DP follows from the world size."""
    return ParallelConfig(
        tensor_model_parallel_size=8,
        sequence_parallel=True,
        context_parallel_size=cp,
        pipeline_model_parallel_size=PIPELINE_STAGES,
        pipeline_layout=param_balanced_layout(ULTRA_253B_CONFIG, PIPELINE_STAGES),
        use_distributed_optimizer=True,
    )


def _cluster(nodes: int) -> ClusterConfig:
    return ClusterConfig(
        nodes=nodes, devices_per_node=8, device="cuda", container_image=NEMO_CONTAINER, time_limit="04:00:00"
    )


def llama_nemotron_ultra_253b_sft_576gpu_h100_bf16_config() -> RecipeConfig:
    """Reasoning-toggle SFT of Ultra on 72 nodes: TP8 + SP, CP2, PP18, DP2, 16k packed sequences."""
    return RecipeConfig(
        name="llama_nemotron_ultra_253b_sft_576gpu_h100_bf16",
        task="sft",
        description="SFT on the Llama-Nemotron post-training data (reasoning on/off pairs), 72 x 8 H100",
        model=_model(16384),
        parallel=_parallel(2),
        optimizer=OptimizerConfig(lr=5e-6, min_lr=5e-7, warmup_steps=100, lr_schedule="cosine", bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(72),
        data=post_training_sft_data(CHAT_TEMPLATE),
        train_steps=2000,
        micro_batch_size=1,
        global_batch_size=576,
        recompute="full",
    )


def llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16_config() -> RecipeConfig:
    """LN-Ultra's scientific-reasoning GRPO as in the paper: 72 nodes x 8 H100; training TP8 + SP, CP2, PP18, DP2;
    FP8 vLLM generation TP8 (DP72) on the same GPUs; 72 prompts x 16 responses, batch 576, 2 updates per rollout."""
    return RecipeConfig(
        name="llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16",
        task="grpo",
        description="Reasoning GRPO as in the Llama-Nemotron report (LLM judge + format reward, curriculum), 72 x 8 H100",
        model=_model(20480),
        parallel=_parallel(2),
        optimizer=OptimizerConfig(lr=1e-6, warmup_steps=10, bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(72),
        data=reasoning_rl_data(CHAT_TEMPLATE),
        sampler=curriculum_sampler(),
        rewards=reasoning_rewards(),
        algorithm=grpo_algorithm(),
        generation=vllm_generation(8, max_new_tokens=16384, fp8=True),
        train_steps=200,
        micro_batch_size=1,
        global_batch_size=576,
        recompute="full",
    )


def llama_nemotron_ultra_253b_rloo_288gpu_h100_bf16_config() -> RecipeConfig:
    """Instruction-following RL (RLOO) of Ultra on 36 nodes: TP8 + SP, PP18, CP1, DP2; FP8 vLLM at TP8."""
    return RecipeConfig(
        name="llama_nemotron_ultra_253b_rloo_288gpu_h100_bf16",
        task="rloo",
        description="IF-RL: RLOO with the instruction verifier, 128 prompts per step, < 120 steps, 36 x 8 H100",
        model=_model(8192),
        parallel=_parallel(1),
        optimizer=OptimizerConfig(lr=3e-7, bf16=True),
        logging=gpu_logging(),
        cluster=_cluster(36),
        data=if_rl_data(CHAT_TEMPLATE),
        rewards=[RewardSpec(name="ifeval", weight=1.0)],
        algorithm=rloo_algorithm(),
        generation=vllm_generation(8, max_new_tokens=4096, fp8=True),
        train_steps=100,
        micro_batch_size=1,
        global_batch_size=1024,
        recompute="full",
    )
