"""HF DeciLM -> Megatron -> HF is bitwise exact at TP=1, TP=2 and PP=2 (gloo processes on CPU)."""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from tests.reference.tiny_checkpoints import (
    random_hf_weights,
    tensor_hashes,
    tiny_heterogeneous_config,
    write_hf_checkpoint,
)

PADDED_VOCAB = 64  # the config's vocabulary (50) padded, as megatron recipes do


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_megatron_model(cfg, *, tp: int, pp: int):
    """A megatron-core GPTModel for ``cfg`` on this rank (megatron's own heterogeneous layer spec, CPU init)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.heterogeneous.heterogeneous_layer_specs import get_gpt_heterogeneous_layer_spec
    from megatron.core.transformer.heterogeneous.heterogeneous_config import HeterogeneousTransformerConfig

    from nemotron_plugins.puzzle.block_config import to_megatron_block_configs

    config = HeterogeneousTransformerConfig(
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        use_cpu_initialization=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32,
        params_dtype=torch.float32,
        heterogeneous_layers_config_encoded_json=json.dumps(to_megatron_block_configs(cfg)),
    )
    rank = ps.get_pipeline_model_parallel_rank()
    spec = get_gpt_heterogeneous_layer_spec(config, use_te=False, pp_rank=rank)
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=PADDED_VOCAB,
        max_sequence_length=cfg.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.rope_theta),
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )


def _worker(rank: int, world: int, port: int, tp: int, pp: int, src: str, out: str, tied: bool, errors) -> None:
    try:
        import torch.distributed as dist

        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        from megatron.core import parallel_state as ps

        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint, load_hf_checkpoint

        cfg = tiny_heterogeneous_config(tie_word_embeddings=tied)
        torch.manual_seed(1000 + rank)
        model = _build_megatron_model(cfg, tp=tp, pp=pp)
        report = load_hf_checkpoint(model, src, cfg, progress=False)
        assert report.loaded and not report.unfilled_model, report
        # The padded vocabulary rows are zero after loading.
        state = model.state_dict()
        if "embedding.word_embeddings.weight" in state and ps.get_tensor_model_parallel_rank() == tp - 1:
            emb = state["embedding.word_embeddings.weight"]
            assert torch.count_nonzero(emb[emb.shape[0] - (PADDED_VOCAB - cfg.vocab_size) :]) == 0
        result = export_hf_checkpoint(model, cfg, out, max_shard_size="20KB", dtype=torch.bfloat16, progress=False)
        assert (result is not None) == (rank == 0)
        ps.destroy_model_parallel()
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise


def _run(tmp_path: Path, *, tp: int, pp: int, tied: bool = False) -> tuple[dict, Path]:
    import torch.multiprocessing as mp

    cfg = tiny_heterogeneous_config(tie_word_embeddings=tied)
    weights = random_hf_weights(cfg, seed=3, dtype=torch.bfloat16)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights, shards=3)
    out = tmp_path / "out"
    world = tp * pp
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, tp, pp, str(src), str(out), tied, errors))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert all(p.exitcode == 0 for p in procs), "\n".join(messages) or [p.exitcode for p in procs]
    return weights, out


@pytest.mark.parametrize(
    ("tp", "pp", "tied"),
    [(1, 1, False), (1, 1, True), (2, 1, False), (1, 2, False)],
    ids=["tp1", "tp1-tied", "tp2", "pp2"],
)
def test_hf_megatron_hf_is_bitwise_exact(tmp_path: Path, tp: int, pp: int, tied: bool) -> None:
    weights, out = _run(tmp_path, tp=tp, pp=pp, tied=tied)
    exported = read_hf_state_dict(out)
    assert tensor_hashes(exported) == tensor_hashes(weights)

    # Sharded like HF: several files, an index that names every tensor, total_size in bytes.
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
    assert set(index["weight_map"]) == set(weights)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights.values())
    for f in out.glob("*.safetensors"):
        assert f.stat().st_size <= 20_000 + 2_000  # max_shard_size (+ safetensors header)
    # config.json comes from the block-config writer and describes the same architecture.
    from nemotron_plugins.puzzle.block_config import load_hf_config

    assert load_hf_config(out).architecture() == tiny_heterogeneous_config(tie_word_embeddings=tied).architecture()
