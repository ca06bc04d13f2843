"""Reward functions for GRPO/RLOO: a batch protocol, builtin rewards, composition, a worker pool and adapters.

Start with :func:`build_reward` (names and composition specs are documented in :mod:`nemotron_plugins.rewards.base`)::

    from nemotron_plugins.rewards import RewardSample, build_reward

    reward = build_reward({"gate": ["think_format", "math"]})
    results = reward.score([RewardSample(completion="<think>...</think>42", ground_truth="42",
                                         metadata={"reasoning": "on"})])

Builtin rewards (one module each): ``math``, ``mcq``, ``think_format``, ``tool_call``, ``ifeval``, ``llm_judge``,
``reward_model``. CPU-heavy rewards run in worker processes with :class:`~nemotron_plugins.rewards.pool.PooledReward`
(spec ``{"pool": "math", "workers": 2, "timeout_s": 5}``); :mod:`nemotron_plugins.rewards.adapters` exposes them to
TRL, verl, NeMo-RL and OpenRLHF.
"""

from nemotron_plugins.rewards.base import (
    Reward,
    RewardResult,
    RewardSample,
    RewardSpecError,
    RewardStatus,
    SampleReward,
    build_reward,
)

__all__ = [
    "Reward",
    "RewardResult",
    "RewardSample",
    "RewardSpecError",
    "RewardStatus",
    "SampleReward",
    "build_reward",
]
