"""A ``torch.utils.data.Dataset`` over packed SFT rows, and a collate function for the varlen (THD) layout.

Public API::

    PackedSFTDataset(packed)           # item: dict of tensors (tokens, labels, loss_mask, position_ids, cu_seqlens)
    collate_packed(items) -> dict      # stacks rows; cu_seqlens concatenated with offsets over the flattened batch

Item fields: ``tokens`` / ``labels`` / ``position_ids`` int64 ``[seq_len]``, ``loss_mask`` float32 ``[seq_len]``,
``cu_seqlens`` int32 ``[segments + 1]``, ``max_seqlen`` int. After :func:`collate_packed`, ``cu_seqlens`` indexes
the batch flattened to ``[batch * seq_len]`` (what Megatron's ``PackedSeqParams(qkv_format="thd")`` and
flash-attention varlen kernels take).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from nemotron_plugins.data.packing import PackedSequence


class PackedSFTDataset(Dataset):
    """Packed SFT rows as tensors.

    Args:
        packed: Rows from :func:`nemotron_plugins.data.packing.pack_examples`.
    """

    def __init__(self, packed: Sequence[PackedSequence]) -> None:
        self.packed = list(packed)

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.packed[index]
        return {
            "tokens": torch.tensor(row.input_ids, dtype=torch.long),
            "labels": torch.tensor(row.labels, dtype=torch.long),
            "loss_mask": torch.tensor(row.loss_mask, dtype=torch.float32),
            "position_ids": torch.tensor(row.position_ids, dtype=torch.long),
            "cu_seqlens": torch.tensor(row.cu_seqlens, dtype=torch.int32),
            "max_seqlen": row.max_seqlen,
        }


def collate_packed(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack packed items into a batch; ``cu_seqlens`` are offset into the flattened ``[batch * seq_len]`` tokens."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in ("tokens", "labels", "loss_mask")}
    out["position_ids"] = torch.stack([it["position_ids"] for it in items])
    offsets, cu = 0, [torch.zeros(1, dtype=torch.int32)]
    for it in items:
        cu.append(it["cu_seqlens"][1:] + offsets)
        offsets += it["tokens"].numel()
    out["cu_seqlens"] = torch.cat(cu)
    out["max_seqlen"] = max(it["max_seqlen"] for it in items)
    return out
