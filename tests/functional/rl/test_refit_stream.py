"""The weight refit stream on CPU (gloo processes) at TP1 x PP1, TP2 x PP1 and TP2 x PP2.

One fixed HF checkpoint per architecture is loaded into the Megatron model at each layout; the stream must then:

- rebuild exactly (bitwise) the HF state ``export_hf_checkpoint`` writes, on every rank (every pipeline stage's
  tensors included), FFN widths padded as the export pads them;
- give per-engine-TP slices that concatenate to that state, both when a pipeline group shares a slice (only the
  slice crosses stages) and when every rank wants another one;
- drive an HF model to the Megatron model's logits: transformers' ``LlamaForCausalLM`` for the all-standard
  architecture, the plain-PyTorch DeciLM reference (``tests/reference``) for the heterogeneous one (GQA with per-layer
  KV heads, linear replacements, no-op sub-blocks, FFN widths that export pads);
- keep memory bounded structurally: every bucket is at most ``max(bucket_bytes, largest single tensor group)``, what
  the stream yields is exactly what :func:`plan_refit` announces, and no tensor the stream created for a bucket is
  alive once the consumer dropped it and the next bucket arrived.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from refit_worker import input_ids, worker

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from nemotron_plugins.runtime.distributed import run_local_processes
from tests.reference.decilm_reference import decilm_forward
from tests.reference.tiny_checkpoints import (
    random_hf_weights,
    tensor_hashes,
    tiny_heterogeneous_config,
    write_hf_checkpoint,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

BUCKET_BYTES = 8 << 10  # small enough that the tiny models stream in many buckets, some tensors exceeding it


def _llama_config():
    blocks = [BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96)) for _ in range(4)]
    return make_config(
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=61,
        blocks=blocks,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("refit_src")
    out = {}
    for key, cfg, seed in (("hetero", tiny_heterogeneous_config(), 3), ("llama", _llama_config(), 5)):
        weights = random_hf_weights(cfg, seed=seed)
        out[key] = (cfg, weights, write_hf_checkpoint(root / key, cfg, weights, shards=2))
    return out


def _transformers_logits(cfg, state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.blocks[0].ffn.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.blocks[0].attention.num_key_value_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=False,
        )
    ).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    with torch.no_grad():
        return hf(ids).logits


def _check_rank(result: dict, exported: dict[str, torch.Tensor]) -> None:
    whole = result["whole"]
    assert list(whole["state"]) == list(exported) == whole["plan_names"]
    assert tensor_hashes(whole["state"]) == tensor_hashes(exported)
    for stream in (whole, result["same_slice"]):
        assert stream["bucket_bytes"] == stream["plan_bucket_bytes"]
        assert stream["max_bucket"] == max(stream["bucket_bytes"])
        assert max(stream["bucket_bytes"]) <= max(BUCKET_BYTES, stream["largest_unit"])
        assert len(stream["bucket_bytes"]) > 3
        assert stream["leaked"] == 0
    assert whole["largest_unit"] > BUCKET_BYTES  # the tiny models do have a tensor larger than a bucket
    assert result["bf16_dtypes"] == {torch.bfloat16}


def _concat(slices: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    parts = [s[name] for s in slices]
    if all(p.shape == parts[0].shape for p in parts) and parts[0].dim() == 1 and "norm" in name:
        assert all(torch.equal(p, parts[0]) for p in parts)  # replicated
        return parts[0]
    dim = 1 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0
    return torch.cat(parts, dim=dim)


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (2, 2)], ids=["tp1pp1", "tp2pp1", "tp2pp2"])
def test_stream_rebuilds_the_export_and_the_logits(sources: dict, tmp_path: Path, tp: int, pp: int) -> None:
    jobs = [
        {"src": str(sources[key][2]), "out": str(tmp_path / key), "bucket_bytes": BUCKET_BYTES}
        for key in ("hetero", "llama")
    ]
    per_rank = run_local_processes(worker, tp * pp, args=(tp, pp, jobs), timeout_s=600)
    for j, key in enumerate(("hetero", "llama")):
        cfg, weights, _ = sources[key]
        exported = read_hf_state_dict(tmp_path / key)
        results = [r[j] for r in per_rank]
        assert {r["stage"] for r in results} == set(range(pp))
        for result in results:
            _check_rank(result, exported)
        # Engine TP = training TP: the ranks of one stage hold the slices of an engine at TP = tp.
        stage0 = sorted((r for r in results if r["stage"] == pp - 1), key=lambda r: r["tp_rank"])
        same = [r["same_slice"]["state"] for r in stage0]
        assert all(torch.equal(_concat(same, n), t) for n, t in exported.items())
        # Engine TP = world size: every rank a different slice.
        world = [r["world_slice"] for r in results]
        assert all(torch.equal(_concat(world, n), t) for n, t in exported.items())
        # The stream is the source checkpoint (widths padded with zeros where the export pads them).
        for name, src in weights.items():
            got = exported[name][tuple(slice(0, n) for n in src.shape)]
            assert torch.equal(got, src), name
        # An HF model built from the stream gives the Megatron model's logits.
        (logits,) = [r["logits"] for r in results if r["logits"] is not None]
        ids = input_ids(cfg.vocab_size)
        streamed = results[0]["whole"]["state"]
        if key == "llama":
            theirs = _transformers_logits(cfg, streamed, ids)
        else:
            import json

            theirs = decilm_forward(streamed, json.loads((tmp_path / key / "config.json").read_text()), ids)
        assert (logits[..., : cfg.vocab_size] - theirs).abs().max().item() <= 1e-4
