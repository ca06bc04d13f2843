"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations

BUILTIN_RECIPES: dict[str, str] = {
    # Tiny CPU recipes: the whole pipeline on a ~1M-parameter Puzzle model, no downloads.
    "tiny_puzzle_sft_cpu": "recipes.tiny.tiny_puzzle:tiny_puzzle_sft_cpu_config",
    "tiny_puzzle_grpo_cpu": "recipes.tiny.tiny_puzzle:tiny_puzzle_grpo_cpu_config",
    # Preference learning (issue 18): reward models and RPO.
    "tiny_preference_sft_cpu": "recipes.preference:tiny_preference_sft_cpu_config",
    "tiny_reward_model_cpu": "recipes.preference:tiny_reward_model_cpu_config",
    "tiny_rpo_online_cpu": "recipes.preference:tiny_rpo_online_cpu_config",
    "tiny_rpo_offline_cpu": "recipes.preference:tiny_rpo_offline_cpu_config",
    "llama_nemotron_super_49b_rpo_64gpu_h100_bf16": (
        "recipes.preference:llama_nemotron_super_49b_rpo_64gpu_h100_bf16_config"
    ),
    "llama_nemotron_nano_8b_rpo_8gpu_h100_bf16": "recipes.preference:llama_nemotron_nano_8b_rpo_8gpu_h100_bf16_config",
    # Tool-calling RL (issue 18): Tool-N1's binary tool_call reward.
    "tiny_tool_sft_cpu": "recipes.tool_rl:tiny_tool_sft_cpu_config",
    "tiny_tool_grpo_cpu": "recipes.tool_rl:tiny_tool_grpo_cpu_config",
    "llama_nemotron_nano_8b_tool_grpo_8gpu_h100_bf16": (
        "recipes.tool_rl:llama_nemotron_nano_8b_tool_grpo_8gpu_h100_bf16_config"
    ),
    # Instruction-following RL (issue 18): RLOO with the ifeval verifier on synthetic instructions.
    "tiny_ifrl_sft_cpu": "recipes.if_rl:tiny_ifrl_sft_cpu_config",
    "tiny_ifrl_rloo_cpu": "recipes.if_rl:tiny_ifrl_rloo_cpu_config",
    # Llama-3.1-Nemotron-Nano-8B.
    "llama_nemotron_nano_8b_sft_8gpu_h100_bf16": (
        "recipes.llama_nemotron.nano_8b:llama_nemotron_nano_8b_sft_8gpu_h100_bf16_config"
    ),
    "llama_nemotron_nano_8b_grpo_16gpu_h100_bf16": (
        "recipes.llama_nemotron.nano_8b:llama_nemotron_nano_8b_grpo_16gpu_h100_bf16_config"
    ),
    "llama_nemotron_nano_8b_rloo_8gpu_h100_bf16": (
        "recipes.llama_nemotron.nano_8b:llama_nemotron_nano_8b_rloo_8gpu_h100_bf16_config"
    ),
    # Llama-3.3-Nemotron-Super-49B.
    "llama_nemotron_super_49b_sft_64gpu_h100_bf16": (
        "recipes.llama_nemotron.super_49b:llama_nemotron_super_49b_sft_64gpu_h100_bf16_config"
    ),
    "llama_nemotron_super_49b_grpo_64gpu_h100_bf16": (
        "recipes.llama_nemotron.super_49b:llama_nemotron_super_49b_grpo_64gpu_h100_bf16_config"
    ),
    "llama_nemotron_super_49b_rloo_32gpu_h100_bf16": (
        "recipes.llama_nemotron.super_49b:llama_nemotron_super_49b_rloo_32gpu_h100_bf16_config"
    ),
    # Llama-3.1-Nemotron-Ultra-253B (reconstructed block layout).
    "llama_nemotron_ultra_253b_sft_576gpu_h100_bf16": (
        "recipes.llama_nemotron.ultra_253b:llama_nemotron_ultra_253b_sft_576gpu_h100_bf16_config"
    ),
    "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16": (
        "recipes.llama_nemotron.ultra_253b:llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16_config"
    ),
    "llama_nemotron_ultra_253b_rloo_288gpu_h100_bf16": (
        "recipes.llama_nemotron.ultra_253b:llama_nemotron_ultra_253b_rloo_288gpu_h100_bf16_config"
    ),
}


def register() -> None:
    """Register the builtin recipes."""
    from nemotron_plugins.registry import RECIPES

    for name, target in BUILTIN_RECIPES.items():
        RECIPES.register(name, target)
