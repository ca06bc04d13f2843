"""The registered RL algorithms: each is a default config plus an advantage estimator plus the clipped loss.

``ALGORITHMS.get("grpo")`` and ``ALGORITHMS.get("rloo")`` return :class:`RLAlgorithm` instances. A trainer asks the
algorithm for its default config, computes advantages from a rollout's rewards and the loss per micro-batch:

    >>> from nemotron_plugins.rl.algorithms import RLOO
    >>> cfg = RLOO.default_config(num_prompts_per_rollout=2, num_generations=2)
    >>> RLOO.advantages([[1.0, 0.0], [0.5, 0.5]], cfg).advantages.tolist()
    [[1.0, -1.0], [0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.rl.advantages import GroupAdvantages, advantages_from_config
from nemotron_plugins.rl.config import GRPOConfig, grpo_config, rloo_config
from nemotron_plugins.rl.loss import compute_policy_loss


@dataclass(frozen=True, slots=True)
class RLAlgorithm:
    """A named algorithm of the GRPO family.

    Attributes:
        name: Registry name.
        config_factory: Returns the algorithm's default :class:`GRPOConfig` given keyword overrides.
        description: One line for ``nemotron-plugins list``-style output.
    """

    name: str
    config_factory: Callable[..., GRPOConfig]
    description: str

    def default_config(self, **overrides: Any) -> GRPOConfig:
        """The algorithm's defaults with ``overrides`` applied (validated)."""
        return self.config_factory(**overrides)

    def advantages(self, rewards: torch.Tensor | Sequence[Sequence[float]], cfg: GRPOConfig) -> GroupAdvantages:
        """Advantages of ``[num_prompts, num_generations]`` rewards (or flat rewards grouped consecutively)."""
        return advantages_from_config(torch.as_tensor(rewards, dtype=torch.float32), cfg)

    def shape_rewards(
        self, rewards: torch.Tensor, completion_lengths: torch.Tensor, finished: torch.Tensor, cfg: GRPOConfig
    ) -> torch.Tensor:
        """Rewards after length shaping (flat, one per sample), before advantages; the base returns them unchanged.

        Args:
            rewards: ``[num_samples]`` weighted reward totals.
            completion_lengths: ``[num_samples]`` generated token counts.
            finished: ``[num_samples]`` bool, False where the completion hit the length limit.
            cfg: The algorithm config.
        """
        del completion_lengths, finished, cfg
        return rewards

    def loss_sample_mask(self, finished: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
        """``[num_samples]`` bool: which samples' tokens enter the loss (all, in the base)."""
        del cfg
        return torch.ones_like(torch.as_tensor(finished), dtype=torch.bool)

    def loss(self, *args: Any, cfg: GRPOConfig, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """:func:`~nemotron_plugins.rl.loss.compute_policy_loss` with this config."""
        return compute_policy_loss(*args, cfg=cfg, **kwargs)


GRPO = RLAlgorithm(
    name="grpo",
    config_factory=grpo_config,
    description="GRPO: group-normalised advantages, clipped policy gradient, optional k3 KL to a reference",
)
RLOO = RLAlgorithm(
    name="rloo",
    config_factory=rloo_config,
    description="RLOO: leave-one-out baseline without std division (instruction-following RL)",
)
