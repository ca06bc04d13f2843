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


def _worker(
    rank: int, tp: int, pp: int, jobs: list[tuple[str, str, str | None]]
) -> list[tuple[torch.Tensor | None, int]]:
    """Load, forward and export each ``(src, out, export dtype)`` job in one process group.

    Returns, per job, the logits (``None`` on ranks without them) and the bytes this rank read.
    """
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
        results.append((_forward(model, _input_ids(cfg.vocab_size), cfg.hidden_size), report.bytes_read))
        dtype = getattr(torch, export_dtype) if export_dtype else None
        export_hf_checkpoint(model, cfg, out, max_shard_size="24KB", dtype=dtype, progress=False)
    return results


def _run(
    jobs: list[tuple[Path, Path, str | None]], *, tp: int = 1, pp: int = 1, bytes_read: list | None = None
) -> list[torch.Tensor]:
    """Run the jobs in a TP x PP group of local processes; the logits of each job (from the rank that has them).

    ``bytes_read``, when given, receives per job the list of bytes each rank read.
    """
    args = (tp, pp, [(str(src), str(out), dtype) for src, out, dtype in jobs])
    per_rank = run_local_processes(_worker, tp * pp, args=args, timeout_s=300)
    logits = []
    for j in range(len(jobs)):
        found = [r[j][0] for r in per_rank if r[j][0] is not None]
        assert len(found) == 1
        logits.append(found[0])
        if bytes_read is not None:
            bytes_read.append([r[j][1] for r in per_rank])
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


def _unpadded(exported: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The exported tensors cut to the source shapes, checking that what export padded on is zeros."""
    out = {}
    for name, src in weights.items():
        t = exported[name]
        cut = t[tuple(slice(0, n) for n in src.shape)]
        if t.shape != src.shape:
            assert ".mlp." in name and t.numel() > src.numel(), name  # only FFN widths are padded
            assert int(torch.count_nonzero(t)) == int(torch.count_nonzero(cut)), f"{name}: padding is not zero"
        out[name] = cut.contiguous()
    return out


def _check_heterogeneous(cfg, weights, logits: torch.Tensor, out: Path) -> None:
    ids = _input_ids(cfg.vocab_size)
    expected = decilm_forward(weights, to_hf_config(cfg), ids)
    assert logits.shape == (2, SEQ, PADDED_VOCAB)
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4
    exported = read_hf_state_dict(out)
    # Widths 96 / 64 / 32 have no DeciLM ffn_mult: written zero-padded to 256, everything else bitwise.
    assert tensor_hashes(_unpadded(exported, weights)) == tensor_hashes(weights)
    _assert_sharded_like_hf(out, exported)
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["DeciLMForCausalLM"] and written["model_type"] == "nemotron-nas"
    assert [b["ffn"].get("ffn_mult") for b in written["block_configs"]] == [12.0, 12.0, None, None, None, 12.0]
    # What a DeciLM reader computes from the written files equals the trained model's logits.
    assert (decilm_forward(exported, written, ids) - expected).abs().max().item() <= 1e-5
    widths = [w if w is None else 256 for w in (b.ffn.intermediate_size for b in cfg.blocks)]
    assert [b.ffn.intermediate_size for b in load_hf_config(out).blocks] == widths


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
    read: list[list[int]] = []
    (logits,) = _run([(src, tmp_path / "out", None)], tp=tp, pp=pp, bytes_read=read)
    _check_heterogeneous(cfg, weights, logits, tmp_path / "out")
    total = sum(t.numel() * t.element_size() for t in weights.values())
    if pp == 2:  # each stage reads its own layers only: together exactly the file, no tensor twice
        assert sum(read[0]) == total and all(0 < b < total for b in read[0]), read


def test_tied_bf16_checkpoint_round_trips_bitwise(single_process: dict) -> None:
    cfg, weights, logits = single_process["tied"]
    fp32 = {k: v.float() for k, v in weights.items()}
    expected = decilm_forward(fp32, to_hf_config(cfg), _input_ids(cfg.vocab_size))
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4
    exported = read_hf_state_dict(single_process["root"] / "tied_out")
    assert "lm_head.weight" not in exported
    assert tensor_hashes(_unpadded(exported, weights)) == tensor_hashes(weights)


def test_llama_parity_with_transformers(single_process: dict) -> None:
    expected, logits = single_process["llama"]
    root = single_process["root"]
    assert (logits[..., :61] - expected).abs().max().item() <= 1e-4
    assert tensor_hashes(read_hf_state_dict(root / "llama_out")) == tensor_hashes(
        read_hf_state_dict(root / "llama_src")
    )
    # The export (intermediate_size 80, 2 KV heads of 4) is a plain Llama config transformers reads as written.
    import transformers

    written = json.loads((root / "llama_out" / "config.json").read_text())
    assert written["architectures"] == ["LlamaForCausalLM"] and "block_configs" not in written
    reloaded = transformers.LlamaForCausalLM.from_pretrained(root / "llama_out", dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(_input_ids(61)).logits
    assert (again - logits[..., :61]).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------------------------------------------------
# The fixture checkpoint (nemotron_plugins.fixtures): loads at TP1 and TP2, each TP2 rank reading half the bytes
# --------------------------------------------------------------------------------------------------------------------


def _fixture_worker(rank: int, src: str, tp: int, out_dir: str | None = None) -> dict:
    """Load the fixture checkpoint sliced (and at TP > 1 also whole, into zeroed parameters); forward both.

    With ``out_dir``, export the model again (bf16, with the source's tokenizer) into ``out_dir``.
    """
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint, load_hf_checkpoint
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(ParallelConfig(tensor_model_parallel_size=tp), seed=100)
    cfg = load_hf_config(src)
    model = _build_megatron_model(cfg).eval()
    ids = _input_ids(cfg.vocab_size)
    report = load_hf_checkpoint(model, src, cfg, progress=False)
    assert report.loaded and not report.unfilled_model, report
    out = {
        "logits": _forward(model, ids, cfg.hidden_size),
        "bytes_read": report.bytes_read,
        "bytes_in_tensors": report.bytes_in_tensors,
        "by_kind": report.bytes_read_by_kind,
    }
    if tp > 1:
        sliced_state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        whole = load_hf_checkpoint(model, src, cfg, progress=False, sliced=False)
        out["whole_logits"] = _forward(model, ids, cfg.hidden_size)
        out["whole_bytes_read"] = whole.bytes_read
        state = model.state_dict()
        out["same_state"] = all(torch.equal(state[k], v) for k, v in sliced_state.items())
    if out_dir is not None:
        export_hf_checkpoint(
            model, cfg, out_dir, dtype=torch.bfloat16, tokenizer_dir=src, max_shard_size="10MB", progress=False
        )
    return out


@pytest.fixture(scope="module")
def fixture_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from nemotron_plugins.fixtures import write_fixture_checkpoint

    return write_fixture_checkpoint(tmp_path_factory.mktemp("fixture") / "checkpoint", seed=0)


def _fixture_reference_logits(src: Path) -> torch.Tensor:
    cfg = load_hf_config(src)
    weights = {k: v.float() for k, v in read_hf_state_dict(src).items()}
    return decilm_forward(weights, to_hf_config(cfg), _input_ids(cfg.vocab_size)), cfg


def test_fixture_checkpoint_loads_at_tp1_with_reference_logits(fixture_checkpoint: Path) -> None:
    (result,) = run_local_processes(_fixture_worker, 1, args=(str(fixture_checkpoint), 1), timeout_s=300)
    expected, cfg = _fixture_reference_logits(fixture_checkpoint)
    assert (result["logits"][..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4 * expected.abs().max()
    assert (
        result["bytes_read"]
        == result["bytes_in_tensors"]
        == sum(p.stat().st_size for p in fixture_checkpoint.glob("*.safetensors"))
        - _safetensors_header_bytes(fixture_checkpoint)
    )


def _safetensors_header_bytes(src: Path) -> int:
    total = 0
    for f in src.glob("*.safetensors"):
        with f.open("rb") as handle:
            total += 8 + int.from_bytes(handle.read(8), "little")
    return total


def test_fixture_checkpoint_at_tp2_each_rank_reads_half_of_the_sharded_bytes(fixture_checkpoint: Path) -> None:
    from nemotron_plugins.puzzle.hf_checkpoint import plan_megatron_tensors

    out = fixture_checkpoint.parent / "tp2_export"
    ranks = run_local_processes(_fixture_worker, 2, args=(str(fixture_checkpoint), 2, str(out)), timeout_s=300)
    expected, cfg = _fixture_reference_logits(fixture_checkpoint)
    logits = ranks[0]["logits"]
    # Sliced and whole-tensor loading give the same parameters and the same logits, equal to the reference's.
    assert all(r["same_state"] for r in ranks)
    assert torch.equal(logits, ranks[0]["whole_logits"])
    assert (logits[..., : cfg.vocab_size] - expected).abs().max().item() <= 1e-4 * expected.abs().max()

    weights = read_hf_state_dict(fixture_checkpoint)
    file_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    sharded = {"column", "row", "qkv", "fc1"}
    sharded_bytes = sum(
        weights[n].numel() * weights[n].element_size()
        for plan in plan_megatron_tensors(cfg)
        if plan.kind in sharded
        for n in plan.hf_names
    )
    for r in ranks:
        assert r["bytes_in_tensors"] == file_bytes  # every rank needs a part of every tensor...
        assert sum(r["by_kind"].get(k, 0) for k in sharded) == sharded_bytes // 2  # ...but reads half of each
        assert r["whole_bytes_read"] == file_bytes
        assert abs(r["bytes_read"] - file_bytes / 2) <= 0.01 * file_bytes, (r["bytes_read"], file_bytes)
    # Vocabulary rows are split too (embedding and lm_head); the padding rows are not read. Norms are read by both.
    assert sum(r["by_kind"]["vocab"] for r in ranks) == 2 * cfg.vocab_size * cfg.hidden_size * 2
    print(f"\nfixture checkpoint {file_bytes} B; bytes read per rank at TP2: {[r['bytes_read'] for r in ranks]}")

    # Exported again from the TP2 model: the same tensors, config, tokenizer and generation config.
    assert tensor_hashes(read_hf_state_dict(out)) == tensor_hashes(weights)
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (fixture_checkpoint / "config.json").read_text()
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).read_bytes() == (fixture_checkpoint / name).read_bytes(), name
