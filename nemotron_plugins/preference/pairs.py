"""Preference pairs as Megatron micro-batches, shared by the reward-model and RPO trainers.

A micro-batch of ``m`` pairs is one ``[2m, w]`` token block: rows ``0..m-1`` the chosen sequences, rows ``m..2m-1``
the rejected ones (prompt + reply + end-of-turn, right-padded), so one forward pass scores both sides of every pair
and the loss of a pair never spans two micro-batches. All micro-batches of a step share one width (the step's
longest sequence rounded up to a multiple of 8), the shape megatron's pipeline schedule needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

PAD_MULTIPLE = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class EncodedPair:
    """Token ids of one pair."""

    chosen: list[int]
    """Prompt + chosen reply + end-of-turn."""
    rejected: list[int]
    """Prompt + rejected reply + end-of-turn."""
    prompt_length: int
    """Prompt tokens (the same prompt on both sides)."""
    chosen_reward: float = math.nan
    """Reward of the chosen reply (NaN: none)."""
    rejected_reward: float = math.nan
    """Reward of the rejected reply."""
    margin: float = 0.0
    """Bradley-Terry margin."""


def encode_pairs(
    pairs: Sequence[Any], tokenizer: Any, template: str, max_length: int
) -> tuple[list[EncodedPair], int]:
    """Encode :class:`~nemotron_plugins.preference.data.PreferencePair` objects; pairs with a side longer than
    ``max_length`` tokens are dropped and counted (the second element)."""
    from nemotron_plugins.preference.data import prompt_ids, reply_ids

    out: list[EncodedPair] = []
    too_long = 0
    for pair in pairs:
        prompt = prompt_ids(tokenizer, pair.messages, template)
        chosen = prompt + reply_ids(tokenizer, pair.chosen)
        rejected = prompt + reply_ids(tokenizer, pair.rejected)
        if max(len(chosen), len(rejected)) > max_length:
            too_long += 1
            continue
        out.append(
            EncodedPair(
                chosen=chosen,
                rejected=rejected,
                prompt_length=len(prompt),
                chosen_reward=math.nan if pair.chosen_reward is None else pair.chosen_reward,
                rejected_reward=math.nan if pair.rejected_reward is None else pair.rejected_reward,
                margin=pair.margin or 0.0,
            )
        )
    return out, too_long


def step_width(pairs: Sequence[EncodedPair]) -> int:
    """The model-input width of a step: its longest sequence minus one (inputs drop the last token, targets the
    first), rounded up to :data:`PAD_MULTIPLE`."""
    longest = max(max(len(p.chosen), len(p.rejected)) for p in pairs) - 1
    return max(PAD_MULTIPLE, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def collate_pairs(pairs: Sequence[EncodedPair], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of ``m`` pairs (see the module docstring).

    Returns:
        ``input_ids`` / ``targets`` ``[2m, width]`` (inputs: tokens without the last; targets: the next tokens),
        ``position_ids``, ``reply_mask`` (1 where the target is a reply token, end-of-turn included), ``last_index``
        ``[2m]`` (the input position of each sequence's last token, whose hidden state a reward model reads),
        ``rewards`` ``[2m]`` (NaN where none) and ``margin`` ``[m]``.
    """
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompt = [p.prompt_length for p in pairs] * 2
    n = len(seqs)
    ids = torch.full((n, width + 1), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width)
    last = torch.zeros(n, dtype=torch.long)
    for r, (seq, plen) in enumerate(zip(seqs, prompt, strict=True)):
        ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[r, plen - 1 : len(seq) - 1] = 1.0
        last[r] = len(seq) - 1
    # A reward model reads the hidden state AT the last token, i.e. input position len - 1 of the full sequence;
    # the inputs are ids[:, :width], so a sequence of exactly width + 1 tokens has its last token cut: widen.
    return {
        "input_ids": ids[:, :width].contiguous(),
        "full_ids": ids,
        "targets": ids[:, 1:].contiguous(),
        "position_ids": torch.arange(width).unsqueeze(0).expand(n, width),
        "reply_mask": mask,
        "last_index": last,
        "rewards": torch.tensor([p.chosen_reward for p in pairs] + [p.rejected_reward for p in pairs]),
        "margin": torch.tensor([p.margin for p in pairs]),
    }


def reward_width(pairs: Sequence[EncodedPair]) -> int:
    """Model-input width for a reward model, which reads every token (the last one included)."""
    longest = max(max(len(p.chosen), len(p.rejected)) for p in pairs)
    return max(PAD_MULTIPLE, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def reward_micro_batch(pairs: Sequence[EncodedPair], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """A reward-model micro-batch: whole sequences as ``input_ids`` ``[2m, width]`` and ``last_index``."""
    mb = collate_pairs(pairs, width, pad_id)
    return {
        "input_ids": mb["full_ids"][:, :width].contiguous(),
        "position_ids": mb["position_ids"],
        "last_index": mb["last_index"],
        "margin": mb["margin"],
    }


def split_micro_batches(
    pairs: Sequence[EncodedPair], micro: int, pad_id: int, *, for_reward_model: bool
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Cut ``pairs`` into micro-batches of ``micro`` pairs at one common width; ``(micro-batches, width)``."""
    if not pairs:
        return [], PAD_MULTIPLE
    width = reward_width(pairs) if for_reward_model else step_width(pairs)
    make = reward_micro_batch if for_reward_model else collate_pairs
    return [make(pairs[i : i + micro], width, pad_id) for i in range(0, len(pairs), micro)], width


def epoch_order(num_items: int, step: int, batch: int, seed: int) -> list[int]:
    """Item indices of the batch of 0-based ``step``: seeded permutations per epoch, concatenated."""
    out: list[int] = []
    start = step * batch
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out.extend(perm[offset : offset + batch - len(out)])
    return out
