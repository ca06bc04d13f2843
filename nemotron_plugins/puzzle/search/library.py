"""Stage 1, the replacement library: child sub-blocks initialised from the parent's weights.

Per parent layer, attention and FFN variants separately ("decoupled", as Puzzle builds them):

* FFN widths by channel-contribution pruning: channel ``k`` of layer ``i`` scores ``mean_tokens |X_k| *
  ||W_down[:, k]||`` (``X``: the SwiGLU intermediate ``silu(gate h) * up h`` on calibration tokens; HF's ``down_proj``
  is ``[hidden, width]``, so its column ``k`` is the channel's output vector); the top channels are kept, in their
  original order;
* attention with fewer KV heads by mean-pooling: new KV head ``m`` is the mean of the parent KV heads whose query
  heads now share it (queries and ``o_proj`` unchanged);
* linear replacements: attention as ``W_o W_v`` (the attention output when every token attends only to itself,
  KV heads expanded to their query heads), FFN as ``W_down W_up`` (the SwiGLU with its gate dropped); each keeps the
  parent's pre-norm weight;
* no-ops (no weights).

A variant is ``(name, sub-block config, {hf tensor suffix: tensor})`` with suffixes relative to ``model.layers.N.``,
so swapping it into the parent is a dict update (:func:`substitute`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, PuzzleModelConfig
from nemotron_plugins.puzzle.search.hf_forward import Capture, forward

__all__ = [
    "LibraryError",
    "Variant",
    "attention_variants",
    "build_library",
    "channel_contributions",
    "ffn_variants",
    "substitute",
]


class LibraryError(ValueError):
    """A variant that cannot be built from this parent (KV heads that do not divide, a width above the parent's)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Variant:
    """One child sub-block for one layer."""

    layer: int
    """Parent layer index."""
    part: str
    """``"attention"`` or ``"ffn"``."""
    name: str
    """e.g. ``gqa2``, ``linear``, ``no_op``, ``swiglu512``."""
    attention: AttentionConfig | None = None
    """The config when ``part == "attention"``."""
    ffn: FFNConfig | None = None
    """The config when ``part == "ffn"``."""
    tensors: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """HF tensors by suffix after ``model.layers.N.`` (empty for a no-op)."""


_ATTN_KEYS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.linear_attn.weight",
)
_FFN_KEYS = (
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "mlp.linear_mlp.weight",
)


@torch.no_grad()
def channel_contributions(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], calibration: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Per SwiGLU layer, ``mean_tokens |X_k| * ||W_down[:, k]||`` for every intermediate channel ``k``."""
    layers = [i for i, b in enumerate(cfg.blocks) if b.ffn.kind == "swiglu"]
    cap = Capture(layers=set(layers))
    forward(cfg, weights, calibration, capture=cap)
    out = {}
    for i in layers:
        act = cap.ffn_act[i].abs().flatten(0, -2).mean(dim=0)
        out[i] = act * weights[f"model.layers.{i}.mlp.down_proj.weight"].norm(dim=0)
    return out


def ffn_variants(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    layer: int,
    widths: Sequence[int],
    contributions: torch.Tensor | None,
) -> list[Variant]:
    """SwiGLU variants of ``widths`` (pruned by ``contributions``), a linear FFN and a no-op for ``layer``."""
    block = cfg.blocks[layer]
    p = f"model.layers.{layer}."
    out = []
    if block.ffn.kind == "swiglu":
        norm = weights[p + "post_attention_layernorm.weight"]
        gate, up, down = (weights[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        for width in widths:
            if not 0 < width <= block.ffn.intermediate_size:
                raise LibraryError(
                    f"layer {layer}: FFN width {width} must be in 1..{block.ffn.intermediate_size} (the parent's)"
                )
            keep = torch.topk(contributions, width).indices.sort().values
            out.append(
                Variant(
                    layer=layer,
                    part="ffn",
                    name=f"swiglu{width}",
                    ffn=FFNConfig.swiglu(width),
                    tensors={
                        "post_attention_layernorm.weight": norm.clone(),
                        "mlp.gate_proj.weight": gate[keep].clone(),
                        "mlp.up_proj.weight": up[keep].clone(),
                        "mlp.down_proj.weight": down[:, keep].clone(),
                    },
                )
            )
        out.append(
            Variant(
                layer=layer,
                part="ffn",
                name="linear",
                ffn=FFNConfig.linear(),
                tensors={"post_attention_layernorm.weight": norm.clone(), "mlp.linear_mlp.weight": down @ up},
            )
        )
    out.append(Variant(layer=layer, part="ffn", name="no_op", ffn=FFNConfig.no_op()))
    return out


def attention_variants(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], layer: int, kv_heads: Sequence[int]
) -> list[Variant]:
    """GQA variants with ``kv_heads`` (mean-pooled), a linear attention (``W_o W_v``) and a no-op for ``layer``."""
    block = cfg.blocks[layer]
    p = f"model.layers.{layer}."
    out = []
    if block.attention.kind == "gqa":
        parent_kv, heads, dim = block.attention.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim
        norm = weights[p + "input_layernorm.weight"]
        wq, wk, wv, wo = (weights[p + f"self_attn.{n}_proj.weight"] for n in "qkvo")
        for kv in kv_heads:
            if kv > parent_kv or parent_kv % kv:
                raise LibraryError(
                    f"layer {layer}: {kv} KV heads cannot be pooled from the parent's {parent_kv} (must divide it)"
                )
            group = parent_kv // kv
            k = wk.view(kv, group, dim, -1).mean(dim=1).reshape(kv * dim, -1)
            v = wv.view(kv, group, dim, -1).mean(dim=1).reshape(kv * dim, -1)
            out.append(
                Variant(
                    layer=layer,
                    part="attention",
                    name=f"gqa{kv}",
                    attention=AttentionConfig.gqa(kv),
                    tensors={
                        "input_layernorm.weight": norm.clone(),
                        "self_attn.q_proj.weight": wq.clone(),
                        "self_attn.k_proj.weight": k,
                        "self_attn.v_proj.weight": v,
                        "self_attn.o_proj.weight": wo.clone(),
                    },
                )
            )
        v_heads = wv.view(parent_kv, dim, -1).repeat_interleave(heads // parent_kv, dim=0).reshape(heads * dim, -1)
        out.append(
            Variant(
                layer=layer,
                part="attention",
                name="linear",
                attention=AttentionConfig.linear(),
                tensors={"input_layernorm.weight": norm.clone(), "self_attn.linear_attn.weight": wo @ v_heads},
            )
        )
    out.append(Variant(layer=layer, part="attention", name="no_op", attention=AttentionConfig.no_op()))
    return out


def build_library(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    calibration: torch.Tensor,
    *,
    ffn_fractions: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
    kv_heads: Sequence[int] | None = None,
    contributions: Mapping[int, torch.Tensor] | None = None,
) -> list[Variant]:
    """Every variant of every layer.

    Args:
        cfg: the parent architecture.
        weights: its HF tensors.
        calibration: token ids ``[batch, seq]`` for the channel contributions.
        ffn_fractions: FFN widths as fractions of each parent layer's width (rounded, at least 1).
        kv_heads: KV-head counts to pool to (default: the divisors of each layer's KV heads).
        contributions: Channel contributions per SwiGLU layer computed elsewhere (e.g. on Megatron:
            :func:`~nemotron_plugins.puzzle.search.parallel.channel_contributions_megatron`); default: computed here
            with the plain-torch forward on ``calibration``.

    Returns:
        Attention and FFN variants, layer by layer.
    """
    if contributions is None:
        contributions = channel_contributions(cfg, weights, calibration)
    out = []
    for i, block in enumerate(cfg.blocks):
        if block.attention.kind == "gqa":
            parent_kv = block.attention.num_key_value_heads
            choices = kv_heads if kv_heads is not None else [d for d in range(parent_kv, 0, -1) if parent_kv % d == 0]
            out += attention_variants(cfg, weights, i, [k for k in choices if k <= parent_kv and parent_kv % k == 0])
        else:
            out += attention_variants(cfg, weights, i, [])
        widths: list[int] = []
        if block.ffn.kind == "swiglu":
            width = block.ffn.intermediate_size
            widths = sorted({max(1, round(width * f)) for f in ffn_fractions}, reverse=True)
        out += ffn_variants(cfg, weights, i, widths, contributions.get(i))
    return out


def substitute(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], variants: Sequence[Variant]
) -> tuple[PuzzleModelConfig, dict[str, torch.Tensor]]:
    """The parent with ``variants`` swapped in (config and HF tensors)."""
    blocks = list(cfg.blocks)
    out = dict(weights)
    for var in variants:
        p = f"model.layers.{var.layer}."
        block = blocks[var.layer]
        keys = _ATTN_KEYS if var.part == "attention" else _FFN_KEYS
        for key in keys:
            out.pop(p + key, None)
        for key, tensor in var.tensors.items():
            out[p + key] = tensor
        if var.part == "attention":
            blocks[var.layer] = BlockConfig(attention=var.attention, ffn=block.ffn)
        else:
            blocks[var.layer] = BlockConfig(attention=block.attention, ffn=var.ffn)
    return dataclasses.replace(cfg, blocks=tuple(blocks)), out
