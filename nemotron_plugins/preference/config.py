"""The ``preference`` block of the run config: reward-model training and RPO / DPO settings (plain data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFERENCE_TASKS: tuple[str, ...] = ("reward_model", "rpo")
"""Tasks that read the ``preference`` block."""
PREFERENCE_LOSSES: tuple[str, ...] = ("bwd_kl", "fwd_kl", "sq", "dpo")
"""Values of ``preference.loss``."""


@dataclass(kw_only=True, slots=True)
class PreferenceConfig:
    """Preference learning: a Bradley-Terry reward model (``task="reward_model"``) or RPO / DPO (``task="rpo"``).

    Batches count preference PAIRS: ``global_batch_size`` pairs per optimizer step, ``micro_batch_size`` pairs
    (two sequences each) per micro-batch. Online RPO samples ``num_generations`` replies for each of
    ``global_batch_size`` prompts per step and pairs the best with the worst by reward.
    """

    mode: Literal["offline", "online"] = "offline"
    """RPO: ``offline`` reads pairs (with rewards, for RPO) from ``data.path``; ``online`` samples them from the
    policy (``generation``) and scores them with ``rewards`` (the reward model). Reward models train offline."""
    loss: Literal["bwd_kl", "fwd_kl", "sq", "dpo"] = "bwd_kl"
    """RPO distance between the implicit reward gap and the scaled reward gap: ``bwd_kl`` (the paper's: Bernoulli
    KL of the reward model's preference to the policy's), ``fwd_kl``, ``sq``; or ``dpo`` (rewards unused)."""
    beta: float = 0.1
    """KL coefficient of the implicit reward ``beta * log(pi / ref)`` (paper: Super 1e-5, Nano 3e-2)."""
    reward_scale: float = 1.0
    """``eta``: the scale of the reward-model difference the implicit gap is matched to (paper: Super 3.0)."""
    num_generations: int = 2
    """Online RPO: replies sampled per prompt; the highest- and lowest-scored form the pair."""
    use_margin: bool = False
    """Reward model: subtract each pair's ``margin`` (from the data) inside the Bradley-Terry sigmoid."""
