"""HF DeciLM <-> Megatron tensor mapping: pure functions, naming, errors (no distributed setup)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig
from nemotron_plugins.puzzle.hf_checkpoint import (
    HFCheckpointError,
    ParallelRanks,
    TensorPlan,
    expected_hf_tensors,
    fc1_from_megatron,
    fc1_to_megatron,
    hf_to_megatron_tensor,
    load_hf_checkpoint,
    megatron_to_hf_tensors,
    parse_shard_size,
    plan_megatron_tensors,
    qkv_from_megatron,
    qkv_to_megatron,
    read_hf_state_dict,
)
from tests.reference.tiny_checkpoints import (
    random_hf_weights,
    tensor_hashes,
    tiny_heterogeneous_config,
    write_hf_checkpoint,
)

torch.set_num_threads(1)


def test_expected_names_follow_decilm_rules() -> None:
    cfg = tiny_heterogeneous_config()
    names = expected_hf_tensors(cfg)
    layer = {
        i: sorted(n.split(f"model.layers.{i}.")[1] for n in names if n.startswith(f"model.layers.{i}."))
        for i in range(6)
    }
    assert layer[0] == sorted(
        ["input_layernorm.weight", "post_attention_layernorm.weight"]
        + [f"self_attn.{x}_proj.weight" for x in "qkvo"]
        + [f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    )
    # Linear replacements keep their pre-norm.
    assert "input_layernorm.weight" in layer[1] and "self_attn.linear_attn.weight" in layer[1]
    # No-op attention: no norm, no weights; linear FFN keeps post_attention_layernorm.
    assert layer[2] == ["mlp.linear_mlp.weight", "post_attention_layernorm.weight"]
    # GQA attention with a no-op FFN: no post_attention_layernorm.
    assert layer[3] == sorted(["input_layernorm.weight"] + [f"self_attn.{x}_proj.weight" for x in "qkvo"])
    assert layer[4] == []
    assert names["model.layers.3.self_attn.k_proj.weight"] == (4 * 8, 32)
    assert names["model.layers.0.self_attn.k_proj.weight"] == (2 * 8, 32)
    assert names["model.layers.0.mlp.down_proj.weight"] == (32, 96)
    assert list(names)[0] == "model.embed_tokens.weight" and list(names)[-1] == "lm_head.weight"
    assert "lm_head.weight" not in expected_hf_tensors(tiny_heterogeneous_config(tie_word_embeddings=True))


@pytest.mark.parametrize(("heads", "kv", "tp"), [(4, 2, 1), (4, 2, 2), (8, 4, 2), (8, 8, 4), (8, 1, 1)])
def test_qkv_layout_and_round_trip(heads: int, kv: int, tp: int) -> None:
    hd, hidden = 4, 16
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(heads * hd, hidden, generator=gen)
    k = torch.randn(kv * hd, hidden, generator=gen)
    v = torch.randn(kv * hd, hidden, generator=gen)
    shards = [
        qkv_to_megatron(q, k, v, num_heads=heads, num_kv_heads=kv, head_dim=hd, tp_rank=r, tp_size=tp)
        for r in range(tp)
    ]
    assert all(s.shape == ((heads + 2 * kv) * hd // tp, hidden) for s in shards)
    q2, k2, v2 = qkv_from_megatron(shards, num_heads=heads, num_kv_heads=kv, head_dim=hd)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)

    # Semantics: the fused projection, viewed per query group as megatron does, gives each head's q/k/v.
    x = torch.randn(3, hidden, generator=gen)
    per_group = heads // kv
    for r, shard in enumerate(shards):
        out = (x @ shard.T).view(3, kv // tp, (per_group + 2) * hd)
        for g_local in range(kv // tp):
            g = r * (kv // tp) + g_local
            qs = out[:, g_local, : per_group * hd]
            ks = out[:, g_local, per_group * hd : (per_group + 1) * hd]
            vs = out[:, g_local, (per_group + 1) * hd :]
            assert torch.allclose(qs, x @ q[g * per_group * hd : (g + 1) * per_group * hd].T, atol=1e-6)
            assert torch.allclose(ks, x @ k[g * hd : (g + 1) * hd].T, atol=1e-6)
            assert torch.allclose(vs, x @ v[g * hd : (g + 1) * hd].T, atol=1e-6)


def test_qkv_errors() -> None:
    q, k, v = torch.zeros(16, 8), torch.zeros(4, 8), torch.zeros(4, 8)
    with pytest.raises(HFCheckpointError, match="1 KV heads cannot be split over TP=2"):
        qkv_to_megatron(q, k, v, num_heads=4, num_kv_heads=1, head_dim=4, tp_rank=0, tp_size=2)
    with pytest.raises(HFCheckpointError, match="k_proj: expected shape"):
        qkv_to_megatron(q, k, v, num_heads=4, num_kv_heads=2, head_dim=4)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fc1_is_gate_then_up_per_shard(tp: int) -> None:
    gate = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)
    up = -gate
    shards = [fc1_to_megatron(gate, up, tp_rank=r, tp_size=tp) for r in range(tp)]
    for r, s in enumerate(shards):
        g, u = s.chunk(2)  # what megatron's SwiGLU does to each shard's output
        assert torch.equal(g, gate[r * 8 // tp : (r + 1) * 8 // tp])
        assert torch.equal(u, up[r * 8 // tp : (r + 1) * 8 // tp])
    g2, u2 = fc1_from_megatron(shards)
    assert torch.equal(g2, gate) and torch.equal(u2, up)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_plan_round_trips_bitwise(tp: int, tied: bool, dtype: torch.dtype) -> None:
    cfg = tiny_heterogeneous_config(tie_word_embeddings=tied)
    hf = random_hf_weights(cfg, seed=1, dtype=dtype)
    # A last PP stage with a separate output-layer copy when tied (has_output_layer=True).
    plans = plan_megatron_tensors(cfg, has_output_layer=True)
    padded = 64  # vocab 50 padded to a multiple of 64
    back: dict[str, torch.Tensor] = {}
    for plan in plans:
        shards = [
            hf_to_megatron_tensor(plan, hf, cfg, tp_rank=r, tp_size=tp, padded_vocab_size=padded) for r in range(tp)
        ]
        if plan.kind == "vocab":
            assert sum(s.shape[0] for s in shards) == padded
            assert torch.count_nonzero(torch.cat(shards)[cfg.vocab_size :]) == 0
        if plan.kind == "replicated":
            shards = shards[:1]
        if plan.export:
            back.update(megatron_to_hf_tensors(plan, shards, cfg))
    assert tensor_hashes(back) == tensor_hashes(hf)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("tied", [False, True])
def test_sliced_reads_equal_whole_tensor_sharding_and_read_one_tp_th(tmp_path, tp: int, tied: bool) -> None:
    """Each rank's slices, read with get_slice, are bitwise what sharding the whole tensors gives, at 1/TP the bytes."""
    from nemotron_plugins.puzzle.hf_checkpoint import _HFReader, _read_rank_tensor

    cfg = tiny_heterogeneous_config(tie_word_embeddings=tied)
    if tp == 4:  # KV heads must divide by TP: a 4-KV-head-only variant of every GQA layer
        cfg = dataclasses.replace(
            cfg,
            blocks=tuple(
                dataclasses.replace(b, attention=AttentionConfig.gqa(4)) if b.attention.kind == "gqa" else b
                for b in cfg.blocks
            ),
        )
    hf = random_hf_weights(cfg, seed=2, dtype=torch.bfloat16)
    src = write_hf_checkpoint(tmp_path / "ckpt", cfg, hf, shards=2)
    padded = 64
    plans = plan_megatron_tensors(cfg, has_output_layer=True)
    for plan in plans:
        full_bytes = sum(hf[n].numel() * hf[n].element_size() for n in plan.hf_names)
        per_rank = []
        for r in range(tp):
            reader = _HFReader(src)
            got = _read_rank_tensor(plan, reader, cfg, tp_rank=r, tp_size=tp, padded_vocab_size=padded)
            want = hf_to_megatron_tensor(plan, hf, cfg, tp_rank=r, tp_size=tp, padded_vocab_size=padded)
            assert got.dtype == want.dtype and torch.equal(got, want), (plan.megatron_name, r)
            per_rank.append(reader.bytes_read)
            reader.close()
        if plan.kind == "replicated":
            assert per_rank == [full_bytes] * tp
        elif plan.kind == "vocab":  # 50 real rows over 64 padded: padding rows are not read
            row = hf[plan.hf_names[0]][0].numel() * 2
            assert per_rank == [min(max(cfg.vocab_size - r * padded // tp, 0), padded // tp) * row for r in range(tp)]
        else:
            assert per_rank == [full_bytes // tp] * tp, plan.megatron_name


def test_plan_names_and_pipeline_local_numbering() -> None:
    cfg = tiny_heterogeneous_config()
    stage1 = plan_megatron_tensors(cfg, layers=[3, 4, 5], has_embedding=False, has_final_norm=True)
    names = [p.megatron_name for p in stage1]
    assert names == [
        "decoder.layers.0.input_layernorm.weight",
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_proj.weight",
        "decoder.layers.2.input_layernorm.weight",
        "decoder.layers.2.self_attention.linear_qkv.weight",
        "decoder.layers.2.self_attention.linear_proj.weight",
        "decoder.layers.2.pre_mlp_layernorm.weight",
        "decoder.layers.2.mlp.linear_fc1.weight",
        "decoder.layers.2.mlp.linear_fc2.weight",
        "decoder.final_layernorm.weight",
        "output_layer.weight",
    ]
    assert stage1[1].hf_names == tuple(f"model.layers.3.self_attn.{x}_proj.weight" for x in "qkv")
    assert stage1[1].num_kv_heads == 4 and stage1[1].layer == 3
    stage0 = plan_megatron_tensors(cfg, layers=[0, 1, 2], has_final_norm=False)
    by_name = {p.megatron_name: p for p in stage0}
    assert by_name["decoder.layers.1.self_attention.weight"].hf_names == (
        "model.layers.1.self_attn.linear_attn.weight",
    )
    assert by_name["decoder.layers.1.self_attention.weight"].kind == "column"
    assert by_name["decoder.layers.2.mlp.weight"].hf_names == ("model.layers.2.mlp.linear_mlp.weight",)
    assert "decoder.layers.2.input_layernorm.weight" not in by_name  # no-op attention has no norm
    assert "output_layer.weight" not in by_name and "embedding.word_embeddings.weight" in by_name


def test_te_fused_norm_names_are_picked_from_the_model() -> None:
    cfg = tiny_heterogeneous_config()
    keys = {
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
        "decoder.layers.0.mlp.linear_fc1.layer_norm_weight",
        "decoder.layers.1.self_attention.layer_norm_weight",
    }
    plans = {p.hf_names[0]: p.megatron_name for p in plan_megatron_tensors(cfg, layers=[0, 1], model_keys=keys)}
    assert (
        plans["model.layers.0.input_layernorm.weight"]
        == "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"
    )
    assert (
        plans["model.layers.0.post_attention_layernorm.weight"] == "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"
    )
    assert plans["model.layers.1.input_layernorm.weight"] == "decoder.layers.1.self_attention.layer_norm_weight"


def test_plan_rejects_layers_outside_the_config() -> None:
    with pytest.raises(HFCheckpointError, match="global layer 9"):
        plan_megatron_tensors(tiny_heterogeneous_config(), layers=[9])


def test_vocab_that_does_not_fit_is_an_error() -> None:
    cfg = tiny_heterogeneous_config()
    plan = TensorPlan(
        megatron_name="embedding.word_embeddings.weight", hf_names=("model.embed_tokens.weight",), kind="vocab"
    )
    with pytest.raises(HFCheckpointError, match="50 vocabulary rows do not fit the model's 40"):
        hf_to_megatron_tensor(plan, {"model.embed_tokens.weight": torch.zeros(50, 32)}, cfg, padded_vocab_size=40)


def test_parse_shard_size() -> None:
    assert parse_shard_size("5GB") == 5 * 10**9
    assert parse_shard_size("2MiB") == 2 * 2**20
    assert parse_shard_size(" 1.5 kb ") == 1500
    assert parse_shard_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_shard_size("5 parsecs")
    with pytest.raises(ValueError, match="positive"):
        parse_shard_size(0)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint files: what is checked before any model tensor is touched
# ----------------------------------------------------------------------------------------------------------------


def test_missing_and_unexpected_tensors_are_named_with_their_layer(tmp_path) -> None:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg)
    del weights["model.layers.3.self_attn.k_proj.weight"]
    weights["model.layers.4.mlp.gate_proj.weight"] = torch.zeros(8, 32)  # layer 4 is fully no-op
    src = write_hf_checkpoint(tmp_path / "bad", cfg, weights, shards=2)
    with pytest.raises(HFCheckpointError) as err:
        load_hf_checkpoint(torch.nn.Module(), src, cfg, parallel=ParallelRanks(), progress=False)
    msg = str(err.value)
    assert "missing tensors: model.layers.3.self_attn.k_proj.weight (layer 3)" in msg
    assert "unexpected tensors: model.layers.4.mlp.gate_proj.weight (layer 4)" in msg


def test_sliding_window_config_is_rejected_at_load_naming_the_layer(tmp_path) -> None:
    from nemotron_plugins.puzzle.block_config import BlockConfigError

    cfg = tiny_heterogeneous_config()
    blocks = list(cfg.blocks)
    blocks[5] = dataclasses.replace(
        blocks[5], attention=AttentionConfig(kind="gqa", num_key_value_heads=2, window_length=8)
    )
    windowed = dataclasses.replace(cfg, blocks=tuple(blocks))
    src = write_hf_checkpoint(tmp_path / "ckpt", cfg, random_hf_weights(cfg))
    with pytest.raises(BlockConfigError, match=r"config.json: block_configs\[5\]\.attention\.window_length"):
        load_hf_checkpoint(torch.nn.Module(), src, windowed, parallel=ParallelRanks(), progress=False)


def test_non_strict_reports_instead_of_raising(tmp_path) -> None:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old checkpoints: ignored silently
    weights["extra.weight"] = torch.ones(2)
    del weights["model.norm.weight"]
    src = write_hf_checkpoint(tmp_path / "ckpt", cfg, weights)
    report = load_hf_checkpoint(torch.nn.Module(), src, cfg, parallel=ParallelRanks(), strict=False, progress=False)
    assert report.missing_hf == ["model.norm.weight"]
    assert report.unexpected_hf == ["extra.weight"]
    assert report.loaded == []


def test_index_pointing_to_a_missing_file_and_duplicate_tensors(tmp_path) -> None:
    cfg = tiny_heterogeneous_config()
    src = write_hf_checkpoint(tmp_path / "ckpt", cfg, random_hf_weights(cfg), shards=2)
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(HFCheckpointError, match="model-00002-of-00002.safetensors.*does not exist"):
        read_hf_state_dict(src)

    from safetensors.torch import save_file

    dup = tmp_path / "dup"
    dup.mkdir()
    save_file({"a": torch.zeros(1)}, str(dup / "one.safetensors"))
    save_file({"a": torch.ones(1)}, str(dup / "two.safetensors"))
    with pytest.raises(HFCheckpointError, match="tensor a appears in both one.safetensors and two.safetensors"):
        read_hf_state_dict(dup)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HFCheckpointError, match="no model.safetensors.index.json and no"):
        read_hf_state_dict(empty)


def test_sharded_checkpoint_reads_back_every_tensor(tmp_path) -> None:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg, dtype=torch.bfloat16)
    src = write_hf_checkpoint(tmp_path / "ckpt", cfg, weights, shards=3)
    assert tensor_hashes(read_hf_state_dict(src)) == tensor_hashes(weights)


# ----------------------------------------------------------------------------------------------------------------
# The config an export writes
# ----------------------------------------------------------------------------------------------------------------


def test_export_layout_all_standard_blocks_is_plain_llama_with_global_sizes() -> None:
    from nemotron_plugins.puzzle.block_config import BlockConfig, FFNConfig, make_config
    from nemotron_plugins.puzzle.hf_checkpoint import hf_export_layout

    block = BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(80))
    cfg = make_config(hidden_size=32, num_attention_heads=4, vocab_size=50, blocks=[block] * 3)
    layout = hf_export_layout(cfg, dtype=torch.bfloat16)
    assert layout.architecture == "llama" and not layout.ffn_padding
    config = layout.config
    assert config["architectures"] == ["LlamaForCausalLM"] and "block_configs" not in config
    assert (config["intermediate_size"], config["num_key_value_heads"], config["torch_dtype"]) == (80, 2, "bfloat16")
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaConfig(**config)
    assert (llama.intermediate_size, llama.num_key_value_heads, llama.head_dim) == (80, 2, 8)


def test_export_layout_pads_widths_without_an_ffn_mult_and_keeps_the_rest() -> None:
    from nemotron_plugins.puzzle.block_config import (
        BlockConfig,
        FFNConfig,
        ffn_mult_to_intermediate_size,
        make_config,
        parse_hf_config,
    )
    from nemotron_plugins.puzzle.hf_checkpoint import hf_export_layout, pad_ffn_for_export

    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96)),
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(512)),  # standard, other KV heads
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.linear()),
    ]
    cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=50, blocks=blocks)
    layout = hf_export_layout(cfg)
    assert layout.architecture == "nemotron-nas" and layout.ffn_padding == {0: (96, 256)}
    config = layout.config
    assert (config["architectures"], config["model_type"]) == (["DeciLMForCausalLM"], "nemotron-nas")
    attn = [b["attention"] for b in config["block_configs"]]
    assert [a.get("n_heads_in_group") for a in attn] == [2, 1, None]
    mults = [b["ffn"]["ffn_mult"] for b in config["block_configs"]]
    assert [ffn_mult_to_intermediate_size(m, 64) for m in mults[:2]] == [256, 512]  # DeciLM's own width rule
    assert parse_hf_config(config).architecture() == layout.export_cfg.architecture()

    gate = torch.randn(96, 64)
    padded = pad_ffn_for_export("model.layers.0.mlp.gate_proj.weight", gate, layout.ffn_padding)
    assert padded.shape == (256, 64) and torch.equal(padded[:96], gate) and not padded[96:].any()
    down = pad_ffn_for_export("model.layers.0.mlp.down_proj.weight", gate.T, layout.ffn_padding)
    assert down.shape == (64, 256) and torch.equal(down[:, :96], gate.T) and not down[:, 96:].any()
    assert pad_ffn_for_export("model.layers.1.mlp.up_proj.weight", gate, layout.ffn_padding) is gate


def test_export_layout_rejects_a_fused_ffn_that_would_need_padding() -> None:
    from nemotron_plugins.puzzle.block_config import BlockConfig, FFNConfig, make_config
    from nemotron_plugins.puzzle.hf_checkpoint import hf_export_layout

    fused = FFNConfig(kind="swiglu", intermediate_size=96, fused_from=(32, 64))
    blocks = [BlockConfig(attention=AttentionConfig.no_op(), ffn=fused)]
    cfg = make_config(hidden_size=32, num_attention_heads=4, vocab_size=50, blocks=blocks)
    with pytest.raises(HFCheckpointError, match=r"layer 0: the fused FFN of width 96 \(fused from \[32, 64\]\)"):
        hf_export_layout(cfg)
