"""A plain-PyTorch forward of a Puzzle (DeciLM) model straight from its HF tensors, for the search stages.

The search measures things a training forward does not expose: each sub-block's input and output, the SwiGLU
intermediate activations, the model with one block removed, a run of FFN blocks evaluated in parallel form. It runs
in any dtype (float64 for exactness checks) on one process; the weights are the ``{hf_name: tensor}`` of
:mod:`nemotron_plugins.puzzle.hf_checkpoint`. Semantics (per layer ``x = x + f(RMSNorm(x))`` per non-no-op sub-block,
GQA with rotate-half RoPE, SwiGLU, linear replacements) are those of the HF DeciLM modeling code; the functional
tests check this forward against an independent reference.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig

__all__ = ["Capture", "ForwardError", "embed", "forward", "lm_head", "run_layers"]


class ForwardError(ValueError):
    """A config or weight set this forward cannot run (missing tensor, RoPE scaling, attention in a parallel run)."""


@dataclass(slots=True)
class Capture:
    """What :func:`run_layers` records, by layer index (only for the layers listed in ``layers``)."""

    layers: Collection[int]
    """Layers to record."""
    attn_input: dict[int, torch.Tensor] = field(default_factory=dict)
    """Residual stream entering the attention sub-block."""
    attn_output: dict[int, torch.Tensor] = field(default_factory=dict)
    """What the attention sub-block adds to the residual stream."""
    ffn_input: dict[int, torch.Tensor] = field(default_factory=dict)
    """Residual stream entering the FFN sub-block."""
    ffn_output: dict[int, torch.Tensor] = field(default_factory=dict)
    """What the FFN sub-block adds to the residual stream."""
    ffn_act: dict[int, torch.Tensor] = field(default_factory=dict)
    """SwiGLU intermediate ``silu(gate h) * up h`` (``[..., width]``)."""


def _w(weights: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise ForwardError(f"weight {name!r} is missing from the HF tensors") from None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)`` in ``x``'s dtype."""
    return weight.to(x.dtype) * x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    seq, dim = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    half = dim // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def attention(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], layer: int, h: torch.Tensor
) -> torch.Tensor:
    """The attention sub-block's contribution for normalised input ``h`` ``[batch, seq, hidden]`` (no residual)."""
    p = f"model.layers.{layer}.self_attn."
    attn = cfg.blocks[layer].attention
    if attn.kind == "linear":
        return F.linear(h, _w(weights, p + "linear_attn.weight"))
    b, s, _ = h.shape
    heads, dim, kv = cfg.num_attention_heads, cfg.head_dim, attn.num_key_value_heads
    q = F.linear(h, _w(weights, p + "q_proj.weight")).view(b, s, heads, dim).transpose(1, 2)
    k = F.linear(h, _w(weights, p + "k_proj.weight")).view(b, s, kv, dim).transpose(1, 2)
    v = F.linear(h, _w(weights, p + "v_proj.weight")).view(b, s, kv, dim).transpose(1, 2)
    q, k = _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta)
    k = k.repeat_interleave(heads // kv, dim=1)
    v = v.repeat_interleave(heads // kv, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim)
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool, device=h.device).triu(1), float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, s, heads * dim)
    return F.linear(out, _w(weights, p + "o_proj.weight"))


def ffn(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], layer: int, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The FFN sub-block's contribution for normalised input ``h`` and its SwiGLU intermediate (``None`` if linear)."""
    p = f"model.layers.{layer}.mlp."
    if cfg.blocks[layer].ffn.kind == "linear":
        return F.linear(h, _w(weights, p + "linear_mlp.weight")), None
    act = F.silu(F.linear(h, _w(weights, p + "gate_proj.weight"))) * F.linear(h, _w(weights, p + "up_proj.weight"))
    return F.linear(act, _w(weights, p + "down_proj.weight")), act


def embed(cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings ``[batch, seq, hidden]``."""
    if cfg.rope_scaling:
        raise ForwardError(
            f"rope_scaling {dict(cfg.rope_scaling)!r} is not implemented by the search forward (plain RoPE only)"
        )
    return _w(weights, "model.embed_tokens.weight")[input_ids]


def lm_head(cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Final norm and output projection: logits ``[batch, seq, vocab]``."""
    x = rms_norm(x, _w(weights, "model.norm.weight"), cfg.rms_norm_eps)
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    return F.linear(x, _w(weights, head))


def run_layers(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    layers: Sequence[int] | range,
    *,
    drop: Collection[int] = (),
    parallel_runs: Sequence[range] = (),
    capture: Capture | None = None,
) -> torch.Tensor:
    """Run ``layers`` (in order) on the residual stream ``x``.

    Args:
        cfg: the architecture of ``weights``.
        weights: HF tensors.
        x: residual stream entering ``layers[0]``.
        layers: the layers to run.
        drop: layers replaced by the identity (whole block removed).
        parallel_runs: runs of consecutive attention-free layers evaluated in FFN Fusion's parallel form
            ``x + sum_j FFN_j(norm_j(x))`` (the run's first layer must be in ``layers``).
        capture: records sub-block inputs / outputs.

    Returns:
        The residual stream after the last layer.
    """
    eps = cfg.rms_norm_eps
    run_at = {run.start: run for run in parallel_runs}
    in_run = {layer for run in parallel_runs for layer in run[1:]}
    for run in parallel_runs:
        for layer in run:
            if cfg.blocks[layer].attention.kind != "no_op":
                raise ForwardError(
                    f"parallel run {run!r}: layer {layer} has a {cfg.blocks[layer].attention.kind} attention"
                )
    for i in layers:
        if i in drop or i in in_run:
            continue
        record = capture is not None and i in capture.layers
        if i in run_at:
            total = torch.zeros_like(x)
            for j in run_at[i]:
                if j in drop or cfg.blocks[j].ffn.kind == "no_op":
                    continue
                out, _ = ffn(
                    cfg, weights, j, rms_norm(x, _w(weights, f"model.layers.{j}.post_attention_layernorm.weight"), eps)
                )
                total = total + out
            x = x + total
            continue
        block = cfg.blocks[i]
        p = f"model.layers.{i}."
        if block.attention.kind != "no_op":
            if record:
                capture.attn_input[i] = x
            out = attention(cfg, weights, i, rms_norm(x, _w(weights, p + "input_layernorm.weight"), eps))
            if record:
                capture.attn_output[i] = out
            x = x + out
        if block.ffn.kind != "no_op":
            if record:
                capture.ffn_input[i] = x
            out, act = ffn(cfg, weights, i, rms_norm(x, _w(weights, p + "post_attention_layernorm.weight"), eps))
            if record:
                capture.ffn_output[i] = out
                if act is not None:
                    capture.ffn_act[i] = act
            x = x + out
    return x


def forward(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
    *,
    drop: Collection[int] = (),
    parallel_runs: Sequence[range] = (),
    capture: Capture | None = None,
) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` of the whole model (see :func:`run_layers` for the options)."""
    x = embed(cfg, weights, input_ids)
    x = run_layers(
        cfg, weights, x, range(cfg.num_hidden_layers), drop=drop, parallel_runs=parallel_runs, capture=capture
    )
    return lm_head(cfg, weights, x)
