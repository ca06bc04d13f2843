"""FFN Fusion: run consecutive attention-free FFN blocks in parallel as one wider SwiGLU.

After Puzzle removes attention, a run of FFN-only blocks ``X_{j+1} = X_j + FFN_j(norm_j(X_j))`` is replaced by the
parallel form ``f(X) = X + sum_j FFN_j(norm_j(X))`` (an approximation that the model is then distilled to). The
parallel form is exactly ONE SwiGLU: concatenating the gate and up matrices along the intermediate dimension and the
down matrices along their input dimension gives ``down_cat(silu(gate_cat x) * up_cat x) = sum_j down_j(silu(gate_j x)
* up_j x)``, since every intermediate channel belongs to exactly one of the original FFNs.

Each original FFN has its own RMSNorm weight ``g_j``; the fused block has one. :func:`fuse_swiglu` folds each
``g_j`` into the columns of that FFN's gate and up matrices (``W (g * r) = (W diag(g)) r``) and gives the fused FFN a
norm weight of ones, so the construction stays exact.

In configs (:func:`fuse_block_configs`) the fused FFN goes into the FIRST block of the run (its input is the run's
input) and the other blocks of the run become fully no-op. The layer count is kept, so layer indices, HF checkpoint
layer names and ``num_hidden_layers`` do not move (Ultra-253B is published the same way: wide FFNs next to fully
no-op blocks). ``FFNConfig.fused_from`` records the widths of the merged FFNs in concatenation order, which
:func:`split_swiglu` uses to take a fused FFN apart again.

Tensor layout is Hugging Face's ``nn.Linear`` one: ``gate`` and ``up`` are ``[width, hidden]``, ``down`` is
``[hidden, width]``, ``norm`` is ``[hidden]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nemotron_plugins.puzzle.block_config import (
    BlockConfig,
    BlockConfigError,
    FFNConfig,
    PuzzleModelConfig,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "FFNFusionError",
    "SwiGLUWeights",
    "fuse_block_configs",
    "fuse_swiglu",
    "split_swiglu",
    "swiglu_forward",
]


class FFNFusionError(ValueError):
    """A fusion request that cannot be carried out (attention inside a run, mismatched shapes, ...)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SwiGLUWeights:
    """The weights of one SwiGLU FFN, optionally with its pre-norm weight."""

    gate: torch.Tensor
    """``gate_proj.weight``, shape ``[width, hidden]``."""
    up: torch.Tensor
    """``up_proj.weight``, shape ``[width, hidden]``."""
    down: torch.Tensor
    """``down_proj.weight``, shape ``[hidden, width]``."""
    norm: torch.Tensor | None = None
    """The FFN's RMSNorm weight ``[hidden]`` (``post_attention_layernorm``), or ``None`` when not tracked."""

    def __post_init__(self) -> None:
        if self.gate.ndim != 2 or self.up.shape != self.gate.shape:
            raise FFNFusionError(
                f"gate and up must both be [width, hidden]; got gate {tuple(self.gate.shape)}, up {tuple(self.up.shape)}"
            )
        width, hidden = self.gate.shape
        if tuple(self.down.shape) != (hidden, width):
            raise FFNFusionError(f"down must be [hidden, width] = [{hidden}, {width}], got {tuple(self.down.shape)}")
        if self.norm is not None and tuple(self.norm.shape) != (hidden,):
            raise FFNFusionError(f"norm must be [hidden] = [{hidden}], got {tuple(self.norm.shape)}")

    @property
    def width(self) -> int:
        """Intermediate width."""
        return int(self.gate.shape[0])

    @property
    def hidden_size(self) -> int:
        """Model width."""
        return int(self.gate.shape[1])


def swiglu_forward(weights: SwiGLUWeights, x: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate x) * up x)`` for ``x`` of shape ``[..., hidden]`` (no norm, no residual)."""
    import torch.nn.functional as F

    return F.linear(F.silu(F.linear(x, weights.gate)) * F.linear(x, weights.up), weights.down)


def fuse_swiglu(ffns: Sequence[SwiGLUWeights]) -> SwiGLUWeights:
    """Merge parallel SwiGLU FFNs into one whose output is their sum.

    Args:
        ffns: at least one FFN, all with the same hidden size, dtype and device; widths may differ. Either all carry
            their ``norm`` weight or none does.

    Returns:
        One SwiGLU of width ``sum(widths)``: gate/up concatenated along dim 0, down along dim 1, in the given order.
        With norms, each ``norm_j`` is folded into its gate and up columns and the result's norm is ones, so
        ``swiglu(fused, rms(x) * 1) == sum_j swiglu(ffn_j, rms(x) * norm_j)`` exactly (up to float rounding).

    Raises:
        FFNFusionError: no FFNs, hidden sizes differ, or norms given for some FFNs only.
    """
    import torch

    if not ffns:
        raise FFNFusionError("fuse_swiglu needs at least one FFN")
    hidden = ffns[0].hidden_size
    for j, ffn in enumerate(ffns):
        if ffn.hidden_size != hidden:
            raise FFNFusionError(f"ffns[{j}] has hidden size {ffn.hidden_size}, ffns[0] has {hidden}")
    with_norm = [ffn.norm is not None for ffn in ffns]
    if any(with_norm) and not all(with_norm):
        missing = [j for j, has in enumerate(with_norm) if not has]
        raise FFNFusionError(f"norm weights given for some FFNs but not for ffns{missing}; give all or none")
    if all(with_norm):
        gates = [ffn.gate * ffn.norm.unsqueeze(0) for ffn in ffns]
        ups = [ffn.up * ffn.norm.unsqueeze(0) for ffn in ffns]
        norm = torch.ones_like(ffns[0].norm)
    else:
        gates = [ffn.gate for ffn in ffns]
        ups = [ffn.up for ffn in ffns]
        norm = None
    return SwiGLUWeights(
        gate=torch.cat(gates, dim=0),
        up=torch.cat(ups, dim=0),
        down=torch.cat([ffn.down for ffn in ffns], dim=1),
        norm=norm,
    )


def split_swiglu(fused: SwiGLUWeights, fused_from: Sequence[int]) -> list[SwiGLUWeights]:
    """Split a fused SwiGLU back into its parallel FFNs (the inverse of :func:`fuse_swiglu`).

    Args:
        fused: the fused FFN.
        fused_from: the widths of the parts in concatenation order (``FFNConfig.fused_from``).

    Returns:
        One :class:`SwiGLUWeights` per width (views into ``fused``'s tensors), each carrying a copy of ``fused.norm``.
        Without norm folding the parts equal the original FFNs exactly; with folding, each part's gate/up carry the
        folded norm weight (same function, different factorisation).

    Raises:
        FFNFusionError: the widths do not sum to the fused width or are not positive.
    """
    widths = [int(w) for w in fused_from]
    if not widths or any(w <= 0 for w in widths):
        raise FFNFusionError(f"fused_from must list positive widths, got {list(fused_from)}")
    if sum(widths) != fused.width:
        raise FFNFusionError(
            f"fused_from widths {widths} sum to {sum(widths)}, but the fused FFN is {fused.width} wide"
        )
    gates = fused.gate.split(widths, dim=0)
    ups = fused.up.split(widths, dim=0)
    downs = fused.down.split(widths, dim=1)
    return [
        SwiGLUWeights(gate=g, up=u, down=d, norm=None if fused.norm is None else fused.norm.clone())
        for g, u, d in zip(gates, ups, downs, strict=True)
    ]


def _check_runs(cfg: PuzzleModelConfig, runs: Sequence[range]) -> list[range]:
    checked: list[range] = []
    taken: dict[int, int] = {}
    for r, run in enumerate(runs):
        if not isinstance(run, range) or run.step != 1:
            raise FFNFusionError(f"runs[{r}] must be a range of consecutive layers with step 1, got {run!r}")
        if len(run) < 2:
            raise FFNFusionError(f"runs[{r}] = {run!r} has {len(run)} layer(s); a fused run needs at least 2")
        if run.start < 0 or run.stop > cfg.num_hidden_layers:
            raise FFNFusionError(f"runs[{r}] = {run!r} is outside layers 0..{cfg.num_hidden_layers - 1}")
        for layer in run:
            if layer in taken:
                raise FFNFusionError(f"layer {layer} is in both runs[{taken[layer]}] and runs[{r}]")
            taken[layer] = r
            block = cfg.blocks[layer]
            if block.attention.kind != "no_op":
                raise FFNFusionError(
                    f"runs[{r}] = {run!r}: block_configs[{layer}].attention is {block.attention.kind!r}; "
                    "FFN Fusion only fuses attention-free blocks (attention no_op)"
                )
            if block.ffn.kind == "linear":
                raise FFNFusionError(
                    f"runs[{r}] = {run!r}: block_configs[{layer}].ffn is 'linear'; only SwiGLU (or no_op) FFNs fuse"
                )
        checked.append(run)
    return checked


def fuse_block_configs(cfg: PuzzleModelConfig, runs: Sequence[range]) -> PuzzleModelConfig:
    """Turn each run of consecutive attention-free blocks into one block with a fused FFN.

    The first block of a run gets a SwiGLU FFN whose width is the sum of the run's SwiGLU widths and whose
    ``fused_from`` lists them (an FFN that was itself fused contributes its own ``fused_from`` parts); the other
    blocks become fully no-op. No-op FFNs in a run contribute nothing. The layer count does not change.

    Args:
        cfg: the architecture.
        runs: disjoint ``range(start, stop)`` of at least two layers each.

    Returns:
        The fused architecture.

    Raises:
        FFNFusionError: a run contains an attention (GQA or linear) or a linear FFN, overlaps another run, is out of
            bounds, or is shorter than two layers.
    """
    blocks = list(cfg.blocks)
    for run in _check_runs(cfg, runs):
        parts: list[int] = []
        for layer in run:
            ffn = cfg.blocks[layer].ffn
            if ffn.kind == "swiglu":
                parts.extend(ffn.fused_from or (ffn.intermediate_size,))
        first = cfg.blocks[run.start]
        template = next((cfg.blocks[i].ffn for i in run if cfg.blocks[i].ffn.kind == "swiglu"), None)
        if template is not None:
            fused_ffn = FFNConfig(
                kind="swiglu",
                intermediate_size=sum(parts),
                fused_from=tuple(parts) if len(parts) >= 2 else None,
                extra=template.extra,
                hf_keys=template.hf_keys,
            )
        else:
            fused_ffn = _as_no_op(first.ffn)
        blocks[run.start] = BlockConfig(attention=first.attention, ffn=fused_ffn, hf_keys=first.hf_keys)
        for layer in run[1:]:
            block = cfg.blocks[layer]
            blocks[layer] = BlockConfig(attention=block.attention, ffn=_as_no_op(block.ffn), hf_keys=block.hf_keys)
    try:
        return dataclasses.replace(cfg, blocks=tuple(blocks))
    except BlockConfigError as err:  # pragma: no cover - the blocks above are valid by construction
        raise FFNFusionError(str(err)) from None


def _as_no_op(ffn: FFNConfig) -> FFNConfig:
    extra = {k: v for k, v in ffn.extra.items() if k not in ("ffn_mult", "intermediate_size")}
    return FFNConfig(kind="no_op", extra=extra, hf_keys=ffn.hf_keys)
