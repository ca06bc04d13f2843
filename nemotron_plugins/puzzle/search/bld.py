"""Stage 2, decoupled blockwise local distillation (BLD).

Every library variant with weights is trained on its parent sub-block's input to reproduce that sub-block's output,
with the normalised MSE ``MSE(out_parent, out_child) / MSE(out_parent, 0)``. Attention and FFN variants are trained
separately ("decoupled"); one parent forward per batch captures the inputs and outputs of every layer, and every
variant takes a step on that batch, so all blocks train in one pass over the data. Runs in plain PyTorch on one
process, on the HF tensors (:mod:`nemotron_plugins.puzzle.search.hf_forward`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
from nemotron_plugins.puzzle.search import hf_forward
from nemotron_plugins.puzzle.search.library import Variant, substitute

__all__ = ["blockwise_distill", "evaluate", "normalized_mse"]


def normalized_mse(parent_out: torch.Tensor, child_out: torch.Tensor) -> torch.Tensor:
    """``MSE(parent, child) / MSE(parent, 0)``."""
    return (parent_out - child_out).pow(2).mean() / parent_out.pow(2).mean().clamp_min(1e-30)


def _child_out(
    cfg: PuzzleModelConfig, child_w: Mapping[str, torch.Tensor], var: Variant, x: torch.Tensor
) -> torch.Tensor:
    norm = var.tensors["input_layernorm.weight" if var.part == "attention" else "post_attention_layernorm.weight"]
    h = hf_forward.rms_norm(x, norm, cfg.rms_norm_eps)
    if var.part == "attention":
        return hf_forward.attention(cfg, child_w, var.layer, h)
    return hf_forward.ffn(cfg, child_w, var.layer, h)[0]


def blockwise_distill(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    variants: Sequence[Variant],
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[list[Variant], dict[str, tuple[float, float]]]:
    """Train every variant with weights on the parent's block inputs (decoupled BLD).

    Args:
        cfg: the parent.
        weights: its HF tensors (not modified).
        variants: the library.
        tokens: training token ids ``[n, seq]`` (kept apart from the held-out scoring tokens).
        batch_size: sequences per step.
        epochs: passes over ``tokens``.
        lr: Adam learning rate.
        seed: shuffling seed.

    Returns:
        The trained variants (same order; no-ops unchanged) and, per variant ``"layer.part.name"``, the normalised
        MSE on the first batch before training and after the last step.
    """
    trained = []
    for var in variants:
        params = {k: t.detach().clone().requires_grad_(True) for k, t in var.tensors.items()}
        trained.append(dataclasses.replace(var, tensors=params))
    active = [v for v in trained if v.tensors]
    children = [substitute(cfg, weights, [v]) for v in active]
    opts = [torch.optim.Adam(list(v.tensors.values()), lr=lr) for v in active]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    layers = {v.layer for v in active}
    for _ in range(epochs):
        order = torch.randperm(tokens.shape[0], generator=gen)
        for start in range(0, tokens.shape[0], batch_size):
            ids = tokens[order[start : start + batch_size]]
            cap = hf_forward.Capture(layers=layers)
            with torch.no_grad():
                hf_forward.forward(cfg, weights, ids, capture=cap)
            for var, (child_cfg, child_w), opt in zip(active, children, opts, strict=True):
                x = (cap.attn_input if var.part == "attention" else cap.ffn_input)[var.layer]
                target = (cap.attn_output if var.part == "attention" else cap.ffn_output)[var.layer]
                # the child's layer tensors are the trainable ones
                prefix = f"model.layers.{var.layer}."
                live = {**child_w, **{prefix + k: t for k, t in var.tensors.items()}}
                loss = normalized_mse(target, _child_out(child_cfg, live, var, x))
                key = f"{var.layer}.{var.part}.{var.name}"
                first.setdefault(key, loss.item())
                last[key] = loss.item()
                opt.zero_grad()
                loss.backward()
                opt.step()
    out = [dataclasses.replace(v, tensors={k: t.detach() for k, t in v.tensors.items()}) for v in trained]
    return out, {k: (first[k], last[k]) for k in first}


@torch.no_grad()
def evaluate(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], variants: Sequence[Variant], tokens: torch.Tensor
) -> dict[str, float]:
    """Normalised MSE of every variant with weights against its parent sub-block on ``tokens`` (one batch)."""
    active = [v for v in variants if v.tensors]
    cap = hf_forward.Capture(layers={v.layer for v in active})
    hf_forward.forward(cfg, weights, tokens, capture=cap)
    out = {}
    for var in active:
        child_cfg, child_w = substitute(cfg, weights, [var])
        x = (cap.attn_input if var.part == "attention" else cap.ffn_input)[var.layer]
        target = (cap.attn_output if var.part == "attention" else cap.ffn_output)[var.layer]
        out[f"{var.layer}.{var.part}.{var.name}"] = float(
            normalized_mse(target, _child_out(child_cfg, child_w, var, x))
        )
    return out
