"""A plain-PyTorch forward pass of a DeciLM ("nemotron-nas") decoder, written from the architecture description.

This is a test oracle: it reads an HF-format state dict and an HF ``config.json`` dict directly and shares no code
with ``nemotron_plugins``. Description followed (SYSTEM.md section 1 and the Llama architecture):

- tokens -> ``model.embed_tokens``; then per layer, each sub-block is ``x = x + f(RMSNorm(x))`` unless it is a no-op
  (then it is the identity: no norm, no weights);
- attention: either GQA with RoPE (HF rotate-half convention, causal softmax, ``num_attention_heads //
  n_heads_in_group`` or ``num_key_value_heads`` KV heads per layer) or a bias-free hidden->hidden linear
  (``self_attn.linear_attn``);
- FFN: either SwiGLU ``down(silu(gate(x)) * up(x))`` of a per-layer width, or a bias-free linear (``mlp.linear_mlp``);
- final RMSNorm ``model.norm``, then ``lm_head`` (or the embedding matrix when ``tie_word_embeddings``).

RMSNorm: ``w * x / sqrt(mean(x^2) + eps)`` computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in float32."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (weight.float() * normed).to(x.dtype)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables [seq, head_dim] for rotate-half RoPE (frequency i pairs dims i and i + head_dim / 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def gqa_attention(
    x: torch.Tensor, w: Mapping[str, torch.Tensor], prefix: str, num_heads: int, head_dim: int, theta: float
) -> torch.Tensor:
    """Causal grouped-query attention; KV heads are read off the k_proj shape."""
    b, s, _ = x.shape
    wq, wk, wv, wo = (w[f"{prefix}{n}_proj.weight"] for n in "qkvo")
    num_kv = wk.shape[0] // head_dim
    q = (x @ wq.T).view(b, s, num_heads, head_dim).transpose(1, 2)
    k = (x @ wk.T).view(b, s, num_kv, head_dim).transpose(1, 2)
    v = (x @ wv.T).view(b, s, num_kv, head_dim).transpose(1, 2)
    cos, sin = rope_cos_sin(s, head_dim, theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    group = num_heads // num_kv
    k = k.repeat_interleave(group, dim=1)  # query head h uses KV head h // group
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(b, s, num_heads * head_dim) @ wo.T


def swiglu(x: torch.Tensor, w: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))``."""
    gate = x @ w[prefix + "gate_proj.weight"].T
    up = x @ w[prefix + "up_proj.weight"].T
    return (gate * torch.sigmoid(gate) * up) @ w[prefix + "down_proj.weight"].T


def _block_kinds(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    blocks = config.get("block_configs")
    if blocks is None:  # plain Llama
        return [("gqa", "swiglu")] * config["num_hidden_layers"]
    kinds = []
    for blk in blocks:
        a, f = blk["attention"], blk["ffn"]
        attn = "no_op" if a.get("no_op") else "linear" if a.get("replace_with_linear") else "gqa"
        ffn = "no_op" if f.get("no_op") else "linear" if f.get("replace_with_linear") else "swiglu"
        kinds.append((attn, ffn))
    return kinds


def decilm_forward(
    weights: Mapping[str, torch.Tensor], config: Mapping[str, Any], input_ids: torch.Tensor
) -> torch.Tensor:
    """Logits [batch, seq, vocab] of a DeciLM / Llama model given HF weights and the HF config dict."""
    rope = dict(config.get("rope_parameters") or {})  # transformers 5 spelling
    if config.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise NotImplementedError("the reference implements plain RoPE only")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    eps = config.get("rms_norm_eps", 1e-6)
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    x = weights["model.embed_tokens.weight"][input_ids]
    for i, (attn, ffn) in enumerate(_block_kinds(config)):
        p = f"model.layers.{i}."
        if attn == "no_op":
            assert p + "input_layernorm.weight" not in weights, f"layer {i}: a no-op attention has no norm"
        else:
            h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
            if attn == "linear":
                x = x + h @ weights[p + "self_attn.linear_attn.weight"].T
            else:
                x = x + gqa_attention(h, weights, p + "self_attn.", heads, head_dim, theta)
        if ffn == "no_op":
            assert p + "post_attention_layernorm.weight" not in weights, f"layer {i}: a no-op FFN has no norm"
        else:
            h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
            if ffn == "linear":
                x = x + h @ weights[p + "mlp.linear_mlp.weight"].T
            else:
                x = x + swiglu(h, weights, p + "mlp.")
    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = weights["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else weights["lm_head.weight"]
    return x @ head.T
