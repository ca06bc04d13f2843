"""A plain-PyTorch heterogeneous ("Puzzle") causal LM with a KV cache, used as the CPU policy of the GRPO trainer.

Built from a :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig`: every layer has its own attention
(GQA with its own KV-head count, a linear replacement, or no-op) and FFN (SwiGLU of its own width, a linear
replacement, or no-op), RMSNorm pre-norms, rotary position embeddings, untied or tied output layer. The layer kinds
and sizes follow the same semantics as the megatron-core heterogeneous specs in
:mod:`nemotron_plugins.puzzle.layer_specs`.

Why a second implementation: sampling rollouts fast on CPU needs incremental decoding with a KV cache (SYSTEM.md
section 5: 5-10x faster), and the megatron-core rollout engine is not available in this checkout yet. This module
keeps the GRPO trainer runnable end to end on CPU; the trainer only relies on the small :class:`CausalPolicy`
interface (``forward(input_ids, position_ids, attention_mask) -> logits`` and :meth:`PuzzlePolicy.generate`).

Public API::

    PuzzlePolicy(config)                                   # torch.nn.Module
    policy(input_ids, position_ids=None, key_padding_mask=None) -> logits [b, t, vocab]
    policy.generate(prompts, n=..., max_new_tokens=..., temperature=..., eos_token_id=..., generator=...) -> Samples
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PuzzlePolicy", "Samples", "rotary_tables"]


def rotary_tables(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` tables ``[max_positions, head_dim]`` for rotate-half RoPE."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class _GQA(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, cache: dict | None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        rep = self.heads // self.kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class _Linear(nn.Module):
    """Pre-norm + one bias-free hidden->hidden linear (Puzzle's ``replace_with_linear``)."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.linear = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        return self.linear(self.norm(x))


class _SwiGLU(nn.Module):
    def __init__(self, hidden: int, width: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, 2 * width, bias=False)
        self.fc2 = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1(self.norm(x)).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


class _Block(nn.Module):
    def __init__(self, block: Any, cfg: Any) -> None:
        super().__init__()
        hidden, eps = cfg.hidden_size, cfg.rms_norm_eps
        attn, ffn = block.attention, block.ffn
        self.attn_kind, self.ffn_kind = attn.kind, ffn.kind
        if attn.kind == "gqa":
            self.attn = _GQA(hidden, cfg.num_attention_heads, attn.num_key_value_heads, cfg.head_dim, eps)
        elif attn.kind == "linear":
            self.attn = _Linear(hidden, eps)
        if ffn.kind == "swiglu":
            self.ffn = _SwiGLU(hidden, ffn.intermediate_size, eps)
        elif ffn.kind == "linear":
            self.ffn = _Linear(hidden, eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, cache: dict | None
    ) -> torch.Tensor:
        if self.attn_kind == "gqa":
            x = x + self.attn(x, cos, sin, mask, cache)
        elif self.attn_kind == "linear":
            x = x + self.attn(x)
        if self.ffn_kind != "no_op":
            x = x + self.ffn(x)
        return x


@dataclass(slots=True)
class Samples:
    """Sampled completions, ``n`` per prompt, prompt-major."""

    prompt_index: list[int]
    """Index of the prompt each completion belongs to."""
    completion_ids: list[list[int]]
    """Generated token ids (the EOS token included when it was produced)."""
    logprobs: list[list[float]]
    """Generator log-probs of each generated token (of the tempered distribution)."""
    finished: list[bool]
    """Whether the completion ended with EOS (False: cut at ``max_new_tokens``)."""


class PuzzlePolicy(nn.Module):
    """A heterogeneous decoder-only LM from a ``PuzzleModelConfig`` (see the module docstring).

    Args:
        config: The model config (``blocks`` give each layer's attention / FFN kind and size).
        init_std: Standard deviation of the normal weight initialisation.
    """

    def __init__(self, config: Any, *, init_std: float = 0.02) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Block(block, config) for block in config.blocks)
        self.final_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.output = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        cos, sin = rotary_tables(config.head_dim, config.max_position_embeddings, float(config.rope_theta))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, param in self.named_parameters():
            if param.dim() == 2:
                std = (
                    init_std / math.sqrt(2 * len(self.layers))
                    if name.endswith(("proj.weight", "fc2.weight"))
                    else init_std
                )
                nn.init.normal_(param, std=std)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.final_norm(h)
        return h @ self.embed.weight.T if self.output is None else self.output(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        caches: list[dict] | None = None,
        past_key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[b, t, vocab]`` for ``input_ids`` ``[b, t]``.

        Args:
            input_ids: Token ids.
            position_ids: ``[b, t]`` positions (default ``0..t-1``); left-padded batches pass per-row positions.
            key_padding_mask: ``[b, t]`` True for real tokens (False = padding that no query may attend to).
            caches: One dict per layer for incremental decoding; filled / extended in place.
            past_key_padding_mask: ``[b, t_past]`` key mask of the tokens already in ``caches``.
        """
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"position {int(position_ids.max())} >= max_position_embeddings={self.config.max_position_embeddings}"
            )
        cos = self.rope_cos[position_ids].unsqueeze(1)
        sin = self.rope_sin[position_ids].unsqueeze(1)
        keys = torch.ones(b, t, dtype=torch.bool) if key_padding_mask is None else key_padding_mask.bool()
        past = 0 if past_key_padding_mask is None else past_key_padding_mask.shape[1]
        if past:
            keys = torch.cat([past_key_padding_mask.bool(), keys], dim=1)
        causal = torch.ones(t, past + t, dtype=torch.bool).tril(diagonal=past)
        mask = causal.unsqueeze(0) & keys.unsqueeze(1)
        # A fully masked row (a padding query) would give NaN; let it see itself.
        mask = mask | torch.eye(t, past + t, dtype=torch.bool, device=mask.device).roll(past, dims=1).unsqueeze(0)
        mask = mask.unsqueeze(1)
        h = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, None if caches is None else caches[i])
        return self._logits(h)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int = 1,
        max_new_tokens: int,
        temperature: float = 1.0,
        greedy: bool = False,
        eos_token_id: int,
        pad_token_id: int = 0,
        generator: torch.Generator | None = None,
    ) -> Samples:
        """Sample ``n`` completions per prompt with a KV cache (left-padded batch, one forward per new token).

        Args:
            prompts: Token ids of each prompt.
            n: Completions per prompt.
            max_new_tokens: Longest completion.
            temperature: Sampling temperature (> 0); ignored with ``greedy``.
            greedy: Take the arg-max token (log-probs are then of the untempered distribution).
            eos_token_id: Ends a completion (kept in its ids).
            pad_token_id: Fills left padding.
            generator: Source of randomness (reproducible sampling).
        """
        if temperature <= 0 and not greedy:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if n < 1 or not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs n >= 1 and at least one non-empty prompt")
        index = [i for i in range(len(prompts)) for _ in range(n)]
        b, width = len(index), max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
        keymask = torch.zeros(len(prompts), width, dtype=torch.bool)
        for r, row in enumerate(prompts):
            ids[r, width - len(row) :] = torch.tensor(list(row))
            keymask[r, width - len(row) :] = True
        positions = (keymask.long().cumsum(1) - 1).clamp(min=0)
        caches: list[dict] = [{} for _ in self.layers]
        # Prefill each prompt once, then copy its cache to its n samples.
        logits = self(ids, positions, keymask, caches)[:, -1].repeat_interleave(n, dim=0)
        for cache in caches:
            for key in list(cache):
                cache[key] = cache[key].repeat_interleave(n, dim=0)
        next_pos = positions[:, -1].repeat_interleave(n) + 1
        past_mask = keymask.repeat_interleave(n, dim=0)
        out = torch.zeros(b, max_new_tokens, dtype=torch.long)
        out_lp = torch.zeros(b, max_new_tokens)
        done = torch.zeros(b, dtype=torch.bool)
        lengths = torch.full((b,), max_new_tokens, dtype=torch.long)
        temp = 1.0 if greedy else temperature
        for step in range(max_new_tokens):
            logp = torch.log_softmax(logits.float() / temp, dim=-1)
            if greedy:
                token = logp.argmax(-1)
            else:
                token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            out[:, step] = token
            out_lp[:, step] = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
            newly = (~done) & (token == eos_token_id)
            lengths = torch.where(newly, torch.full_like(lengths, step + 1), lengths)
            done = done | newly
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits = self(
                token.unsqueeze(1), next_pos.unsqueeze(1), torch.ones(b, 1, dtype=torch.bool), caches, past_mask
            )
            logits = logits[:, -1]
            past_mask = torch.cat([past_mask, torch.ones(b, 1, dtype=torch.bool)], dim=1)
            next_pos = next_pos + 1
        completion_ids = [out[r, : lengths[r]].tolist() for r in range(b)]
        return Samples(
            prompt_index=index,
            completion_ids=completion_ids,
            logprobs=[out_lp[r, : lengths[r]].tolist() for r in range(b)],
            finished=[bool(lengths[r] <= max_new_tokens and out[r, lengths[r] - 1] == eos_token_id) for r in range(b)],
        )
