"""Sequence packing for SFT with per-sequence boundaries a trainer can respect.

Public API::

    pack_examples(examples, seq_len, *, pad_id=0, strategy="first_fit_decreasing") -> list[PackedSequence]
    PackedSequence(input_ids, labels, loss_mask, position_ids, seq_boundaries, example_lines)
    packing_stats(packed) -> dict

Conventions (the Megatron GPT ones: predict the next token, mask the loss):

- ``labels[i]`` is the token after position ``i`` *in the same sequence*; ``loss_mask[i]`` is 1 only when that
  next token is a target token. So the loss covers exactly the target tokens, including the final ``<|eot_id|>``,
  and never crosses from one packed sequence into the next. Labels are always valid token ids (``pad_id`` where
  there is no next token); use :meth:`PackedSequence.labels_with_ignore` for ``-100`` style losses.
- ``position_ids`` restart at 0 for every sequence (and for the padding tail).
- ``seq_boundaries`` are the ``(start, end)`` half-open spans of the real sequences; ``cu_seqlens`` adds the
  padding tail as a last segment so ``cu_seqlens[-1] == seq_len`` (THD / flash-attention varlen layout);
  :meth:`PackedSequence.attention_allowed` gives the block-diagonal causal mask (True = may attend).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nemotron_plugins.data.sft import SFTExample

PackingStrategy = Literal["first_fit_decreasing", "sequential", "none"]
PACKING_STRATEGIES: tuple[str, ...] = ("first_fit_decreasing", "sequential", "none")


@dataclass(slots=True)
class PackedSequence:
    """Several SFT examples packed into one fixed-length row."""

    input_ids: list[int]
    """Tokens, ``seq_len`` long (padded with ``pad_id``)."""
    labels: list[int]
    """Next-token labels within each sequence (``pad_id`` at each sequence's last position and in padding)."""
    loss_mask: list[int]
    """1 where ``labels[i]`` is a target token, else 0."""
    position_ids: list[int]
    """Positions restarting at 0 per sequence (and for the padding tail)."""
    seq_boundaries: list[tuple[int, int]]
    """Half-open ``(start, end)`` spans of the real sequences, in order."""
    example_lines: list[int] = field(default_factory=list)
    """Source line of each packed example, in order."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_padding(self) -> int:
        """Padding tokens at the end."""
        return len(self.input_ids) - (self.seq_boundaries[-1][1] if self.seq_boundaries else 0)

    @property
    def cu_seqlens(self) -> list[int]:
        """Cumulative sequence lengths ``[0, end_1, ..., seq_len]``; the padding tail is its own last segment."""
        cu = [0] + [end for _, end in self.seq_boundaries]
        if cu[-1] != len(self.input_ids):
            cu.append(len(self.input_ids))
        return cu

    @property
    def max_seqlen(self) -> int:
        """Longest segment in :attr:`cu_seqlens`."""
        cu = self.cu_seqlens
        return max(b - a for a, b in zip(cu, cu[1:], strict=False))

    @property
    def segment_ids(self) -> list[int]:
        """Index of the sequence each position belongs to; -1 for padding."""
        out = [-1] * len(self.input_ids)
        for index, (start, end) in enumerate(self.seq_boundaries):
            out[start:end] = [index] * (end - start)
        return out

    def attention_allowed(self) -> Any:
        """Block-diagonal causal mask as a ``numpy`` bool array ``[seq_len, seq_len]``: True where query ``i`` may
        attend to key ``j`` (same sequence and ``j <= i``). Padding positions attend only to themselves.

        Megatron's ``attention_mask`` uses the opposite sense (True = masked): pass ``~mask``.
        """
        import numpy as np

        segments = np.array(self.segment_ids)
        n = len(segments)
        same = segments[:, None] == segments[None, :]
        same &= segments[:, None] >= 0
        causal = np.tril(np.ones((n, n), dtype=bool))
        mask = same & causal
        mask[np.arange(n), np.arange(n)] = True
        return mask

    def labels_with_ignore(self, ignore_index: int = -100) -> list[int]:
        """Labels with ``ignore_index`` wherever ``loss_mask`` is 0 (for Hugging Face style losses)."""
        return [label if keep else ignore_index for label, keep in zip(self.labels, self.loss_mask, strict=True)]


def _bins(lengths: list[int], seq_len: int, strategy: str) -> list[list[int]]:
    if strategy == "none":
        return [[i] for i in range(len(lengths))]
    if strategy == "sequential":
        bins: list[list[int]] = []
        used = seq_len + 1
        for i, n in enumerate(lengths):
            if used + n > seq_len:
                bins.append([])
                used = 0
            bins[-1].append(i)
            used += n
        return bins
    # first fit decreasing: longest first into the first bin with room; ties keep source order.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    shortest = min(lengths, default=0)
    bins = []
    free: list[int] = []
    open_bins: list[int] = []  # bins that can still take the shortest example, in creation order
    for i in order:
        for position, b in enumerate(open_bins):
            if lengths[i] <= free[b]:
                bins[b].append(i)
                free[b] -= lengths[i]
                if free[b] < shortest:
                    del open_bins[position]
                break
        else:
            bins.append([i])
            free.append(seq_len - lengths[i])
            if free[-1] >= shortest:
                open_bins.append(len(bins) - 1)
    return [sorted(b) for b in bins]


def pack_examples(
    examples: Sequence[SFTExample],
    seq_len: int,
    *,
    pad_id: int = 0,
    strategy: PackingStrategy = "first_fit_decreasing",
) -> list[PackedSequence]:
    """Pack examples into rows of exactly ``seq_len`` tokens.

    Args:
        examples: SFT examples, each at most ``seq_len`` tokens.
        seq_len: Row length.
        pad_id: Token id used for padding and for labels without a next token (0 is the tiny tokenizer's pad).
        strategy: ``first_fit_decreasing`` (fewest rows), ``sequential`` (keeps source order) or ``none`` (one
            example per row, padded).

    Returns:
        Packed rows; within a row, examples keep their source order.

    Raises:
        ValueError: If an example is longer than ``seq_len``, is empty, or the strategy is unknown.
    """
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"unknown packing strategy {strategy!r}; valid: {', '.join(PACKING_STRATEGIES)}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    lengths = []
    for index, example in enumerate(examples):
        n = len(example.input_ids)
        if n == 0 or n > seq_len or len(example.loss_mask) != n:
            raise ValueError(
                f"example {index} (line {example.line}) has {n} tokens and {len(example.loss_mask)} mask entries; "
                f"need 1..{seq_len} tokens with one mask entry each (filter with build_sft_examples(max_seq_len=...))"
            )
        lengths.append(n)
    packed: list[PackedSequence] = []
    for members in _bins(lengths, seq_len, strategy):
        input_ids: list[int] = []
        labels: list[int] = []
        loss_mask: list[int] = []
        position_ids: list[int] = []
        boundaries: list[tuple[int, int]] = []
        for i in members:
            ids, mask = examples[i].input_ids, examples[i].loss_mask
            start = len(input_ids)
            input_ids.extend(ids)
            labels.extend([*ids[1:], pad_id])
            loss_mask.extend([*mask[1:], 0])
            position_ids.extend(range(len(ids)))
            boundaries.append((start, start + len(ids)))
        tail = seq_len - len(input_ids)
        input_ids.extend([pad_id] * tail)
        labels.extend([pad_id] * tail)
        loss_mask.extend([0] * tail)
        position_ids.extend(range(tail))
        packed.append(
            PackedSequence(
                input_ids=input_ids,
                labels=labels,
                loss_mask=loss_mask,
                position_ids=position_ids,
                seq_boundaries=boundaries,
                example_lines=[examples[i].line for i in members],
            )
        )
    return packed


def packing_stats(packed: Sequence[PackedSequence]) -> dict[str, float]:
    """Rows, sequences, fill ratio (non-padding tokens / all tokens) and loss tokens of packed rows."""
    total = sum(len(p) for p in packed)
    real = sum(len(p) - p.num_padding for p in packed)
    return {
        "rows": len(packed),
        "sequences": sum(len(p.seq_boundaries) for p in packed),
        "fill_ratio": real / total if total else 0.0,
        "loss_tokens": sum(sum(p.loss_mask) for p in packed),
    }
