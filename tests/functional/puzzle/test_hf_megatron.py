"""HF checkpoints through the Megatron model on CPU (gloo processes): parity and bitwise round trips.

Each case starts a local process group (TP / PP as given), builds the Megatron model, streams an HF checkpoint into
it with ``load_hf_checkpoint``, runs a forward pass (logits gathered over TP, hidden states passed between pipeline
stages) and exports it again with ``export_hf_checkpoint``. The parent then checks:

- parity: the logits equal those of an independent oracle within 1e-4 (fp32): transformers' ``LlamaForCausalLM``
  for an all-standard Llama checkpoint, and the plain-PyTorch DeciLM reference (``tests/reference``) for a
  heterogeneous one (GQA with per-layer KV heads, linear replacements, no-op sub-blocks);
- round trip: the exported checkpoint is bitwise equal to the source (per-tensor sha256), sharded like HF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig, load_hf_config, to_hf_config
from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from nemotron_plugins.runtime.distributed import run_local_processes
from tests.reference.decilm_reference import decilm_forward
from tests.reference.tiny_checkpoints import (
    random_hf_weights,
    tensor_hashes,
    tiny_heterogeneous_config,
    write_hf_checkpoint,
)

PADDED_VOCAB = 64  # vocabularies of 50 / 61 padded, as megatron recipes do
SEQ = 9


def _input_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(7))


def _build_megatron_model(cfg: PuzzleModelConfig):
    """This rank's Puzzle model for ``cfg``, vocabulary padded to a multiple of 64."""
    from nemotron_plugins.puzzle.model import build_puzzle_model

    return build_puzzle_model(cfg, make_vocab_size_divisible_by=PADDED_VOCAB, device="cpu")


def _forward(model, ids: torch.Tensor, hidden: int) -> torch.Tensor | None:
    """Logits [batch, seq, padded vocab] on the last stage's TP rank 0 (None elsewhere)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():
            recv = torch.empty(ids.shape[1], ids.shape[0], hidden)
            dist.recv(recv, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(recv)
        out = model(ids, pos, attention_mask=None)
        if not ps.is_pipeline_last_stage():
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            return None
        tp = ps.get_tensor_model_parallel_world_size()
        if tp > 1:  # vocab-parallel logits
            parts = [torch.empty_like(out) for _ in range(tp)]
            dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
            out = torch.cat(parts, dim=-1)
    return out if ps.get_tensor_model_parallel_rank() == 0 else None


def _worker(rank: int, tp: int, pp: int, src: str, out: str, export_dtype: str | None):
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint, load_hf_checkpoint
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp), seed=100)
    cfg = load_hf_config(src)
    model = _build_megatron_model(cfg).eval()
    report = load_hf_checkpoint(model, src, cfg, progress=False)
    assert report.loaded and not report.unfilled_model, report
    logits = _forward(model, _input_ids(cfg.vocab_size), cfg.hidden_size)
    dtype = getattr(torch, export_dtype) if export_dtype else None
    export_hf_checkpoint(model, cfg, out, max_shard_size="24KB", dtype=dtype, progress=False)
    return logits


def _run(src: Path, out: Path, *, tp: int = 1, pp: int = 1, export_dtype: str | None = None) -> torch.Tensor:
    results = run_local_processes(_worker, tp * pp, args=(tp, pp, str(src), str(out), export_dtype), timeout_s=240)
    logits = [r for r in results if r is not None]
    assert len(logits) == 1
    return logits[0]


def _assert_sharded_like_hf(out: Path, weights: dict[str, torch.Tensor]) -> None:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
    assert set(index["weight_map"]) == set(weights)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights.values())


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_heterogeneous_parity_and_bitwise_round_trip(tmp_path: Path, tp: int, pp: int) -> None:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg, seed=3)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights, shards=3)
    logits = _run(src, tmp_path / "out", tp=tp, pp=pp)

    expected = decilm_forward(weights, to_hf_config(cfg), _input_ids(cfg.vocab_size))
    assert logits.shape == (2, SEQ, PADDED_VOCAB)
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4

    exported = read_hf_state_dict(tmp_path / "out")
    assert tensor_hashes(exported) == tensor_hashes(weights)
    _assert_sharded_like_hf(tmp_path / "out", weights)
    assert load_hf_config(tmp_path / "out").architecture() == cfg.architecture()


def test_tied_bf16_checkpoint_round_trips_bitwise(tmp_path: Path) -> None:
    cfg = tiny_heterogeneous_config(tie_word_embeddings=True)
    weights = random_hf_weights(cfg, seed=4, dtype=torch.bfloat16)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights, shards=1)
    logits = _run(src, tmp_path / "out", export_dtype="bfloat16")
    fp32 = {k: v.float() for k, v in weights.items()}
    expected = decilm_forward(fp32, to_hf_config(cfg), _input_ids(cfg.vocab_size))
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4
    exported = read_hf_state_dict(tmp_path / "out")
    assert "lm_head.weight" not in exported
    assert tensor_hashes(exported) == tensor_hashes(weights)


def test_llama_parity_with_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=0.25,
    )
    llama = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    llama.save_pretrained(tmp_path / "src", safe_serialization=True)

    logits = _run(tmp_path / "src", tmp_path / "out")
    with torch.no_grad():
        expected = llama(_input_ids(61)).logits
    assert (logits[..., :61] - expected).abs().max().item() <= 1e-4
    assert tensor_hashes(read_hf_state_dict(tmp_path / "out")) == tensor_hashes(read_hf_state_dict(tmp_path / "src"))
