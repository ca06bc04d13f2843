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

Packed sequences (``PackedSeqParams``, megatron's ``thd`` layout) follow megatron's CP convention for ``thd``:
every segment (document) is padded to a multiple of ``2 * cp`` and split into ``2 * cp`` chunks of its own, rank
``r`` holding chunks ``r`` and ``2 * cp - 1 - r`` of *each* segment (what megatron's ``thd`` RoPE slices, and what
TE's ``thd_get_partitioned_indices`` computes). :func:`split_packed_batch_for_context_parallel` pads and splits a
flattened ``[1, t]`` batch and returns the ``PackedSeqParams`` with the real (``cu_seqlens_q``) and padded
(``cu_seqlens_q_padded``) boundaries; the attention gathers K/V over CP and masks each local query against the
keys of its own document that precede it (:func:`packed_local_positions` gives every rank's global positions).

For a trainer that only needs the batch split and the loss reduced, :func:`split_for_context_parallel` (or
:func:`split_packed_batch_for_context_parallel`) and :func:`context_parallel_loss` are the whole interface; the SFT
trainer (``nemotron_plugins.sft.trainer``) uses them through the shared training stack.

An RL policy update (GRPO / RLOO: :mod:`nemotron_plugins.rl.policy_worker`) does the same three steps on its
rollout batch ``[b, s]`` (prompt + completion tokens, right-padded to a multiple of ``2 * cp``):

1. Shift first, split second: build the next-token targets, the completion mask, the old / reference log-probs and
   the per-token advantages at full length, then cut every one of them with :func:`split_for_context_parallel`, so
   the logits at a rank's positions line up with that rank's targets (the model's output is never re-shifted).
2. Per-token log-probs of this rank's positions come straight from its logits (vocab-parallel over TP as usual);
   the clipped ratio, the KL term and the advantages are per token, so they need no communication.
3. Token-mean losses divide by the global token count (:func:`context_parallel_loss`, or the global-batch count
   with ``calculate_per_token_loss``); sequence-mean losses (the mean over each completion's tokens, then over
   completions) divide each rank's per-sequence sums by :func:`sequence_token_counts`, the per-sequence token
   counts summed over the CP group; a per-sequence quantity that enters the loss non-linearly (GSPO's sequence
   log-ratio) is summed over CP with :func:`context_parallel_sum`, whose backward sums the gradient over CP too.
   Either way each rank backpropagates its own partial sum and DDP's gradient sum over DP x CP completes it;
   statistics to log are all-reduced over the CP group.

Generation is not context-parallel: an engine that decodes with the training module (the megatron engine) runs it
inside :func:`context_parallel_off`, which makes the forward see whole sequences (RoPE not cut to this rank's chunks,
no K/V exchange), so the CP ranks of a replica can decode different prompts as extra generation replicas.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "ContextParallelError",
    "context_parallel_chunk_ids",
    "context_parallel_loss",
    "context_parallel_off",
    "context_parallel_sum",
    "gather_kv_for_context_parallel",
    "gather_sequence",
    "local_positions",
    "packed_document_ids",
    "packed_local_positions",
    "sequence_token_counts",
    "split_batch_for_context_parallel",
    "split_for_context_parallel",
    "split_packed_batch_for_context_parallel",
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


def packed_local_positions(cu_seqlens_padded: torch.Tensor, cp_rank: int, cp_size: int) -> torch.Tensor:
    """Positions in the padded packed batch of CP rank ``cp_rank``'s tokens, in its local order.

    Every segment ``[cu[i], cu[i + 1])`` (length divisible by ``2 * cp_size``) is cut into ``2 * cp_size`` chunks;
    the rank holds chunks ``cp_rank`` and ``2 * cp_size - 1 - cp_rank`` of each segment, segment after segment.

    Args:
        cu_seqlens_padded: ``[n + 1]`` integer segment boundaries of the padded packed batch (global, not per rank).
        cp_rank: This rank in the CP group.
        cp_size: CP group size.

    Returns:
        ``[cu[-1] / cp_size]`` long tensor on ``cu_seqlens_padded``'s device.

    Raises:
        ContextParallelError: A segment whose length is not divisible by ``2 * cp_size`` (naming it).

    Example:
        >>> packed_local_positions(torch.tensor([0, 4, 8]), 1, 2).tolist()
        [1, 2, 5, 6]
    """
    first, second = context_parallel_chunk_ids(cp_rank, cp_size)
    cu = cu_seqlens_padded.long()
    lengths = cu[1:] - cu[:-1]
    bad = torch.nonzero(lengths % (2 * cp_size)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ContextParallelError(
            f"packed segment {i} (tokens {int(cu[i])}..{int(cu[i + 1])}) has length {int(lengths[i])}, not a "
            f"multiple of 2 * context_parallel_size = {2 * cp_size}; pad it (split_packed_batch_for_context_parallel)"
        )
    chunk = lengths // (2 * cp_size)
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), 2 * chunk)
    starts = torch.cumsum(2 * chunk, 0) - 2 * chunk  # where each segment's local tokens start
    j = torch.arange(segment.numel(), device=cu.device) - starts[segment]  # offset within the segment's 2 chunks
    c = chunk[segment]
    within = torch.where(j < c, first * c + j, second * c + (j - c))
    return cu[:-1][segment] + within


def packed_document_ids(cu_seqlens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The segment index of each packed position (``positions`` in ``[0, cu[-1])``).

    >>> packed_document_ids(torch.tensor([0, 2, 6]), torch.tensor([0, 1, 2, 5])).tolist()
    [0, 0, 1, 1]
    """
    return torch.searchsorted(cu_seqlens.long().contiguous(), positions.long(), right=True) - 1


def split_packed_batch_for_context_parallel(
    tensors: Mapping[str, Any],
    cu_seqlens: torch.Tensor,
    cp_rank: int,
    cp_size: int,
    *,
    length: int | None = None,
    pad_values: Mapping[str, int | float] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Pad every segment of a flattened packed batch to a multiple of ``2 * cp_size`` and keep this rank's part.

    Padding goes at the end of each segment (after its last real token, so causal attention keeps the real tokens'
    outputs unchanged); a padded token gets ``pad_values[name]`` (default 0: no loss with a zero loss mask). With
    ``length`` the padded batch is filled up to ``length`` tokens by one more segment of padding (the same length on
    every micro-batch, as pipeline P2P buffers need).

    Args:
        tensors: Name -> ``[1, t]`` tensor of the packed batch (non-tensors pass through).
        cu_seqlens: ``[n + 1]`` segment boundaries over the ``t`` tokens (a padding run may be its own segment).
        cp_rank: This rank in the CP group.
        cp_size: CP group size.
        length: Total padded length (a multiple of ``2 * cp_size``, at least the padded segments' sum).
        pad_values: Fill value per tensor name for the added positions (default 0).

    Returns:
        ``(local tensors [1, length / cp_size], PackedSeqParams)`` where ``cu_seqlens_q`` / ``_kv`` are the real
        boundaries (a filler segment has length 0) and ``cu_seqlens_q_padded`` / ``_kv_padded`` the padded ones
        (int32), ``max_seqlen_q`` / ``_kv`` the longest padded segment.

    Raises:
        ContextParallelError: ``length`` too short or not a multiple of ``2 * cp_size``; a tensor that is not
            ``[1, t]`` (naming it).

    Example:
        >>> batch = {"tokens": torch.tensor([[10, 11, 12, 20, 21]])}
        >>> local, params = split_packed_batch_for_context_parallel(batch, torch.tensor([0, 3, 5]), 0, 2)
        >>> local["tokens"].tolist(), params.cu_seqlens_q_padded.tolist()
        ([[10, 0, 20, 0]], [0, 4, 8])
    """
    from megatron.core.packed_seq_params import PackedSeqParams

    multiple = 2 * cp_size
    cu = cu_seqlens.long()
    device = cu.device
    lengths = cu[1:] - cu[:-1]
    padded = (lengths + multiple - 1) // multiple * multiple
    total = int(padded.sum())
    if length is not None:
        if length < total or length % multiple:
            raise ContextParallelError(
                f"packed length {length} must be a multiple of {multiple} and at least the padded segments' {total}"
            )
        if length > total:
            lengths = torch.cat([lengths, lengths.new_zeros(1)])
            padded = torch.cat([padded, padded.new_tensor([length - total])])
            cu = torch.cat([cu, cu[-1:]])
            total = length
    cu_padded = torch.cat([padded.new_zeros(1), torch.cumsum(padded, 0)])
    segment = torch.repeat_interleave(torch.arange(padded.numel(), device=device), padded)
    offset = torch.arange(total, device=device) - cu_padded[:-1][segment]
    source = torch.where(offset < lengths[segment], cu[:-1][segment] + offset, torch.full_like(offset, -1))
    local = source[packed_local_positions(cu_padded, cp_rank, cp_size)]
    is_pad = local < 0
    take = local.clamp(min=0)
    out: dict[str, Any] = {}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            out[name] = value
            continue
        if value.dim() != 2 or value.shape[0] != 1 or value.shape[1] != int(cu_seqlens[-1]):
            raise ContextParallelError(
                f"{name}: a packed batch tensor must be [1, {int(cu_seqlens[-1])}], got {tuple(value.shape)}"
            )
        fill = (pad_values or {}).get(name, 0)
        picked = value[:, take.to(value.device)]
        out[name] = picked.masked_fill(is_pad.to(value.device).unsqueeze(0), fill)
    params = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu.to(torch.int32),
        cu_seqlens_kv=cu.to(torch.int32),
        cu_seqlens_q_padded=cu_padded.to(torch.int32),
        cu_seqlens_kv_padded=cu_padded.to(torch.int32),
        max_seqlen_q=int(padded.max()),
        max_seqlen_kv=int(padded.max()),
    )
    return out, params


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


def sequence_token_counts(loss_mask: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Tokens per sequence over the whole CP group: ``loss_mask [b, s / cp]`` summed over the sequence on this
    rank, then all-reduced (summed) over CP. No gradient (counts are constants of the loss).

    A sequence-mean loss under CP is then ``sum_tokens(loss * mask) / counts`` per sequence on each rank (its
    partial sums), averaged over sequences as usual; the CP ranks' terms add up to the CP=1 loss.

    Args:
        loss_mask: ``[b, s / cp]`` (this rank's part, from :func:`split_for_context_parallel`).
        group: CP process group (default: megatron's).

    Returns:
        ``[b]`` float32 counts, equal on every CP rank.
    """
    group = _cp_group(group)
    counts = loss_mask.detach().float().sum(dim=-1)
    if group.size() > 1:
        torch.distributed.all_reduce(counts, group=group)
    return counts


class _AllReduceSum(torch.autograd.Function):
    """Sum over a process group whose backward sums the incoming gradients over the group as well."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # noqa: D102
        ctx.group = group
        out = x.clone()
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def context_parallel_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``x`` summed over the CP group, differentiably: the backward sums every rank's gradient of the sum too.

    For a per-sequence quantity built from every CP rank's tokens that enters each rank's loss non-linearly (GSPO's
    sequence log-ratio): with ``S = sum_r x_r`` and each rank backpropagating its own loss ``L_r(S)``, the gradient
    that must reach rank ``r``'s ``x_r`` is ``sum_r' dL_r'/dS`` (every rank's loss depends on it), which is what the
    backward's all-reduce gives; DDP's gradient sum over DP x CP then completes the parameters' gradient.

    Args:
        x: Any tensor (e.g. ``[b]`` per-sequence partial sums of this rank's tokens).
        group: CP process group (default: megatron's); ``x`` itself when the group has one rank.

    Returns:
        The sum, equal on every CP rank.
    """
    group = _cp_group(group)
    if group.size() == 1:
        return x
    return _AllReduceSum.apply(x, group)


@contextmanager
def context_parallel_off(model: Any) -> Iterator[Any]:
    """Run ``model`` (a megatron ``GPTModel`` built with ``context_parallel_size > 1``) on whole sequences.

    Generation is not context-parallel: a decoding step feeds one token per sequence and the KV cache holds the
    whole prefix. Inside this context the model's forward sees its input as the whole sequence: the transformer
    config's ``context_parallel_size`` reads 1 (megatron's rotary length is not multiplied by CP), the rotary
    embeddings keep no CP group (the RoPE table is not cut to this rank's two chunks) and the SDPA core attention
    exchanges no K/V over CP. Nothing inside communicates over the CP group, so the CP ranks of a replica may decode
    different prompts. Everything is restored on exit. With a model built at CP = 1 this does nothing.

    Args:
        model: The ``GPTModel`` (or a wrapper whose ``modules()`` include its rotary embedding and core attentions).

    Yields:
        ``model``.

    Raises:
        ContextParallelError: A core attention whose context parallelism this cannot switch off (Transformer
            Engine's ``DotProductAttention`` with a CP group): decode with ``generation.engine='vllm'`` or with the
            SDPA attention (``model.layer_spec='puzzle_sdpa'``).
    """
    from nemotron_plugins.puzzle.attention import SDPACoreAttention

    restore: list[tuple[Any, str, Any]] = []
    try:
        for module in model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "context_parallel_size", 1) > 1:
                restore.append((config, "context_parallel_size", config.context_parallel_size))
                config.context_parallel_size = 1
            if isinstance(module, SDPACoreAttention):
                if module.cp_size > 1:
                    restore.append((module, "cp_size", module.cp_size))
                    module.cp_size = 1
            elif "RotaryEmbedding" in type(module).__name__:  # megatron's RotaryEmbedding and its variants
                group = getattr(module, "cp_group", None)
                if group is not None and group.size() > 1:
                    restore.append((module, "cp_group", group))
                    module.cp_group = None
            elif "DotProductAttention" in type(module).__name__:
                group = getattr(module, "cp_group", None)
                if group is not None and not isinstance(group, list) and group.size() > 1:
                    raise ContextParallelError(
                        f"{type(module).__name__} (Transformer Engine) runs context parallelism inside its kernel and "
                        "cannot decode whole sequences on one CP rank; generate with generation.engine='vllm' or "
                        "model.layer_spec='puzzle_sdpa'"
                    )
        yield model
    finally:
        for owner, name, value in reversed(restore):
            setattr(owner, name, value)
