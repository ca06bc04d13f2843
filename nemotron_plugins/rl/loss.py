"""The clipped policy-gradient loss of GRPO / RLOO, with a k3 KL penalty and generator importance sampling.

Per completion token ``t`` (``mask == 1``):

* ratio ``rho_t = exp(logp_t - logp_old_t)`` between the policy being trained and the policy that produced the
  rollout (as recomputed by the trainer);
* with ``ratio_level="sequence"`` (GSPO) every token of a sequence shares its sequence ratio
  ``s = exp(mean_t(logp_t - logp_old_t))``, the geometric mean of the token ratios, clipped as one;
* clipped surrogate ``pg_t = -min(rho_t * A, clip(rho_t, 1 - eps, 1 + eps_high) * A)`` (``eps_high > eps`` is
  DAPO's clip-higher);
* dual clip (``dual_clip = c > 1``, Ye et al. 2020 / verl's ``clip_ratio_c``): for ``A < 0``,
  ``pg_t <- min(pg_t, -c * A)``, a bound on the loss of a token whose ratio exploded;
* optional importance-sampling weight ``w_t = min(exp(logp_old_t - logp_gen_t), cap)`` (no gradient) correcting
  for the generator (e.g. vLLM in FP8) sampling from a slightly different distribution than the trainer computes:
  ``pg_t <- w_t * pg_t``;
* KL penalty ``beta * k3_t`` with ``k3_t = exp(r_t) - 1 - r_t``, ``r_t = logp_ref_t - logp_t`` (non-negative,
  unbiased for KL(pi || pi_ref) under samples of pi); ``r_t`` is clamped to ``[-kl_input_clamp, kl_input_clamp]``
  and ``k3_t`` to at most ``kl_output_clamp`` (NeMo-RL / verl: 20 and 10);
* per-token loss ``l_t = pg_t + beta * k3_t``.

Aggregation and gradient accumulation
-------------------------------------
``"token"`` (default): ``L = sum_{all tokens in the global batch} l_t / N_tokens``. Each micro-batch on each
data-parallel rank calls :func:`compute_policy_loss` with ``total_tokens_in_global_batch = N_tokens`` (the mask sum
over every micro-batch of the optimizer step on every DP rank, see :func:`global_token_count`) and returns its
partial sum divided by ``N_tokens``. Backpropagating every micro-batch's loss WITHOUT further division accumulates
``sum_mb grad(partial_mb) = grad(L_rank)``; a SUM all-reduce of gradients over DP ranks then gives exactly the
gradient of the global token mean. Megatron's DDP AVERAGES gradients over the DP group (it scales by 1 / dp_size),
so a trainer using it multiplies each micro-batch loss by ``dp_size`` (``loss_scale=dp_size``) to cancel that.

``"sequence"``: each sequence's token mean, summed and divided by ``total_sequences_in_global_batch``; the same
accumulation argument holds with sequence counts.

``"constant"`` (Dr. GRPO): ``L = sum_{all tokens in the global batch} l_t / (N_sequences * L_max)`` with ``L_max``
the generation budget (``max_response_length``): a normaliser independent of the sampled lengths, so long wrong
answers are not favoured by a smaller per-token weight.

With both defaults left at ``None`` the denominators are the micro-batch's own counts (a local mean): right when
the whole global batch is one micro-batch on one rank.

Context parallelism (``context_parallel_group`` with more than one rank): each CP rank holds a share of every
sequence's tokens (``mask`` is 1 only on this rank's completion tokens) and backpropagates its partial sum; megatron
DDP's gradient sum over DP x CP completes it. Token-level and ``"constant"`` losses need nothing more (their
denominators are global counts). A sequence mean divides by the sequence's token count over the whole CP group
(:func:`~nemotron_plugins.puzzle.context_parallel.sequence_token_counts`), and GSPO's sequence log-ratio is the
CP-summed log-ratio over that count (:func:`~nemotron_plugins.puzzle.context_parallel.context_parallel_sum`, whose
backward sums the gradient over CP), so every rank's terms add up to the CP=1 loss and gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass(kw_only=True, slots=True)
class PolicyLossConfig:
    """The loss fields of :class:`~nemotron_plugins.rl.config.GRPOConfig`, for callers that have no full config."""

    epsilon: float = 0.2
    """Lower (and by default upper) clip epsilon."""
    epsilon_high: float | None = None
    """Upper clip epsilon; ``None`` = ``epsilon``."""
    beta: float = 0.0
    """KL coefficient; 0 ignores ``ref_logprobs``."""
    loss_aggregation: Literal["token", "sequence"] = "token"
    """``"token"`` or ``"sequence"`` averaging over the global batch."""
    importance_sampling_correction: bool = False
    """Weight tokens by the truncated pi_old / pi_generator ratio."""
    importance_sampling_cap: float | None = 2.0
    """Upper truncation of the importance weight; ``None`` = unbounded."""
    ratio_level: Literal["token", "sequence"] = "token"
    """``"token"`` ratios or GSPO's ``"sequence"`` ratios."""
    dual_clip: float | None = None
    """Dual-clip bound ``c > 1`` for negative advantages; ``None`` = off."""
    kl_input_clamp: float | None = 20.0
    """Clamp of the k3 log-ratio input; ``None`` = none."""
    kl_output_clamp: float | None = 10.0
    """Upper clamp of the per-token k3 value; ``None`` = none."""


def kl_k3(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    *,
    input_clamp: float | None = None,
    output_clamp: float | None = None,
) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(r) - 1 - r`` with ``r = ref_logprobs - logprobs``.

    Args:
        logprobs: Log-probs under the policy.
        ref_logprobs: Log-probs under the reference.
        input_clamp: ``r`` is clamped to ``[-input_clamp, input_clamp]`` before ``exp`` (no gradient beyond it).
        output_clamp: The result is clamped to at most ``output_clamp`` (k3 is never negative).

    Example:
        >>> import torch
        >>> kl_k3(torch.tensor([0.0, -1.0]), torch.tensor([0.0, 0.0])).tolist()  # r = 0 -> 0; r = 1 -> e - 2
        [0.0, 0.7182817459106445]
    """
    r = ref_logprobs - logprobs
    if input_clamp is not None:
        r = r.clamp(-input_clamp, input_clamp)
    kl = torch.exp(r) - 1.0 - r
    if output_clamp is not None:
        kl = kl.clamp(max=output_clamp)
    return kl


def global_token_count(masks: Iterable[torch.Tensor], *, group: Any = None) -> int:
    """Completion tokens over all micro-batches of a step, summed over a ``torch.distributed`` group if one is up.

    Args:
        masks: The loss masks of every micro-batch this rank processes in the optimizer step.
        group: The data-parallel process group (``None`` = the default group when distributed is initialised).

    Returns:
        The ``total_tokens_in_global_batch`` to pass to :func:`compute_policy_loss`.
    """
    local = torch.zeros((), dtype=torch.float64)
    for m in masks:
        local += m.detach().to(torch.float64).sum().cpu()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(local, group=group)
    return int(local.item())


def _field(cfg: Any, name: str) -> Any:
    if not hasattr(cfg, name):
        raise TypeError(
            f"loss config {type(cfg).__name__} has no field {name!r}; pass a GRPOConfig or PolicyLossConfig"
        )
    return getattr(cfg, name)


def compute_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg: Any,
    ref_logprobs: torch.Tensor | None = None,
    generator_logprobs: torch.Tensor | None = None,
    total_tokens_in_global_batch: float | None = None,
    total_sequences_in_global_batch: float | None = None,
    loss_scale: float = 1.0,
    max_response_length: int | None = None,
    context_parallel_group: Any = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss with optional KL penalty and importance-sampling correction.

    Args:
        logprobs: ``[b, t]`` log-probs of the sampled tokens under the policy being trained (with grad).
        old_logprobs: ``[b, t]`` log-probs under the policy that generated the rollout, as the trainer computed them
            before the first update on this rollout (no grad).
        advantages: ``[b]`` per-sequence or ``[b, t]`` per-token advantages.
        mask: ``[b, t]`` 1 for completion tokens that count, 0 for prompt/padding.
        cfg: A :class:`~nemotron_plugins.rl.config.GRPOConfig` or :class:`PolicyLossConfig`.
        ref_logprobs: ``[b, t]`` reference-policy log-probs; required when ``cfg.beta > 0``.
        generator_logprobs: ``[b, t]`` log-probs reported by the rollout engine; required when
            ``cfg.importance_sampling_correction``.
        total_tokens_in_global_batch: Denominator of the token mean (see the module docstring); default: this
            micro-batch's mask sum.
        total_sequences_in_global_batch: Denominator of the sequence mean; default: this micro-batch's size.
        loss_scale: Multiplies the returned loss (e.g. the DP size when the gradient reduction averages).
        max_response_length: The generation budget in tokens (``generation.max_new_tokens``); required by
            ``loss_aggregation="constant"``.
        context_parallel_group: The CP group over which every sequence's tokens are split (``None`` or one rank:
            each row holds its whole sequence); ``mask`` then marks this rank's tokens only (see the module
            docstring). A collective over the group when ``loss_aggregation="sequence"`` or
            ``ratio_level="sequence"``.

    Returns:
        ``(loss, metrics)``: the scalar loss to backpropagate and float metrics over this micro-batch's tokens:
        ``pg_loss``, ``kl`` (mean k3), ``clip_fraction`` (tokens whose clipped branch is active), ``clip_low_fraction``,
        ``clip_high_fraction``, ``dual_clip_fraction`` (negative-advantage tokens held by the dual clip),
        ``ratio_mean``, ``ratio_max`` (per token; the sequence ratio repeated with ``ratio_level="sequence"``),
        ``is_weight_mean/min/max`` (when IS is on), ``num_tokens``, ``num_sequences``.

    Raises:
        ValueError: On mismatched shapes, a missing tensor that the config asks for, or a non-positive denominator.
    """
    eps_low = float(_field(cfg, "epsilon"))
    eps_high_cfg = _field(cfg, "epsilon_high")
    eps_high = eps_low if eps_high_cfg is None else float(eps_high_cfg)
    beta = float(_field(cfg, "beta"))
    aggregation = _field(cfg, "loss_aggregation")
    use_is = bool(_field(cfg, "importance_sampling_correction"))
    is_cap = _field(cfg, "importance_sampling_cap")
    ratio_level = _field(cfg, "ratio_level")
    dual_clip = _field(cfg, "dual_clip")
    kl_in = _field(cfg, "kl_input_clamp")
    kl_out = _field(cfg, "kl_output_clamp")
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level={ratio_level!r} is invalid: use 'token' or 'sequence'")
    if dual_clip is not None and not float(dual_clip) > 1.0:
        raise ValueError(f"dual_clip={dual_clip!r} must be > 1 or None")

    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [batch, tokens], got shape {tuple(logprobs.shape)}")
    for name, tensor in (("old_logprobs", old_logprobs), ("mask", mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(logprobs.shape)} like logprobs")
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(f"advantages has {advantages.shape[0]} rows, logprobs has {logprobs.shape[0]}")
        advantages = advantages.unsqueeze(1)
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be [batch] or [batch, tokens], got shape {tuple(advantages.shape)}")
    advantages = advantages.to(logprobs.dtype)
    maskf = mask.to(logprobs.dtype)

    sel = mask.bool()
    split = context_parallel_group is not None and context_parallel_group.size() > 1
    seq_tokens = None  # tokens of each whole sequence (over the CP group), for the sequence-level terms
    if ratio_level == "sequence" or aggregation == "sequence":
        if split:
            from nemotron_plugins.puzzle.context_parallel import sequence_token_counts

            seq_tokens = sequence_token_counts(maskf, context_parallel_group).to(logprobs.dtype)
        else:
            seq_tokens = maskf.sum(dim=1)
    log_ratio = logprobs - old_logprobs.detach()
    if ratio_level == "sequence":
        # GSPO: the mean token log-ratio of each sequence (padding excluded), shared by all its tokens.
        seq_log_ratio = torch.where(sel, log_ratio, torch.zeros_like(log_ratio)).sum(dim=1)
        if split:
            from nemotron_plugins.puzzle.context_parallel import context_parallel_sum

            seq_log_ratio = context_parallel_sum(seq_log_ratio, context_parallel_group)
        seq_log_ratio = (seq_log_ratio / seq_tokens.clamp(min=1.0)).unsqueeze(1)
        log_ratio = seq_log_ratio.expand_as(logprobs)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    pg = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    dual_held = torch.zeros_like(sel)
    if dual_clip is not None:
        bound = -float(dual_clip) * advantages
        dual_held = (advantages < 0) & (bound < pg)
        pg = torch.where(advantages < 0, torch.minimum(pg, bound), pg)

    metrics: dict[str, float] = {}
    if use_is:
        if generator_logprobs is None:
            raise ValueError("importance_sampling_correction is on but generator_logprobs was not given")
        if generator_logprobs.shape != logprobs.shape:
            raise ValueError(
                f"generator_logprobs has shape {tuple(generator_logprobs.shape)}, expected {tuple(logprobs.shape)}"
            )
        is_weight = torch.exp((old_logprobs - generator_logprobs).detach() * maskf)
        if is_cap is not None:
            is_weight = is_weight.clamp(max=float(is_cap))
        pg = pg * is_weight

    per_token = pg
    kl = None
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError(f"beta={beta} > 0 needs ref_logprobs (set beta=0 to skip the reference model)")
        if ref_logprobs.shape != logprobs.shape:
            raise ValueError(f"ref_logprobs has shape {tuple(ref_logprobs.shape)}, expected {tuple(logprobs.shape)}")
        kl = kl_k3(
            logprobs,
            ref_logprobs.detach(),
            input_clamp=None if kl_in is None else float(kl_in),
            output_clamp=None if kl_out is None else float(kl_out),
        )
        per_token = per_token + beta * kl

    num_tokens = maskf.sum()
    if aggregation == "token":
        denom = num_tokens.detach() if total_tokens_in_global_batch is None else total_tokens_in_global_batch
        denom_f = float(denom)
        if denom_f <= 0:
            raise ValueError(f"total_tokens_in_global_batch must be > 0, got {denom_f}")
        loss = (per_token * maskf).sum() / denom_f
    elif aggregation == "sequence":
        seq_mean = (per_token * maskf).sum(dim=1) / seq_tokens.clamp(min=1.0)
        denom_f = float(
            logprobs.shape[0] if total_sequences_in_global_batch is None else total_sequences_in_global_batch
        )
        if denom_f <= 0:
            raise ValueError(f"total_sequences_in_global_batch must be > 0, got {denom_f}")
        loss = seq_mean.sum() / denom_f
    elif aggregation == "constant":
        if max_response_length is None or int(max_response_length) < 1:
            raise ValueError(
                f"loss_aggregation='constant' (Dr. GRPO) needs max_response_length >= 1, the generation budget "
                f"(generation.max_new_tokens); got {max_response_length!r}"
            )
        sequences = logprobs.shape[0] if total_sequences_in_global_batch is None else total_sequences_in_global_batch
        denom_f = float(sequences) * int(max_response_length)
        if denom_f <= 0:
            raise ValueError(f"total_sequences_in_global_batch must be > 0, got {sequences}")
        loss = (per_token * maskf).sum() / denom_f
    else:
        raise ValueError(f"loss_aggregation={aggregation!r} is invalid: use 'token', 'sequence' or 'constant'")
    loss = loss * loss_scale

    with torch.no_grad():
        n = float(num_tokens.item())

        def mmean(x: torch.Tensor) -> float:
            return float((x * maskf).sum().item() / n) if n > 0 else 0.0

        low = (ratio < 1.0 - eps_low) & (advantages < 0)
        high = (ratio > 1.0 + eps_high) & (advantages > 0)
        metrics["pg_loss"] = mmean(pg)
        metrics["clip_low_fraction"] = mmean(low.to(maskf.dtype))
        metrics["clip_high_fraction"] = mmean(high.to(maskf.dtype))
        metrics["clip_fraction"] = mmean((low | high).to(maskf.dtype))
        metrics["dual_clip_fraction"] = mmean(dual_held.to(maskf.dtype))
        metrics["ratio_mean"] = mmean(ratio)
        metrics["ratio_max"] = float(ratio[sel].max().item()) if n > 0 else 1.0
        metrics["kl"] = mmean(kl) if kl is not None else 0.0
        if use_is:
            metrics["is_weight_mean"] = mmean(is_weight)
            metrics["is_weight_min"] = float(is_weight[sel].min().item()) if n > 0 else 1.0
            metrics["is_weight_max"] = float(is_weight[sel].max().item()) if n > 0 else 1.0
        metrics["num_tokens"] = n
        metrics["num_sequences"] = float(logprobs.shape[0])
    return loss, metrics
