"""Preference losses: Bradley-Terry (reward models), DPO and reward-aware preference optimisation (RPO).

Notation for a preference pair ``(y_c, y_r)`` of one prompt ``x`` (chosen, rejected):

* the policy's implicit reward difference ``h = beta * [(log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))]``
  (sequence log-probabilities: sums over the reply tokens);
* the reward model's difference ``g = eta * (r(x, y_c) - r(x, y_r))`` (``eta``: the reward scale).

RPO (Adler et al. 2024, "Nemotron-4 340B Technical Report", section 3.4.1) trains the policy so that ``h`` matches
``g`` through a distance ``D[h || g]``; the paper's choice, ``bwd_kl``, is the KL divergence between the Bernoulli
distributions ``sigmoid(g)`` (the reward model's preference probability) and ``sigmoid(h)`` (the policy's)::

    D[h || g] = sigmoid(g) * log(sigmoid(g) / sigmoid(h)) + sigmoid(-g) * log(sigmoid(-g) / sigmoid(-h))

``fwd_kl`` swaps the two distributions and ``sq`` is ``(h - g) ** 2``. DPO is ``-log sigmoid(h)``, the limit of
``bwd_kl`` when ``g -> +inf`` (a reward gap the scale makes certain): RPO scales the push on each pair by how much
better the chosen reply is, and pushes the implicit gap back when it overshoots the reward gap.

Everything is computed in float64-safe log-space (``logsigmoid``) and reduced per pair; callers average.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

RPODistance = Literal["bwd_kl", "fwd_kl", "sq"]
RPO_DISTANCES: tuple[str, ...] = ("bwd_kl", "fwd_kl", "sq")


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log sigmoid(r_c - r_r - margin)`` of a reward model.

    Args:
        chosen_rewards: ``[P]`` scalar rewards of the chosen replies.
        rejected_rewards: ``[P]`` rewards of the rejected replies.
        margin: Optional ``[P]`` (or scalar) margin the chosen reward must exceed the rejected one by (Llama-2's
            margin loss); ``None`` is 0.

    Returns:
        ``[P]`` losses.

    Example:
        >>> import torch
        >>> round(float(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]))[0]), 4)  # log 2
        0.6931
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def implicit_reward_gap(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``h = beta * [(pi_c - ref_c) - (pi_r - ref_r)]`` from ``[P]`` sequence log-probabilities."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss ``-log sigmoid(h)`` (Rafailov et al. 2023).

    Args:
        policy_chosen: ``[P]`` sequence log-probs of the chosen replies under the policy.
        policy_rejected: ``[P]`` the same for the rejected replies.
        ref_chosen: ``[P]`` chosen replies under the frozen reference policy.
        ref_rejected: ``[P]`` rejected replies under the reference.
        beta: KL coefficient.

    Returns:
        ``[P]`` losses.
    """
    return -F.logsigmoid(implicit_reward_gap(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta))


def rpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    beta: float,
    reward_scale: float,
    distance: str = "bwd_kl",
) -> torch.Tensor:
    """Per-pair reward-aware preference loss ``D[h || g]`` (see the module docstring).

    Args:
        policy_chosen: ``[P]`` sequence log-probs of the chosen replies under the policy.
        policy_rejected: ``[P]`` the same for the rejected replies.
        ref_chosen: ``[P]`` chosen replies under the frozen reference policy.
        ref_rejected: ``[P]`` rejected replies under the reference.
        chosen_rewards: ``[P]`` reward-model scores of the chosen replies.
        rejected_rewards: ``[P]`` scores of the rejected replies.
        beta: KL coefficient of the implicit reward (the paper's Super run: 1e-5; Nano: 3e-2).
        reward_scale: ``eta``, the scale of the reward difference (Super: 3.0).
        distance: ``bwd_kl`` (the paper's: KL(sigmoid(g) || sigmoid(h))), ``fwd_kl`` or ``sq``.

    Returns:
        ``[P]`` losses (0 exactly when ``h == g`` for every distance).

    Raises:
        ValueError: An unknown ``distance``.
    """
    h = implicit_reward_gap(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    g = reward_scale * (chosen_rewards - rejected_rewards)
    return rpo_distance(h, g, distance)


def rpo_distance(h: torch.Tensor, g: torch.Tensor, distance: str = "bwd_kl") -> torch.Tensor:
    """``D[h || g]`` between the implicit gap ``h`` and the scaled reward gap ``g`` (per pair)."""
    if distance == "sq":
        return (h - g) ** 2
    if distance not in RPO_DISTANCES:
        raise ValueError(f"distance={distance!r}: use one of {list(RPO_DISTANCES)}")
    log_p_h, log_q_h = F.logsigmoid(h), F.logsigmoid(-h)  # the policy's Bernoulli: P(chosen better), P(rejected)
    log_p_g, log_q_g = F.logsigmoid(g), F.logsigmoid(-g)  # the reward model's
    if distance == "bwd_kl":  # KL(reward || policy), as in the paper
        return log_p_g.exp() * (log_p_g - log_p_h) + log_q_g.exp() * (log_q_g - log_q_h)
    return log_p_h.exp() * (log_p_h - log_p_g) + log_q_h.exp() * (log_q_h - log_q_g)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` sums of ``[N, T]`` per-token log-probs over the reply tokens (``mask`` 1)."""
    return (token_logps * mask).sum(dim=-1)
