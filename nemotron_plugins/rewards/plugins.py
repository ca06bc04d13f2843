"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations

BUILTIN_REWARDS = {
    "math": "nemotron_plugins.rewards.math:MathReward",
    "mcq": "nemotron_plugins.rewards.mcq:MultipleChoiceReward",
    "think_format": "nemotron_plugins.rewards.think_format:ThinkFormatReward",
    "tool_call": "nemotron_plugins.rewards.tool_call:ToolCallReward",
    "ifeval": "nemotron_plugins.rewards.ifeval:IFEvalReward",
    "llm_judge": "nemotron_plugins.rewards.llm_judge:LLMJudgeReward",
    "reward_model": "nemotron_plugins.rewards.reward_model:RewardModelReward",
}


def register() -> None:
    """Register this area's builtin plugins."""
    from nemotron_plugins.registry import REWARDS

    for name, target in BUILTIN_REWARDS.items():
        REWARDS.register(name, target)
