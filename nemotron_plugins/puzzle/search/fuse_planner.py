"""FFN Fusion planner: which runs of attention-free FFN blocks to fuse, and the fused checkpoint.

Dependency metric (FFN Fusion, arXiv 2503.18908): for blocks ``i < j`` of one run of consecutive attention-free
blocks, ``D[i, j]`` is the cosine distance between block ``j``'s FFN output with and without block ``i`` (block ``i``
replaced by the identity), averaged over calibration tokens. Low ``D`` means block ``j`` barely depends on block ``i``,
so they can run in parallel.

Plan (:func:`plan_fusion`): in each maximal run of attention-free SwiGLU blocks, the last block is kept separate (as
in the paper); the others are grouped greedily from the front: block ``j`` joins the current group when
``max_{i in group} D[i, j] <= threshold``, else it starts a new group. Groups of at least two blocks are fused.

Fusion (:func:`fuse_checkpoint`): exact weights from :func:`nemotron_plugins.puzzle.ffn_fusion.fuse_swiglu` (norm
weights folded into the gate / up columns) in the released Ultra form from
:func:`~nemotron_plugins.puzzle.ffn_fusion.fuse_block_configs`: one wide FFN in the group's first block, the other
blocks fully no-op, the layer count unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
from nemotron_plugins.puzzle.ffn_fusion import FFNFusionError, SwiGLUWeights, fuse_block_configs, fuse_swiglu
from nemotron_plugins.puzzle.search.hf_forward import Capture, embed, run_layers

__all__ = [
    "FusionPlan",
    "attention_free_runs",
    "dependency_matrix",
    "fuse_checkpoint",
    "plan_fusion",
]


def attention_free_runs(cfg: PuzzleModelConfig) -> list[range]:
    """Maximal runs (>= 2 layers) of consecutive blocks with a no-op attention and a SwiGLU FFN."""
    runs, start = [], None
    for i, block in enumerate((*cfg.blocks, None)):
        ok = block is not None and block.attention.kind == "no_op" and block.ffn.kind == "swiglu"
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start >= 2:
                runs.append(range(start, i))
            start = None
    return runs


@torch.no_grad()
def dependency_matrix(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], input_ids: torch.Tensor, run: range
) -> torch.Tensor:
    """``D[a, b]`` (positions within ``run``, ``a < b``): cosine distance of block ``run[b]``'s FFN output with and
    without block ``run[a]``, averaged over tokens; 0 on and below the diagonal."""
    x = run_layers(cfg, weights, embed(cfg, weights, input_ids), range(run.start))
    base = Capture(layers=set(run))
    run_layers(cfg, weights, x, run, capture=base)
    n = len(run)
    dep = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n - 1):
        cap = Capture(layers=set(run[a + 1 :]))
        run_layers(cfg, weights, x, run, drop={run[a]}, capture=cap)
        for b in range(a + 1, n):
            cos = torch.nn.functional.cosine_similarity(base.ffn_output[run[b]], cap.ffn_output[run[b]], dim=-1)
            dep[a, b] = float((1.0 - cos.double()).mean())
    return dep


@dataclass(frozen=True, kw_only=True, slots=True)
class FusionPlan:
    """What to fuse and why."""

    runs: tuple[tuple[int, int], ...]
    """Attention-free runs examined, ``(start, stop)``."""
    dependencies: tuple[tuple[tuple[float, ...], ...], ...]
    """``D`` of each run."""
    threshold: float
    """Largest dependency allowed inside a fused group."""
    groups: tuple[tuple[int, int], ...]
    """Groups to fuse, ``(start, stop)`` layer ranges of >= 2 layers."""

    def fused_ranges(self) -> list[range]:
        """:attr:`groups` as ranges."""
        return [range(a, b) for a, b in self.groups]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "runs": [list(r) for r in self.runs],
            "dependencies": [[list(row) for row in d] for d in self.dependencies],
            "threshold": self.threshold,
            "groups": [list(g) for g in self.groups],
        }


def plan_fusion(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], input_ids: torch.Tensor, *, threshold: float
) -> FusionPlan:
    """Measure the dependency metric on every attention-free run and group the blocks (module docstring).

    Args:
        cfg: the architecture (after the search: attention removed where the MIP chose so).
        weights: its HF tensors.
        input_ids: calibration tokens ``[batch, seq]``.
        threshold: largest cosine distance allowed between blocks of one fused group (e.g. 0.1).

    Returns:
        The plan; ``groups`` is empty when nothing is fusable.
    """
    if not 0.0 <= threshold <= 2.0:
        raise ValueError(f"threshold is a cosine distance in [0, 2], got {threshold}")
    runs = attention_free_runs(cfg)
    deps, groups = [], []
    for run in runs:
        dep = dependency_matrix(cfg, weights, input_ids, run)
        deps.append(tuple(tuple(float(v) for v in row) for row in dep))
        group = [0]
        for b in range(1, len(run) - 1):  # the run's last block stays separate
            if max(float(dep[a, b]) for a in group) <= threshold:
                group.append(b)
            else:
                if len(group) >= 2:
                    groups.append((run[group[0]], run[group[-1]] + 1))
                group = [b]
        if len(group) >= 2:
            groups.append((run[group[0]], run[group[-1]] + 1))
    return FusionPlan(
        runs=tuple((r.start, r.stop) for r in runs),
        dependencies=tuple(deps),
        threshold=threshold,
        groups=tuple(groups),
    )


def fuse_checkpoint(
    cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], groups: Sequence[range]
) -> tuple[PuzzleModelConfig, dict[str, torch.Tensor]]:
    """Fuse each group of attention-free blocks into one SwiGLU in the group's first block (exact weights).

    Args:
        cfg: the architecture.
        weights: its HF tensors.
        groups: disjoint ranges of >= 2 consecutive attention-free layers.

    Returns:
        The fused config (Ultra form: the other blocks fully no-op) and its HF tensors, in the original order with
        the removed blocks' tensors left out. The fused model equals the original with each group evaluated in
        parallel form (``hf_forward.forward(..., parallel_runs=groups)``).

    Raises:
        FFNFusionError: a group holds an attention or a linear FFN, overlaps another, or a tensor is missing.
    """
    fused_cfg = fuse_block_configs(cfg, groups)
    out = dict(weights)
    for group in groups:
        parts = []
        for layer in group:
            if cfg.blocks[layer].ffn.kind != "swiglu":
                continue
            p = f"model.layers.{layer}."
            try:
                parts.append(
                    SwiGLUWeights(
                        gate=weights[p + "mlp.gate_proj.weight"],
                        up=weights[p + "mlp.up_proj.weight"],
                        down=weights[p + "mlp.down_proj.weight"],
                        norm=weights[p + "post_attention_layernorm.weight"],
                    )
                )
            except KeyError as err:
                raise FFNFusionError(f"layer {layer}: HF tensor {err.args[0]!r} is missing") from None
            for name in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
                del out[p + name]
            del out[p + "post_attention_layernorm.weight"]
        if not parts:
            continue
        fused = fuse_swiglu(parts)
        p = f"model.layers.{group.start}."
        out[p + "post_attention_layernorm.weight"] = fused.norm
        out[p + "mlp.gate_proj.weight"] = fused.gate
        out[p + "mlp.up_proj.weight"] = fused.up
        out[p + "mlp.down_proj.weight"] = fused.down
    return fused_cfg, out
