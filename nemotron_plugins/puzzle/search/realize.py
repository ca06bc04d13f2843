"""Stage 5, realize: the chosen child as an HF nemotron-nas checkpoint plus a report.

The child's tensors are the library variants the MIP chose, swapped into the parent; the checkpoint is written by
:func:`nemotron_plugins.puzzle.hf_checkpoint.export_hf_state_dict` (config.json with ``block_configs``, sharded
safetensors). The report lists each layer's choice and the predicted cost (:mod:`nemotron_plugins.puzzle.cost`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
from nemotron_plugins.puzzle.cost import estimate_cost
from nemotron_plugins.puzzle.search.library import Variant, substitute

__all__ = ["child_from_names", "realize"]


def child_from_names(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    library: Sequence[Variant],
    names: Sequence[str],
) -> tuple[PuzzleModelConfig, dict[str, torch.Tensor]]:
    """The child whose layer ``i`` is the option ``names[i]`` (``"attn=A ffn=F"``, as the MIP names options)."""
    if len(names) != cfg.num_hidden_layers:
        raise ValueError(f"{len(names)} choices for a parent of {cfg.num_hidden_layers} layers")
    index = {(v.layer, v.part, v.name): v for v in library}
    chosen = []
    for i, name in enumerate(names):
        try:
            attn, ffn = (part.split("=", 1)[1] for part in name.split(" "))
            chosen += [index[(i, "attention", attn)], index[(i, "ffn", ffn)]]
        except (ValueError, IndexError, KeyError):
            raise ValueError(f"layer {i}: choice {name!r} is not an 'attn=A ffn=F' pair of the library") from None
    return substitute(cfg, weights, chosen)


def realize(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    library: Sequence[Variant],
    names: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the child checkpoint into ``out_dir`` and return its report (per-layer table, predicted cost)."""
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_state_dict

    child_cfg, child_w = child_from_names(cfg, weights, library, names)
    export_hf_state_dict(child_w, child_cfg, Path(out_dir), tokenizer_dir=tokenizer_dir)
    child_cost, parent_cost = estimate_cost(child_cfg), estimate_cost(cfg)
    return {
        "checkpoint": str(out_dir),
        # DeciLM readers need SwiGLU widths in multiples of 256: the export zero-pads others (same function, more
        # stored parameters); ``child`` is the searched architecture, this is what the files hold
        "stored_total_params": estimate_cost(load_hf_config(out_dir)).total_params,
        "layers": [{"layer": i, "choice": n} for i, n in enumerate(names)],
        "child": child_cost.to_dict(),
        "parent_total_params": parent_cost.total_params,
        "param_fraction": child_cost.total_params / parent_cost.total_params,
        "kv_fraction": child_cost.kv_cache_bytes_per_token / max(1, parent_cost.kv_cache_bytes_per_token),
    }
