"""Group-relative advantage estimators for GRPO and RLOO.

Rewards come as a ``[num_prompts, group_size]`` tensor (or flat, grouped consecutively: the ``group_size`` samples
of prompt 0 first, then prompt 1, ...). A NaN reward marks an unscorable sample (every reward failed): it is left out
of its group's baseline and std and its advantage is 0, so it never moves the policy.

* GRPO: ``A_i = (r_i - mean(r)) / std(r)`` with the division applied only in groups whose std > 0; a group whose
  samples all got the same reward has advantage 0 everywhere.
* Leave-one-out (RLOO): the baseline of sample ``i`` is the mean of the OTHER valid samples of its group,
  ``A_i = r_i - mean_{j != i} r_j = n / (n - 1) * (r_i - mean(r))``. With ``normalize_by_std`` the same group std
  is used as for GRPO (the std of the whole group), unless ``leave_one_out_std``:
* Leave-one-out std (NeMo-RL's default): sample ``i`` is divided by ``std_{j != i} r_j``, the std of the OTHER valid
  samples of its group, only where that std is > 0 (a sample whose others all agree keeps its raw difference).
* Dr. GRPO is ``normalize_by_std=False`` (``A_i = r_i - mean(r)``); its constant loss normaliser is in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class GroupAdvantages:
    """Advantages and the group statistics they were built from; all tensors are ``[num_prompts, group_size]``.

    Attributes:
        advantages: One advantage per sample (0 for unscorable samples and groups without signal).
        baseline: The baseline subtracted from each sample's reward (NaN where the sample is unscorable).
        std: The std each sample was divided by: the group std repeated across the group, or with
            ``leave_one_out_std`` each sample's std of the other samples (0 where there is no spread).
        valid: True where the reward was a finite number.
        zero_std_groups: ``[num_prompts]`` True for groups whose valid rewards are all equal (no learning signal).
    """

    advantages: torch.Tensor
    baseline: torch.Tensor
    std: torch.Tensor
    valid: torch.Tensor
    zero_std_groups: torch.Tensor

    def flat(self) -> torch.Tensor:
        """Advantages flattened in sample order (prompt-major), matching a flat rollout list."""
        return self.advantages.reshape(-1)


def _grouped(rewards: torch.Tensor, group_size: int | None) -> torch.Tensor:
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.float32)
    if rewards.dim() == 2:
        if group_size is not None and rewards.shape[1] != group_size:
            raise ValueError(f"rewards have shape {tuple(rewards.shape)} but group_size={group_size}")
        return rewards
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [num_prompts, group_size] or flat, got shape {tuple(rewards.shape)}")
    if group_size is None or group_size < 1:
        raise ValueError("flat rewards need group_size (the number of samples per prompt)")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of group_size={group_size}")
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor,
    *,
    group_size: int | None = None,
    leave_one_out: bool = False,
    normalize_by_std: bool = True,
    std_unbiased: bool = True,
    std_epsilon: float = 0.0,
    leave_one_out_std: bool = False,
) -> GroupAdvantages:
    """Compute group-relative advantages.

    Args:
        rewards: ``[num_prompts, group_size]`` rewards, or a flat tensor grouped consecutively. NaN = unscorable.
        group_size: Samples per prompt; required for flat rewards.
        leave_one_out: Use the mean of the other samples of the group as the baseline (RLOO).
        normalize_by_std: Divide by the group std where it is > 0.
        std_unbiased: Bessel-corrected std (n - 1), as TRL; False divides by n.
        std_epsilon: Added to the std before dividing (TRL adds 1e-4); groups with std 0 are never divided.
        leave_one_out_std: With ``leave_one_out`` and ``normalize_by_std``, divide each sample by the std of the other
            valid samples of its group (NeMo-RL), where it is > 0.

    Returns:
        The :class:`GroupAdvantages` (float32 or the rewards' float dtype, on the rewards' device).

    Raises:
        ValueError: On malformed rewards, or ``leave_one_out_std`` without ``leave_one_out`` and ``normalize_by_std``.

    Example:
        >>> import torch
        >>> a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
        >>> [round(x, 4) for x in a.advantages[0].tolist()], a.advantages[1].tolist()
        ([0.866, -0.866, -0.866, 0.866], [0.0, 0.0, 0.0, 0.0])
    """
    if leave_one_out_std and not (leave_one_out and normalize_by_std):
        raise ValueError("leave_one_out_std needs leave_one_out=True and normalize_by_std=True")
    r = _grouped(rewards, group_size)
    valid = torch.isfinite(r)
    count = valid.sum(dim=1, keepdim=True).to(r.dtype)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    total = r0.sum(dim=1, keepdim=True)
    mean = total / count.clamp(min=1)
    centred = torch.where(valid, r - mean, torch.zeros_like(r))
    ddof = 1 if std_unbiased else 0
    var = (centred**2).sum(dim=1, keepdim=True) / (count - ddof).clamp(min=1)
    std = var.sqrt()
    # A group with fewer than 2 valid samples has no spread to learn from.
    std = torch.where(count >= 2, std, torch.zeros_like(std))
    # Exact equality of valid rewards, robust to float round-off in the variance.
    r_max = torch.where(valid, r, torch.full_like(r, -torch.inf)).amax(dim=1, keepdim=True)
    r_min = torch.where(valid, r, torch.full_like(r, torch.inf)).amin(dim=1, keepdim=True)
    zero_std = (count < 2) | (r_max == r_min)
    std = torch.where(zero_std, torch.zeros_like(std), std)

    if leave_one_out:
        others = (count - 1).clamp(min=1)
        baseline = (total - r0) / others
    else:
        baseline = mean.expand_as(r)
    adv = torch.where(valid & ~zero_std, r - baseline, torch.zeros_like(r))
    std = std.expand_as(r).clone()
    if leave_one_out_std:
        std = _leave_one_out_std(r, valid, baseline, ddof)
        std = torch.where(zero_std | ~valid, torch.zeros_like(std), std)
        adv = torch.where(std > 0, adv / (std + std_epsilon), adv)
    elif normalize_by_std:
        adv = torch.where(zero_std, adv, adv / (std + std_epsilon))
    baseline = torch.where(valid, baseline, torch.full_like(r, torch.nan))
    return GroupAdvantages(
        advantages=adv,
        baseline=baseline,
        std=std,
        valid=valid,
        zero_std_groups=zero_std.squeeze(1),
    )


def _leave_one_out_std(r: torch.Tensor, valid: torch.Tensor, loo_mean: torch.Tensor, ddof: int) -> torch.Tensor:
    """``[P, G]``: for each sample, the std of the OTHER valid samples of its group around their mean ``loo_mean``.

    Computed from the deviations themselves (``[P, G, G]``, no sum-of-squares cancellation); 0 where fewer than
    ``ddof + 1`` other samples are valid.
    """
    g = r.shape[1]
    others = valid.unsqueeze(1) & ~torch.eye(g, dtype=torch.bool, device=r.device)  # [P, i, j]: j counts for i
    dev = torch.where(others, r.unsqueeze(1) - loo_mean.unsqueeze(2), torch.zeros((), dtype=r.dtype, device=r.device))
    m = others.sum(dim=2).to(r.dtype)
    var = (dev**2).sum(dim=2) / (m - ddof).clamp(min=1)
    return torch.where(m - ddof >= 1, var.sqrt(), torch.zeros_like(var))


def advantages_from_config(rewards: torch.Tensor, cfg: object, *, group_size: int | None = None) -> GroupAdvantages:
    """:func:`group_advantages` with the advantage fields of a :class:`~nemotron_plugins.rl.config.GRPOConfig`."""
    return group_advantages(
        rewards,
        group_size=group_size if group_size is not None else getattr(cfg, "num_generations", None),
        leave_one_out=cfg.leave_one_out_baseline,  # type: ignore[attr-defined]
        normalize_by_std=cfg.normalize_advantages_by_std,  # type: ignore[attr-defined]
        std_unbiased=cfg.std_unbiased,  # type: ignore[attr-defined]
        std_epsilon=cfg.std_epsilon,  # type: ignore[attr-defined]
        leave_one_out_std=cfg.leave_one_out_std,  # type: ignore[attr-defined]
    )
