"""Tiny random HF checkpoints (DeciLM heterogeneous and plain Llama) for checkpoint and parity tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    PuzzleModelConfig,
    make_config,
    to_hf_config,
)
from nemotron_plugins.puzzle.hf_checkpoint import expected_hf_tensors


def tiny_heterogeneous_config(*, vocab_size: int = 50, tie_word_embeddings: bool = False) -> PuzzleModelConfig:
    """Six layers covering every sub-block kind; KV heads 2 and 4 (both divisible by TP=2)."""
    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96)),
        BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.swiglu(64)),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.linear()),
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(32)),
    ]
    return make_config(
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=vocab_size,
        blocks=blocks,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
    )


def random_hf_weights(
    cfg: PuzzleModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights for every HF tensor of ``cfg`` (norm weights around 1, matrices ~ N(0, 0.1))."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_hf_tensors(cfg).items():
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = 0.1 * torch.randn(shape, generator=gen)
        out[name] = t.to(dtype)
    return out


def write_hf_checkpoint(
    path: Path, cfg: PuzzleModelConfig, weights: dict[str, torch.Tensor], *, shards: int = 1
) -> Path:
    """Write ``weights`` as safetensors (``shards`` files + index when > 1) and ``config.json`` into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(weights)
    if shards == 1:
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        per = -(-len(names) // shards)
        weight_map = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: weights[n] for n in names[i * per : (i + 1) * per]}
            save_file(part, str(path / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())}}
        index["weight_map"] = weight_map
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "config.json").write_text(json.dumps(to_hf_config(cfg), indent=2))
    return path


def tensor_hashes(weights: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Per-tensor (sha256 of raw bytes, shape, dtype): equal hashes mean bitwise-equal checkpoints."""
    import hashlib

    out = {}
    for name, t in weights.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        out[name] = (hashlib.sha256(raw).hexdigest(), tuple(t.shape), str(t.dtype))
    return out
