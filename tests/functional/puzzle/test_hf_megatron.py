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


def _worker(rank: int, tp: int, pp: int, jobs: list[tuple[str, str, str | None]]) -> list[torch.Tensor | None]:
    """Load, forward and export each ``(src, out, export dtype)`` job in one process group; returns the logits."""
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint, load_hf_checkpoint
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp), seed=100)
    results = []
    for src, out, export_dtype in jobs:
        cfg = load_hf_config(src)
        model = _build_megatron_model(cfg).eval()
        report = load_hf_checkpoint(model, src, cfg, progress=False)
        assert report.loaded and not report.unfilled_model, report
        results.append(_forward(model, _input_ids(cfg.vocab_size), cfg.hidden_size))
        dtype = getattr(torch, export_dtype) if export_dtype else None
        export_hf_checkpoint(model, cfg, out, max_shard_size="24KB", dtype=dtype, progress=False)
    return results


def _run(jobs: list[tuple[Path, Path, str | None]], *, tp: int = 1, pp: int = 1) -> list[torch.Tensor]:
    """Run the jobs in a TP x PP group of local processes; the logits of each job (from the rank that has them)."""
    args = (tp, pp, [(str(src), str(out), dtype) for src, out, dtype in jobs])
    per_rank = run_local_processes(_worker, tp * pp, args=args, timeout_s=300)
    logits = []
    for j in range(len(jobs)):
        found = [r[j] for r in per_rank if r[j] is not None]
        assert len(found) == 1
        logits.append(found[0])
    return logits


def _assert_sharded_like_hf(out: Path, weights: dict[str, torch.Tensor]) -> None:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
    assert set(index["weight_map"]) == set(weights)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights.values())


def _heterogeneous_source(root: Path) -> tuple[PuzzleModelConfig, dict[str, torch.Tensor], Path]:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg, seed=3)
    return cfg, weights, write_hf_checkpoint(root / "hetero_src", cfg, weights, shards=3)


def _check_heterogeneous(cfg, weights, logits: torch.Tensor, out: Path) -> None:
    expected = decilm_forward(weights, to_hf_config(cfg), _input_ids(cfg.vocab_size))
    assert logits.shape == (2, SEQ, PADDED_VOCAB)
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4
    assert tensor_hashes(read_hf_state_dict(out)) == tensor_hashes(weights)
    _assert_sharded_like_hf(out, weights)
    assert load_hf_config(out).architecture() == cfg.architecture()


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One TP=1 / PP=1 process runs three checkpoints: heterogeneous fp32, tied bf16, and a transformers Llama."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_single")
    hetero = _heterogeneous_source(root)

    tied_cfg = tiny_heterogeneous_config(tie_word_embeddings=True)
    tied_weights = random_hf_weights(tied_cfg, seed=4, dtype=torch.bfloat16)
    tied_src = write_hf_checkpoint(root / "tied_src", tied_cfg, tied_weights, shards=1)

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
        rope_theta=10000.0,  # transformers 5 writes it as rope_parameters.rope_theta
        tie_word_embeddings=False,
        initializer_range=0.25,  # weights large enough for RoPE / norm details to show in the logits
    )
    llama = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
        llama_logits = llama(_input_ids(61)).logits
    llama.save_pretrained(root / "llama_src", safe_serialization=True)

    jobs = [
        (hetero[2], root / "hetero_out", None),
        (tied_src, root / "tied_out", "bfloat16"),
        (root / "llama_src", root / "llama_out", None),
    ]
    logits = _run(jobs)
    return {
        "root": root,
        "hetero": (*hetero[:2], logits[0]),
        "tied": (tied_cfg, tied_weights, logits[1]),
        "llama": (llama_logits, logits[2]),
    }


def test_heterogeneous_parity_and_bitwise_round_trip_tp1(single_process: dict) -> None:
    cfg, weights, logits = single_process["hetero"]
    _check_heterogeneous(cfg, weights, logits, single_process["root"] / "hetero_out")


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_heterogeneous_parity_and_bitwise_round_trip_parallel(tmp_path: Path, tp: int, pp: int) -> None:
    cfg, weights, src = _heterogeneous_source(tmp_path)
    (logits,) = _run([(src, tmp_path / "out", None)], tp=tp, pp=pp)
    _check_heterogeneous(cfg, weights, logits, tmp_path / "out")


def test_tied_bf16_checkpoint_round_trips_bitwise(single_process: dict) -> None:
    cfg, weights, logits = single_process["tied"]
    fp32 = {k: v.float() for k, v in weights.items()}
    expected = decilm_forward(fp32, to_hf_config(cfg), _input_ids(cfg.vocab_size))
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4
    exported = read_hf_state_dict(single_process["root"] / "tied_out")
    assert "lm_head.weight" not in exported
    assert tensor_hashes(exported) == tensor_hashes(weights)


def test_llama_parity_with_transformers(single_process: dict) -> None:
    expected, logits = single_process["llama"]
    root = single_process["root"]
    assert (logits[..., :61] - expected).abs().max().item() <= 1e-4
    assert tensor_hashes(read_hf_state_dict(root / "llama_out")) == tensor_hashes(
        read_hf_state_dict(root / "llama_src")
    )
