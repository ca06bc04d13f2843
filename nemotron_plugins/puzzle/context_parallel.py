"""Context parallelism (CP) without Transformer Engine: megatron's load-balanced chunking, K/V all-gathered over CP.

megatron-core's context parallelism splits every sequence over the ``cp`` ranks of a CP group in ``2 * cp`` chunks:
rank ``r`` holds chunks ``r`` and ``2 * cp - 1 - r`` (so every rank gets the same amount of causal-attention work).
``GPTModel`` already knows this layout: it multiplies the rotary length by ``context_parallel_size`` and slices the
RoPE table with ``get_pos_emb_on_this_cp_rank`` (the same two chunks), so RoPE positions are the global ones without
``position_ids``. What megatron leaves to Transformer Engine is the attention itself; here
:class:`~nemotron_plugins.puzzle.attention.SDPACoreAttention` does it with :func:`gather_kv_for_context_parallel`
(all-gather of this rank's K/V over the CP group, differentiable: the backward is a reduce-scatter that sums every
rank's gradient for the K/V it received) and a causal mask for each local query chunk against the global keys.

What a trainer does with CP (``parallel.context_parallel_size > 1``):

1. Split every ``[b, s]`` (or ``[s, b]`` with ``seq_dim=0``) tensor of the batch with
   :func:`split_batch_for_context_parallel` (tokens, labels, loss mask; ``s`` divisible by ``2 * cp``). RoPE needs
   nothing (``position_ids`` may be left out or split the same way).
2. The model returns the per-token loss of this rank's ``s / cp`` tokens. Reduce it with
   :func:`context_parallel_loss`: the loss to backpropagate is ``this rank's loss sum / the token count summed over
   CP`` (times ``cp`` when gradients are *averaged* over the DP x CP group, as megatron DDP does by default, so the
   average becomes the sum), and the reported loss is the CP all-reduced sum over the all-reduced count.
3. Gradients are summed (or averaged, see 2) over the data-parallel group *with* context parallel
   (``parallel_state.get_data_parallel_group(with_context_parallel=True)``); megatron DDP and ``finalize_model_grads``
   already do this when the model's config has ``context_parallel_size > 1``.

On the shared training stack (``nemotron_plugins.training``: megatron DDP with ``calculate_per_token_loss``, every
micro-batch's loss already divided by the token count of the global batch, replicas' gradients summed) step 2 is
simply: each CP rank returns ``sum(per_token_loss * loss_mask)`` over its own ``s / cp`` tokens divided by the same
global-batch token count as at CP=1 (counted over the whole sequences, not the local halves), with
``average_over_dp_cp=False`` semantics; DDP's sum over the DP x CP group then gives the CP=1 gradient, and the loss
to log is that value all-reduced (summed) over the CP group.

Packed sequences (``PackedSeqParams``) with CP need Transformer Engine and are refused here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "ContextParallelError",
    "context_parallel_chunk_ids",
    "context_parallel_loss",
    "gather_kv_for_context_parallel",
    "gather_sequence",
    "local_positions",
    "split_batch_for_context_parallel",
    "split_for_context_parallel",
]


class ContextParallelError(ValueError):
    """A batch or tensor that does not fit the context-parallel layout; the message names the tensor."""


def context_parallel_chunk_ids(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two sequence chunks (of ``2 * cp_size``) that CP rank ``cp_rank`` holds, in local order.

    >>> context_parallel_chunk_ids(0, 2), context_parallel_chunk_ids(1, 2)
    ((0, 3), (1, 2))
    """
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ContextParallelError(f"cp_rank={cp_rank} must be in [0, cp_size={cp_size})")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def split_batch_for_context_parallel(
    tensors: Mapping[str, Any], cp_rank: int, cp_size: int, seq_dim: int = 1
) -> dict[str, Any]:
    """This CP rank's part of every tensor of a batch: chunks ``cp_rank`` and ``2 * cp_size - 1 - cp_rank``.

    Args:
        tensors: Name -> tensor with the sequence along ``seq_dim`` (``None`` values and non-tensors are passed
            through unchanged, e.g. ``attention_mask=None``).
        cp_rank: This rank in the CP group (``parallel_state.get_context_parallel_rank()``).
        cp_size: CP group size (``parallel_state.get_context_parallel_world_size()``).
        seq_dim: The sequence dimension (1 for ``[b, s]``, 0 for megatron's ``[s, b, ...]``).

    Returns:
        A new dict with each tensor's sequence cut to ``s / cp_size`` (the two chunks concatenated in that order);
        with ``cp_size == 1`` the tensors themselves.

    Raises:
        ContextParallelError: A tensor whose sequence length is not divisible by ``2 * cp_size`` (naming it).

    Example:
        >>> batch = {"tokens": torch.arange(8).reshape(1, 8), "attention_mask": None}
        >>> split_batch_for_context_parallel(batch, cp_rank=1, cp_size=2)["tokens"].tolist()
        [[2, 3, 4, 5]]
    """
    first, second = context_parallel_chunk_ids(cp_rank, cp_size)
    if cp_size == 1:
        return dict(tensors)
    out: dict[str, Any] = {}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            out[name] = value
            continue
        dim = seq_dim % value.dim() if value.dim() else 0
        if value.dim() == 0 or value.shape[dim] % (2 * cp_size):
            length = value.shape[dim] if value.dim() else "a scalar"
            raise ContextParallelError(
                f"{name}: sequence length {length} (dim {seq_dim}) is not divisible by 2 * context_parallel_size "
                f"= {2 * cp_size}; pad the sequence to a multiple of {2 * cp_size}"
            )
        chunks = value.chunk(2 * cp_size, dim=dim)
        out[name] = torch.cat([chunks[first], chunks[second]], dim=dim)
    return out


def split_for_context_parallel(tensors: Mapping[str, Any], seq_dim: int = 1) -> dict[str, Any]:
    """:func:`split_batch_for_context_parallel` with this process's CP rank and size from megatron's
    ``parallel_state`` (the tensors themselves when CP is 1)."""
    from megatron.core import parallel_state

    return split_batch_for_context_parallel(
        tensors,
        parallel_state.get_context_parallel_rank(),
        parallel_state.get_context_parallel_world_size(),
        seq_dim=seq_dim,
    )


def _cp_group(group: Any = None) -> Any:
    if group is not None:
        return group
    from megatron.core import parallel_state

    return parallel_state.get_context_parallel_group()


def local_positions(
    local_len: int, cp_size: int, cp_rank: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Global sequence positions of this CP rank's ``local_len`` tokens (its two chunks, in local order).

    >>> local_positions(4, 2, 0).tolist(), local_positions(4, 2, 1).tolist()
    ([0, 1, 6, 7], [2, 3, 4, 5])
    """
    if local_len % 2:
        raise ContextParallelError(f"the local sequence ({local_len} tokens) must hold two equal chunks")
    chunk = local_len // 2
    first, second = context_parallel_chunk_ids(cp_rank, cp_size)
    offsets = torch.arange(chunk, device=device)
    return torch.cat([first * chunk + offsets, second * chunk + offsets])


def gather_sequence(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All-gather ``x [s / cp, ...]`` (this rank's two chunks) over the CP group into ``[s, ...]`` in global order.

    Differentiable: the backward reduce-scatters (sums) each rank's gradient back to the rank owning those positions
    (megatron's ``gather_from_sequence_parallel_region`` over the CP group; works on gloo and NCCL).

    Args:
        x: ``[s / cp, ...]`` with the sequence first (megatron's layout).
        group: CP process group (default: megatron's ``parallel_state.get_context_parallel_group()``).
    """
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

    group = _cp_group(group)
    cp = group.size()
    if cp == 1:
        return x
    if x.shape[0] % 2:
        raise ContextParallelError(f"the local sequence ({x.shape[0]} tokens) must hold two equal chunks")
    gathered = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=True, group=group)
    pieces = gathered.split(x.shape[0] // 2, dim=0)  # rank r: pieces 2r (chunk r), 2r + 1 (chunk 2cp-1-r)
    order = [0] * (2 * cp)
    for rank in range(cp):
        a, b = context_parallel_chunk_ids(rank, cp)
        order[a], order[b] = 2 * rank, 2 * rank + 1
    return torch.cat([pieces[i] for i in order], dim=0)


def gather_kv_for_context_parallel(key: torch.Tensor, value: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All-gather this rank's ``key`` / ``value`` over the CP group, in global sequence order (differentiable).

    Args:
        key: ``[s / cp, b, ng, hn]`` (this rank's two chunks, as :func:`split_batch_for_context_parallel` cut them).
        value: Like ``key``.
        group: CP process group (default: megatron's ``parallel_state.get_context_parallel_group()``).

    Returns:
        ``[2, s, b, ng, hn]``: the whole sequence's keys (index 0) and values (index 1), chunk ``j`` of ``2 * cp``
        at ``[j * s / (2 cp), (j + 1) * s / (2 cp))``. The backward reduce-scatters (sums) every rank's gradient
        back to the rank that owns those positions.
    """
    if key.shape != value.shape:
        raise ContextParallelError(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ in shape")
    full = gather_sequence(torch.cat([key, value], dim=-1), group)
    k, v = full.split(key.shape[-1], dim=-1)
    return torch.stack([k, v])


def context_parallel_loss(
    per_token_loss: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    group: Any = None,
    average_over_dp_cp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss a CP rank backpropagates and the loss to report, for a token-mean objective split over CP.

    Every CP rank holds ``1 / cp`` of each sequence's tokens. The token mean over the whole sequence is
    ``sum_r (loss sum on r) / (tokens summed over r)``; each rank backpropagates its own term, and the gradient is
    the sum over CP ranks, which is what megatron's gradient reduction over the DP x CP group gives (with
    ``average_over_dp_cp`` the term is multiplied by ``cp``, undoing that reduction's division by the group size
    for the CP part, as megatron-LM's ``loss_func`` does).

    Args:
        per_token_loss: This rank's per-token loss (e.g. ``[b, s / cp]`` from ``GPTModel(..., labels=...)``).
        loss_mask: Same shape, 1 where the token counts (default: all).
        group: CP process group (default: megatron's).
        average_over_dp_cp: Gradients are averaged (not summed) over the DP x CP group (megatron DDP default).

    Returns:
        ``(loss_to_backpropagate, reported_loss)``: the first carries the graph; the second is the detached token
        mean over the whole CP group (equal on every CP rank, equal to the CP=1 loss).
    """
    group = _cp_group(group)
    cp = group.size()
    mask = torch.ones_like(per_token_loss) if loss_mask is None else loss_mask.to(per_token_loss.dtype)
    local_sum = (per_token_loss.float() * mask.float()).sum()
    stats = torch.stack([local_sum.detach(), mask.float().sum()])
    if cp > 1:
        torch.distributed.all_reduce(stats, group=group)
    count = stats[1].clamp(min=1.0)
    loss = local_sum / count
    if average_over_dp_cp:
        loss = loss * cp
    return loss, stats[0] / count
