"""The registered RL algorithms: each is a default config plus an advantage estimator plus the clipped loss.

``ALGORITHMS.get("grpo")`` and ``ALGORITHMS.get("rloo")`` return :class:`RLAlgorithm` instances. A trainer asks the
algorithm for its default config, shapes the rewards (DAPO's soft overlong penalty), computes advantages, picks the
samples that enter the loss (DAPO's overlong filtering) and computes the loss per micro-batch. Every option is a
:class:`GRPOConfig` field acted on here, so the presets ``loo_grpo`` (NeMo-RL's leave-one-out baseline and std),
``dr_grpo``, ``gspo`` and ``dapo`` are registered default configs of the same hooks (their ``algorithm`` field is
``"grpo"``: a GRPO-task recipe runs them):

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
from nemotron_plugins.rl.config import (
    GRPOConfig,
    dapo_config,
    dr_grpo_config,
    grpo_config,
    gspo_config,
    loo_grpo_config,
    rloo_config,
)
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
        self,
        rewards: torch.Tensor,
        completion_lengths: torch.Tensor,
        finished: torch.Tensor,
        cfg: GRPOConfig,
        *,
        max_response_length: int | None = None,
    ) -> torch.Tensor:
        """Rewards after length shaping (flat, one per sample), before advantages.

        With ``cfg.overlong_buffer = B > 0`` (DAPO's soft overlong punishment) a completion of ``n`` tokens under the
        budget ``L = max_response_length`` gets ``-cfg.overlong_penalty * clamp((n - (L - B)) / B, 0, 1)`` added:
        0 up to ``L - B`` tokens, then linear down to ``-overlong_penalty`` at ``L``. A NaN (unscorable) reward
        stays NaN. With ``B = 0`` the rewards come back unchanged.

        Args:
            rewards: ``[num_samples]`` weighted reward totals.
            completion_lengths: ``[num_samples]`` generated token counts.
            finished: ``[num_samples]`` bool, False where the completion hit the length limit.
            cfg: The algorithm config.
            max_response_length: The generation budget ``generation.max_new_tokens``; required when
                ``cfg.overlong_buffer > 0``.

        Raises:
            ValueError: When the penalty is on without a budget, or ``overlong_buffer`` does not fit in it.
        """
        del finished
        buffer = int(cfg.overlong_buffer)
        factor = float(cfg.overlong_penalty)
        if buffer == 0:
            return rewards
        if max_response_length is None:
            raise ValueError(
                f"algorithm.overlong_buffer={buffer} (soft overlong penalty) needs the generation budget: the trainer "
                "must pass max_response_length=generation.max_new_tokens to shape_rewards"
            )
        budget = int(max_response_length)
        if not 0 < buffer < budget:
            raise ValueError(
                f"algorithm.overlong_buffer={buffer} must be < generation.max_new_tokens={budget} (the penalty "
                "ramps over the last overlong_buffer tokens of the budget)"
            )
        rewards = torch.as_tensor(rewards)
        lengths = torch.as_tensor(completion_lengths, dtype=torch.float64, device=rewards.device)
        if lengths.shape != rewards.shape:
            raise ValueError(
                f"completion_lengths has shape {tuple(lengths.shape)}, rewards {tuple(rewards.shape)}: one per sample"
            )
        excess = ((lengths - (budget - buffer)) / buffer).clamp(0.0, 1.0)
        return rewards - (factor * excess).to(rewards.dtype if rewards.is_floating_point() else torch.float64)

    def loss_sample_mask(self, finished: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
        """``[num_samples]`` bool: which samples' tokens enter the loss.

        All of them, or with ``cfg.overlong_filtering`` (DAPO) only the finished ones: a completion cut at the length
        limit is not trained on (it still took part in its group's advantages).
        """
        finished = torch.as_tensor(finished, dtype=torch.bool)
        if cfg.overlong_filtering:
            return finished.clone()
        return torch.ones_like(finished)

    def loss(self, *args: Any, cfg: GRPOConfig, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """:func:`~nemotron_plugins.rl.loss.compute_policy_loss` with this config (keyword arguments pass through,
        e.g. ``max_response_length`` for ``loss_aggregation="constant"``)."""
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
LOO_GRPO = RLAlgorithm(
    name="loo_grpo",
    config_factory=loo_grpo_config,
    description="GRPO with NeMo-RL's default advantages: leave-one-out baseline over the leave-one-out std",
)
DR_GRPO = RLAlgorithm(
    name="dr_grpo",
    config_factory=dr_grpo_config,
    description="Dr. GRPO: no std division, loss over sequences x generation budget (no length bias)",
)
GSPO = RLAlgorithm(
    name="gspo",
    config_factory=gspo_config,
    description="GSPO: sequence-level ratio (geometric mean of token ratios), clipped per sequence",
)
DAPO = RLAlgorithm(
    name="dapo",
    config_factory=dapo_config,
    description="DAPO: clip-higher, token-level loss, overlong filtering, soft overlong penalty",
)
