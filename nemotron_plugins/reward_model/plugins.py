"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations

BUILTIN_REWARDS = {
    "megatron_reward_model": "nemotron_plugins.reward_model.reward:MegatronRewardModelReward",
}


def register() -> None:
    """Register this area's builtin plugins."""
    from nemotron_plugins.registry import REWARDS

    for name, target in BUILTIN_REWARDS.items():
        REWARDS.register(name, target)
