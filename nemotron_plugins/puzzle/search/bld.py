"""Stage 2, decoupled blockwise local distillation (BLD).

Every library variant with weights is trained on its parent sub-block's input to reproduce that sub-block's output,
with the normalised MSE ``MSE(out_parent, out_child) / MSE(out_parent, 0)``. Attention and FFN variants are trained
separately ("decoupled"); one parent forward per batch captures the inputs and outputs of every layer, and every
variant takes a step on that batch, so all blocks train in one pass over the data. Runs in plain PyTorch on one
process on the HF tensors (:mod:`nemotron_plugins.puzzle.search.hf_forward`) by default; the CLI captures the
parent's sub-block activations from the Megatron parent at TP x PP, each pipeline stage training the variants of its
own layers, and splits every batch over data-parallel ranks
(:func:`nemotron_plugins.puzzle.search.parallel.blockwise_distill_megatron`). Each variant learns only from its own
parent sub-block's input and output: BLD is embarrassingly parallel over blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

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


EXACT_BELOW = 1e-10
"""A variant whose normalised MSE on the first batch is below this reproduces its parent sub-block (the parent's own
width or KV-head count): it is not trained, since Adam would turn its rounding-level gradients into ``lr``-sized
steps (and different rounding on another parallel layout into different steps)."""

CaptureFn = Callable[[torch.Tensor, set[int]], hf_forward.Capture]
"""``capture(ids, layers)``: the parent's sub-block inputs and outputs of ``layers`` on token rows ``ids``."""


def _reference_capture(cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor]) -> CaptureFn:
    def capture(ids: torch.Tensor, layers: set[int]) -> hf_forward.Capture:
        cap = hf_forward.Capture(layers=layers)
        with torch.no_grad():
            hf_forward.forward(cfg, weights, ids, capture=cap)
        return cap

    return capture


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
    capture: CaptureFn | None = None,
    local_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    all_reduce: Callable[[Sequence[torch.Tensor]], None] | None = None,
) -> tuple[list[Variant], dict[str, tuple[float, float]]]:
    """Train every variant with weights on the parent's block inputs (decoupled BLD).

    The loss of a variant on a batch is the normalised MSE over the whole batch, ``sum (out_parent - out_child)^2 /
    sum out_parent^2``; with data parallelism (``local_rows`` and ``all_reduce``) each rank computes its rows' share
    of the numerator against the batch's all-reduced denominator and the gradients are summed over the ranks, so
    every rank takes the step one process would take on the whole batch. A variant that already reproduces its
    parent sub-block on the first batch (loss below :data:`EXACT_BELOW`) is left as it is.

    Args:
        cfg: the parent.
        weights: its HF tensors (not modified).
        variants: the library.
        tokens: training token ids ``[n, seq]`` (kept apart from the held-out scoring tokens).
        batch_size: sequences per step (over all data-parallel ranks).
        epochs: passes over ``tokens``.
        lr: Adam learning rate.
        seed: shuffling seed.
        capture: the parent's sub-block inputs / outputs on a batch; default: the plain-torch forward of ``weights``
            (:func:`nemotron_plugins.puzzle.search.parallel.capture_megatron` wraps the Megatron parent).
        local_rows: this rank's share of a batch's row indices (default: all of them).
        all_reduce: sums a list of tensors in place over the data-parallel ranks (default: one process, nothing).

    Returns:
        The trained variants (same order; no-ops unchanged) and, per variant ``"layer.part.name"``, the normalised
        MSE on the first batch before training and after the last step.
    """
    capture = capture or _reference_capture(cfg, weights)
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
    targets = sorted({(v.layer, v.part) for v in active})
    exact: set[str] = set()
    for _ in range(epochs):
        order = torch.randperm(tokens.shape[0], generator=gen)
        for start in range(0, tokens.shape[0], batch_size):
            rows = order[start : start + batch_size]
            mine = local_rows(rows) if local_rows is not None else rows
            cap = capture(tokens[mine], layers) if len(mine) else None

            def io(layer: int, part: str, cap: hf_forward.Capture | None = cap) -> tuple[torch.Tensor, torch.Tensor]:
                if part == "attention":
                    return cap.attn_input[layer], cap.attn_output[layer]
                return cap.ffn_input[layer], cap.ffn_output[layer]

            # the batch's denominators sum(out_parent^2) and element counts, summed over the ranks
            norms = torch.zeros(len(targets), 2, dtype=torch.float64)
            if cap is not None:
                for k, (layer, part) in enumerate(targets):
                    target = io(layer, part)[1]
                    norms[k, 0] = float(target.double().pow(2).sum())
                    norms[k, 1] = target.numel()
            if all_reduce is not None:
                all_reduce([norms])
            denom = {t: (float(norms[k, 0] / norms[k, 1]), float(norms[k, 1])) for k, t in enumerate(targets)}
            losses = torch.zeros(len(active), dtype=torch.float64)
            for j, (var, (child_cfg, child_w)) in enumerate(zip(active, children, strict=True)):
                mean_sq, count = denom[(var.layer, var.part)]
                for t in var.tensors.values():
                    t.grad = None
                if cap is None:
                    continue
                x, target = io(var.layer, var.part)
                # the child's layer tensors are the trainable ones
                prefix = f"model.layers.{var.layer}."
                live = {**child_w, **{prefix + k: t for k, t in var.tensors.items()}}
                err = (target - _child_out(child_cfg, live, var, x)).pow(2).sum()
                loss = err / count / max(mean_sq, 1e-30)
                loss.backward()
                losses[j] = float(loss.detach())
            grads = []
            for var in active:
                for t in var.tensors.values():
                    if t.grad is None:
                        t.grad = torch.zeros_like(t)
                    grads.append(t.grad)
            if all_reduce is not None:
                all_reduce([losses, *grads])
            for j, (var, opt) in enumerate(zip(active, opts, strict=True)):
                key = f"{var.layer}.{var.part}.{var.name}"
                if key not in first and float(losses[j]) < EXACT_BELOW:
                    exact.add(key)
                first.setdefault(key, float(losses[j]))
                last[key] = float(losses[j])
                if key not in exact:
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
