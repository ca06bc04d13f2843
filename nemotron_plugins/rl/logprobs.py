"""Per-token log-probabilities of sampled tokens from model logits (shared by the trainer and the rollout engines)."""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_parallel: bool = False,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Log-probability of each ``token_ids[..., i]`` under ``softmax(logits[..., i, :] / temperature)``.

    Args:
        logits: ``[..., vocab]`` logits aligned with ``token_ids`` (already shifted: position i predicts token i).
        token_ids: ``[...]`` integer ids.
        temperature: Sampling temperature the tokens were drawn with; the loss must use the same one.
        vocab_parallel: The logits are a tensor-parallel vocabulary shard (Megatron TP > 1): use megatron-core's
            ``vocab_parallel_cross_entropy`` so every rank gets the full log-prob.
        vocab_size: Exclude the logits of ids >= this (megatron pads the vocabulary); must match the rollout engine's
            setting so trainer and generator use the same distribution. With ``vocab_parallel`` the padding ids of
            this rank's shard (megatron's contiguous vocabulary split) are masked to ``-inf``.

    Returns:
        ``[...]`` float32 log-probs.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if vocab_size is not None and not vocab_parallel:
        logits = logits[..., :vocab_size]
    scaled = logits.float() / temperature
    if vocab_parallel:
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        if vocab_size is not None:
            local = scaled.shape[-1]
            start = parallel_state.get_tensor_model_parallel_rank() * local
            if start + local > vocab_size:
                padding = torch.arange(start, start + local, device=scaled.device) >= vocab_size
                scaled = scaled.masked_fill(padding, float("-inf"))
        return -vocab_parallel_cross_entropy(scaled, token_ids)
    logp = torch.log_softmax(scaled, dim=-1)
    return logp.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
