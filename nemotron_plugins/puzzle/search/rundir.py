"""The run directory: every stage's artefact, written atomically so an interrupted stage reruns cleanly.

Layout (``RUN/``)::

    library/library.json, library/library.safetensors   stage 1: variants (configs) and their tensors
    library_bld/, bld.json                               stage 2: the library after BLD, its normalised MSEs
    scores.json                                          stage 3: replace-1-block scores and costs per variant
    search.json                                          stage 4: the MIP solutions per scenario
    child/  child/report.json                            stage 5: the realized child (HF checkpoint) and its report
    child_distilled/, distill.json                       stage 6: the distilled child (HF checkpoint) and its losses
    fusion_plan.json, fused/                             stage 7: the FFN Fusion plan and the fused checkpoint

A stage whose artefact exists is skipped (``--force`` recomputes it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, FFNConfig
from nemotron_plugins.puzzle.search.library import Variant

__all__ = ["load_library", "load_tokens", "read_json", "save_library", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: Path, *, stage: str) -> Any:
    """Read a stage artefact, naming the stage that writes it when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `nemotron-plugins puzzle {stage}` first")
    return json.loads(path.read_text())


def _variant_key(var: Variant) -> str:
    return f"{var.layer}.{var.part}.{var.name}"


def save_library(variants: Sequence[Variant], out_dir: Path) -> None:
    """Write the library (configs to JSON, tensors to one safetensors file) atomically into ``out_dir``."""
    from safetensors.torch import save_file

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, entries = {}, []
    for var in variants:
        key = _variant_key(var)
        for suffix, t in var.tensors.items():
            tensors[f"{key}/{suffix}"] = t.contiguous()
        sub = var.attention if var.part == "attention" else var.ffn
        entries.append(
            {
                "layer": var.layer,
                "part": var.part,
                "name": var.name,
                "kind": sub.kind,
                "num_key_value_heads": getattr(sub, "num_key_value_heads", None),
                "intermediate_size": getattr(sub, "intermediate_size", None),
                "tensors": sorted(var.tensors),
            }
        )
    save_file(tensors, str(tmp / "library.safetensors"))
    (tmp / "library.json").write_text(json.dumps({"variants": entries}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def load_library(lib_dir: Path) -> list[Variant]:
    """Read what :func:`save_library` wrote."""
    from safetensors.torch import load_file

    meta = read_json(lib_dir / "library.json", stage="library")
    tensors = load_file(str(lib_dir / "library.safetensors"))
    out = []
    for e in meta["variants"]:
        key = f"{e['layer']}.{e['part']}.{e['name']}"
        if e["part"] == "attention":
            sub = {"attention": AttentionConfig(kind=e["kind"], num_key_value_heads=e["num_key_value_heads"])}
        else:
            sub = {"ffn": FFNConfig(kind=e["kind"], intermediate_size=e["intermediate_size"])}
        out.append(
            Variant(
                layer=e["layer"],
                part=e["part"],
                name=e["name"],
                tensors={s: tensors[f"{key}/{s}"] for s in e["tensors"]},
                **sub,
            )
        )
    return out


def load_tokens(path: str | os.PathLike[str], *, what: str) -> torch.Tensor:
    """Token ids ``[batch, seq]`` from a ``.pt`` tensor, a ``.npy`` array or a JSON list of lists."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} tokens: {p} does not exist")
    if p.suffix == ".pt":
        ids = torch.load(p, weights_only=True)
    elif p.suffix == ".npy":
        import numpy as np

        ids = torch.from_numpy(np.load(p))
    elif p.suffix == ".json":
        ids = torch.tensor(json.loads(p.read_text()))
    else:
        raise ValueError(f"{what} tokens: {p} must be .pt, .npy or .json, got {p.suffix!r}")
    if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what} tokens: {p} must hold integer ids [batch, seq], got {ids.dtype} {tuple(ids.shape)}")
    return ids.long()
