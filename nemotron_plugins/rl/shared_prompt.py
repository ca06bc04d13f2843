"""Shared-prompt micro-batches: a GRPO group's prompt runs through the policy once, not once per completion.

The ``n`` completions of a group share their prompt token for token, and under causal attention the prompt's hidden
states do not depend on what follows, so the padded layout (one row per completion, prompt repeated) computes every
prompt position ``n`` times. The shared layout puts one row per group in the micro-batch::

    tokens     p_0 .. p_{P-1} | c1_0 .. c1_{L1-2} | c2_0 .. c2_{L2-2} | ... | padding
    positions  0   .. P-1     | P    .. P+L1-2   | P    .. P+L2-2   | ... | 0
    attends    causal prompt  | prompt + own causal prefix           | ...

Each completion segment sees the whole prompt and its own earlier tokens and nothing of its siblings, at the same
positions as in its own row, so every completion token's logits equal the padded layout's (same operations on the
same inputs; only floating-point summation order differs, pinned to 1e-5 in the tests). A completion's first token
is predicted by the prompt's last position, which the group's segments share; the log-probs are gathered per
(row, column) of the loss layout, so the loss, its gradient and the optimizer step are unchanged. The prompt's
gradient is the sum of its completions' contributions, as in the padded layout.

What it needs and what picks it:

* a boolean attention mask reaching core attention (``SDPACoreAttention``, the non-TE default; not packed rows, not
  context parallelism) and positions reaching RoPE (megatron's ``GPTModel`` computes rotary embeddings for
  ``0 .. S-1`` and ignores ``position_ids``; :func:`rope_at_positions` gathers them at the given positions for one
  forward call), so it is used on one pipeline stage (PP needs one communication shape per micro-batch);
* ``algorithm.prompt_sharing``: ``"auto"`` (default) takes it per micro-batch when :func:`layout_cost` says it is
  cheaper (long prompts, short completions: tool calling, chat, the tiny tasks), ``"on"`` always where supported
  (an error naming the field elsewhere), ``"off"`` never.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "SharedPromptLayout",
    "layout_cost",
    "rope_at_positions",
    "shared_prompt_layout",
    "shared_prompt_shape",
    "shared_prompt_support",
]


class SharedPromptLayout(dict):
    """Model inputs of one shared-prompt micro-batch (a ``dict`` merged into the micro-batch).

    Keys: ``input_ids`` / ``position_ids`` ``[G, S]`` (one row per group), ``attention_mask`` ``[G, 1, S, S]``
    (``True`` = masked, megatron's convention), ``gather`` = ``(rows, cols, src)``: loss-layout token ``(rows[k],
    cols[k])`` is predicted by flattened output position ``src[k]``.
    """


def _groups(batch: Any, idx: torch.Tensor) -> list[tuple[int, list[int]]]:
    """``(prompt length, rows)`` per distinct prompt among ``idx`` (first-seen order)."""
    found: dict[tuple[int, ...], list[int]] = {}
    plens: dict[tuple[int, ...], int] = {}
    for r in idx.tolist():
        plen = int(batch.prompt_lengths[r])
        key = tuple(batch.input_ids[r, :plen].tolist())
        found.setdefault(key, []).append(r)
        plens[key] = plen
    return [(plens[k], rows) for k, rows in found.items()]


def _round_up(width: int, multiple: int) -> int:
    return max(multiple, -(-width // multiple) * multiple)


def shared_prompt_shape(batch: Any, idx: torch.Tensor, *, multiple: int = 8) -> tuple[int, int]:
    """``(rows, width)`` of :func:`shared_prompt_layout`'s inputs for the same arguments, without building them
    (the ``[G, 1, S, S]`` mask grows with the square of the width: the cost comparison comes first)."""
    groups = _groups(batch, idx)
    widths = [plen + sum(max(0, int(batch.lengths[r]) - plen) for r in members) for plen, members in groups]
    return len(groups), _round_up(max(widths), multiple)


def shared_prompt_layout(batch: Any, idx: torch.Tensor, *, multiple: int = 8) -> SharedPromptLayout:
    """The shared-prompt inputs of the micro-batch of ``batch`` rows ``idx`` (loss-layout row ``k`` = ``idx[k]``).

    Args:
        batch: A :class:`~nemotron_plugins.rl.policy_worker.PolicyBatch` with ``prompt_lengths``.
        idx: Row indices of the micro-batch.
        multiple: Row width rounded up to a multiple of this.
    """
    if batch.prompt_lengths is None:
        raise ValueError("shared-prompt micro-batches need PolicyBatch.prompt_lengths (pack_policy_batch sets it)")
    local = {r: k for k, r in enumerate(idx.tolist())}
    rows_tok: list[list[int]] = []
    rows_pos: list[list[int]] = []
    rows_seg: list[list[int]] = []
    gather_rows: list[int] = []
    gather_cols: list[int] = []
    gather_src: list[int] = []  # offset in the group's row
    gather_group: list[int] = []
    groups = _groups(batch, idx)
    for g, (plen, members) in enumerate(groups):
        if plen < 1:
            raise ValueError("shared-prompt micro-batches need prompts of at least one token")
        tokens = batch.input_ids[members[0], :plen].tolist()
        positions = list(range(plen))
        segments = [0] * plen
        for s, r in enumerate(members, start=1):
            own = int(batch.lengths[r]) - plen  # completion tokens fed (the last one is only a target)
            if own < 0:
                continue  # an empty completion: nothing to predict
            start = len(tokens)
            tokens += batch.input_ids[r, plen : plen + own].tolist()
            positions += list(range(plen, plen + own))
            segments += [s] * own
            # target column plen - 1 (the first completion token) comes from the prompt's last position, the
            # following ones from the segment's own positions
            cols = list(range(plen - 1, plen + own))
            srcs = [plen - 1, *range(start, start + own)]
            keep = [(c, x) for c, x in zip(cols, srcs, strict=True) if float(batch.mask[r, c]) > 0]
            gather_rows += [local[r]] * len(keep)
            gather_cols += [c for c, _ in keep]
            gather_src += [x for _, x in keep]
            gather_group += [g] * len(keep)
        rows_tok.append(tokens)
        rows_pos.append(positions)
        rows_seg.append(segments)
    width = _round_up(max(len(t) for t in rows_tok), multiple)
    n_groups = len(groups)
    ids = torch.zeros(n_groups, width, dtype=torch.long)
    pos = torch.zeros(n_groups, width, dtype=torch.long)
    seg = torch.full((n_groups, width), -1, dtype=torch.long)
    for g, (t, p, s) in enumerate(zip(rows_tok, rows_pos, rows_seg, strict=True)):
        ids[g, : len(t)] = torch.tensor(t)
        pos[g, : len(p)] = torch.tensor(p)
        seg[g, : len(s)] = torch.tensor(s)
    # allowed(i, j): j <= i and (j is a prompt position or j is in i's segment); padding attends to itself only
    q = torch.arange(width)
    causal = q[None, :] <= q[:, None]  # [S(query), S(key)]
    same = seg[:, :, None] == seg[:, None, :]
    prompt_key = (seg == 0)[:, None, :]
    real_query = (seg >= 0)[:, :, None]
    allowed = causal[None] & (prompt_key | same) & real_query
    allowed |= torch.eye(width, dtype=torch.bool)[None]
    src = torch.tensor(gather_src, dtype=torch.long) + torch.tensor(gather_group, dtype=torch.long) * width
    return SharedPromptLayout(
        input_ids=ids,
        position_ids=pos,
        attention_mask=~allowed.unsqueeze(1),
        gather=(torch.tensor(gather_rows, dtype=torch.long), torch.tensor(gather_cols, dtype=torch.long), src),
    )


def layout_cost(rows: int, width: int, *, hidden_size: int, dense_mask: bool) -> float:
    """Relative forward cost of ``rows`` x ``width`` positions: ``tokens + attention pairs / (6 * hidden)``.

    A token costs ~``24 h^2`` multiply-adds per layer in its linear layers, an attended (query, key) pair ``4 h``
    (scores and the weighted sum), so a pair is ``1 / (6 h)`` of a token. Causal attention without a mask visits
    about half the pairs (the kernels skip masked blocks); a dense boolean mask makes every pair count.
    """
    if hidden_size <= 0:
        raise ValueError(f"layout_cost needs the model's hidden size (> 0), got {hidden_size}")
    pairs = rows * width * width * (1.0 if dense_mask else 0.5)
    return rows * width + pairs / (6.0 * hidden_size)


def shared_prompt_support(model: Any) -> str | None:
    """``None`` when ``model`` can run shared-prompt micro-batches, else why not (one sentence)."""
    from nemotron_plugins.puzzle.attention import non_sdpa_core_attention
    from nemotron_plugins.puzzle.model import unwrap_model

    module = unwrap_model(model)
    kind = getattr(module, "position_embedding_type", None)
    if kind not in ("rope", "learned_absolute", "none"):
        return f"position embeddings {kind!r} (needs 'rope', 'learned_absolute' or 'none')"
    if kind == "rope" and getattr(module.config, "apply_rope_fusion", False):
        return "fused RoPE (model.apply_rope_fusion) takes no per-row positions"
    other = non_sdpa_core_attention(module)
    if other is not None:
        return f"{other} is not SDPACoreAttention (the mask must reach attention)"
    return None


@contextlib.contextmanager
def rope_at_positions(model: Any, positions: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model``'s rotary embedding is taken at ``positions [b, s]`` (per row) instead of
    ``0 .. s-1``: megatron's ``RotaryEmbedding`` output ``[L, 1, 1, d]`` gathered to ``[s, b, 1, d]``, which its
    unfused ``apply_rotary_pos_emb`` broadcasts over the heads. No-op for models without RoPE."""
    from nemotron_plugins.puzzle.model import unwrap_model

    module = unwrap_model(model)
    rope = getattr(module, "rotary_pos_emb", None)
    if getattr(module, "position_embedding_type", None) != "rope" or rope is None:
        yield
        return
    original = type(rope).forward

    def forward(max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group: Any = None) -> torch.Tensor:
        emb = original(rope, int(positions.max()) + 1, offset, packed_seq, cp_group)  # [L, 1, 1, d]
        return emb[:, 0][positions.t().to(emb.device)]  # [s, b, 1, d]

    rope.forward = forward
    try:
        yield
    finally:
        del rope.forward
