"""The heterogeneous Puzzle model on megatron-core: sizes, names, numerics, training on CPU, error messages."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    PuzzleModelConfig,
    load_hf_config,
    make_config,
)
from nemotron_plugins.puzzle.cost import estimate_cost
from nemotron_plugins.puzzle.layer_specs import LayerSpecError, puzzle_layer_spec
from nemotron_plugins.puzzle.model import (
    PuzzleModelError,
    build_puzzle_model,
    count_parameters,
    init_weights_layout_invariant_,
    padded_vocab_size,
    puzzle_transformer_config,
)
from nemotron_plugins.runtime.config import ParallelConfig

SUPER_49B = Path("/work/shared/reference/llama-3_3-nemotron-super-49b-v1.json")
SUPER_FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "puzzle" / "llama-3_3-nemotron-super-49b-v1.json"


@pytest.fixture(scope="module", autouse=True)
def cpu_only():
    """The CPU path, also on a GPU machine: CUDA hidden from this module (gloo, the CPU adapter, CPU tensors)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


@pytest.fixture(scope="module")
def dist(cpu_only):
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(2)
    with distributed_context(seed=1) as ctx:
        assert ctx.backend == "gloo" and ctx.device.type == "cpu"
        yield ctx


def every_kind_config(**overrides: object) -> PuzzleModelConfig:
    gqa, linear, no_op = AttentionConfig.gqa, AttentionConfig.linear, AttentionConfig.no_op
    blocks = [
        BlockConfig(attention=gqa(2), ffn=FFNConfig.swiglu(128)),
        BlockConfig(attention=gqa(4), ffn=FFNConfig.swiglu(64)),
        BlockConfig(attention=linear(), ffn=FFNConfig.linear()),
        BlockConfig(attention=no_op(), ffn=FFNConfig(kind="swiglu", intermediate_size=192, fused_from=(128, 64))),
        BlockConfig(attention=gqa(2), ffn=FFNConfig.no_op()),
        BlockConfig(attention=no_op(), ffn=FFNConfig.swiglu(128)),
    ]
    return make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=blocks, **overrides)


def test_build_needs_parallel_state() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        pytest.skip("parallel_state left initialised by another test")
    with pytest.raises(PuzzleModelError, match="init_distributed"):
        build_puzzle_model(every_kind_config())


def test_super_49b_on_meta_has_the_cost_models_parameter_count(dist) -> None:
    path = SUPER_49B if SUPER_49B.exists() else SUPER_FIXTURE
    cfg = load_hf_config(path)
    model = build_puzzle_model(cfg, device="meta", params_dtype=torch.bfloat16)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert count_parameters(model) == estimate_cost(cfg).total_params == 49_867_145_216
    layers = model.decoder.layers
    kinds = [(type(layer.self_attention).__name__, type(layer.mlp).__name__) for layer in layers]
    # GQA layers: megatron's SelfAttention, retyped to the subclass that caches rotated keys when decoding.
    assert sum(k[0] == "RotatedCacheSelfAttention" for k in kinds) == 49
    assert sum(k[0] == "IdentityOp" for k in kinds) == 31
    widths = {layer.mlp.linear_fc2.weight.shape[1] for layer in layers if hasattr(layer.mlp, "linear_fc2")}
    assert len(widths) == 6


def test_every_block_kind_builds_with_documented_names_and_shapes(dist) -> None:
    cfg = every_kind_config()
    model = build_puzzle_model(cfg)
    assert count_parameters(model) == estimate_cost(cfg).total_params
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    d = 16
    expected = {
        "embedding.word_embeddings.weight": (128, 64),
        "decoder.layers.0.input_layernorm.weight": (64,),
        "decoder.layers.0.self_attention.linear_qkv.weight": ((4 + 2 * 2) * d, 64),
        "decoder.layers.0.self_attention.linear_proj.weight": (64, 4 * d),
        "decoder.layers.0.pre_mlp_layernorm.weight": (64,),
        "decoder.layers.0.mlp.linear_fc1.weight": (2 * 128, 64),
        "decoder.layers.0.mlp.linear_fc2.weight": (64, 128),
        "decoder.layers.1.self_attention.linear_qkv.weight": ((4 + 2 * 4) * d, 64),
        "decoder.layers.1.mlp.linear_fc1.weight": (2 * 64, 64),
        "decoder.layers.2.input_layernorm.weight": (64,),
        "decoder.layers.2.self_attention.weight": (64, 64),
        "decoder.layers.2.pre_mlp_layernorm.weight": (64,),
        "decoder.layers.2.mlp.weight": (64, 64),
        "decoder.layers.3.pre_mlp_layernorm.weight": (64,),
        "decoder.layers.3.mlp.linear_fc1.weight": (2 * 192, 64),
        "decoder.layers.3.mlp.linear_fc2.weight": (64, 192),
        "decoder.layers.4.input_layernorm.weight": (64,),
        "decoder.layers.4.self_attention.linear_qkv.weight": (8 * d, 64),
        "decoder.layers.4.self_attention.linear_proj.weight": (64, 64),
        "decoder.layers.5.pre_mlp_layernorm.weight": (64,),
        "decoder.layers.5.mlp.linear_fc1.weight": (256, 64),
        "decoder.layers.5.mlp.linear_fc2.weight": (64, 128),
        "decoder.final_layernorm.weight": (64,),
        "output_layer.weight": (128, 64),
    }
    for name, shape in expected.items():
        assert shapes.pop(name) == shape, name
    # What is left: the remaining GQA/FFN tensors of layers 1 and 4; no-op sub-blocks have nothing (no norm either).
    assert sorted(shapes) == [
        "decoder.layers.1.input_layernorm.weight",
        "decoder.layers.1.mlp.linear_fc2.weight",
        "decoder.layers.1.pre_mlp_layernorm.weight",
        "decoder.layers.1.self_attention.linear_proj.weight",
    ]


def test_tied_embeddings_have_no_output_layer(dist) -> None:
    cfg = every_kind_config(tie_word_embeddings=True)
    model = build_puzzle_model(cfg)
    assert "output_layer.weight" not in model.state_dict()
    assert count_parameters(model) == estimate_cost(cfg).total_params


def test_no_op_blocks_are_identity_and_linear_blocks_are_norm_plus_linear(dist) -> None:
    blocks = [
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.linear()),
    ]
    cfg = make_config(hidden_size=32, num_attention_heads=2, vocab_size=128, blocks=blocks)
    model = build_puzzle_model(cfg)
    init_weights_layout_invariant_(model, seed=3)
    x = torch.randn(5, 2, 32)  # [seq, batch, hidden]
    identity, lin_attn, lin_ffn = model.decoder.layers
    out, _ = identity(x, attention_mask=None)
    assert torch.equal(out, x)
    rms = torch.nn.functional.rms_norm
    with torch.no_grad():
        out, _ = lin_attn(x, attention_mask=None)
        w = lin_attn.self_attention.weight
        torch.testing.assert_close(out, x + rms(x, (32,), lin_attn.input_layernorm.weight, 1e-5) @ w.T)
        out, _ = lin_ffn(x, attention_mask=None)
        w = lin_ffn.mlp.weight
        torch.testing.assert_close(out, x + rms(x, (32,), lin_ffn.pre_mlp_layernorm.weight, 1e-5) @ w.T)


def test_fused_ffn_equals_the_sum_of_its_parallel_swiglus(dist) -> None:
    cfg = every_kind_config()
    model = build_puzzle_model(cfg)
    init_weights_layout_invariant_(model, seed=4)
    mlp = model.decoder.layers[3].mlp  # fused_from=(128, 64)
    gate, up = mlp.linear_fc1.weight.detach().chunk(2)
    down = mlp.linear_fc2.weight.detach()
    x = torch.randn(3, 2, 64)
    with torch.no_grad():
        fused, _ = mlp(x)
        parts = []
        for lo, hi in ((0, 128), (128, 192)):
            h = torch.nn.functional.silu(x @ gate[lo:hi].T) * (x @ up[lo:hi].T)
            parts.append(h @ down[:, lo:hi].T)
    torch.testing.assert_close(fused, parts[0] + parts[1], rtol=1e-5, atol=1e-6)


def test_tiny_heterogeneous_model_trains_on_cpu_and_loss_falls(dist) -> None:
    cfg = every_kind_config()
    model = build_puzzle_model(cfg)
    init_weights_layout_invariant_(model, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        start = torch.randint(0, 128, (4, 1), generator=gen)
        seq = (start + torch.arange(17)) % 128  # next token = token + 1: learnable
        tokens, labels = seq[:, :-1], seq[:, 1:]
        positions = torch.arange(16).expand(4, 16)
        loss = model(tokens, positions, None, labels=labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(128), abs=0.1)
    assert losses[-1] < losses[0] - 1.0, losses
    logits = model(tokens, positions, None)
    assert logits.shape == (4, 16, 128)


@pytest.mark.parametrize(
    "recompute",
    [
        {"recompute_granularity": "selective"},
        {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
        {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 3},
    ],
    ids=["selective", "full-uniform", "full-block"],
)
def test_activation_recompute_gives_identical_gradients(dist, recompute: dict) -> None:
    """megatron's selective (core attention) and full recompute, through ``build_puzzle_model``'s config
    overrides, with the SDPA attention: the same loss and the same gradients as without recompute."""
    cfg = every_kind_config()
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 128, (2, 16), generator=gen)
    labels = torch.randint(0, 128, (2, 16), generator=gen)
    results = []
    for overrides in ({}, recompute):
        model = build_puzzle_model(cfg, layer_spec="puzzle_sdpa", **overrides)
        assert model.config.recompute_granularity == overrides.get("recompute_granularity")
        init_weights_layout_invariant_(model, seed=2)
        model.train()
        loss = model(tokens, None, None, labels=labels).float().mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys()
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    assert any(g.abs().sum() > 0 for g in grads0.values())


def test_llama3_rope_scaling_matches_transformers(dist) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 2.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    cfg = every_kind_config(rope_theta=500000.0, rope_scaling=scaling)
    model = build_puzzle_model(cfg)
    hf = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0, rope_scaling=dict(scaling))
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    torch.testing.assert_close(model.rotary_pos_emb.inv_freq.float(), expected.float(), rtol=1e-6, atol=0)


def test_unsupported_rope_scaling_is_named() -> None:
    cfg = every_kind_config(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    from nemotron_plugins.puzzle.model import _rope_arguments

    with pytest.raises(PuzzleModelError, match="rope_scaling.rope_type='yarn'"):
        _rope_arguments(cfg)


def test_kv_heads_not_divisible_by_tp_name_the_layer() -> None:
    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(64)),
        BlockConfig(attention=AttentionConfig.gqa(1), ffn=FFNConfig.swiglu(64)),
    ]
    cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=blocks)
    with pytest.raises(
        PuzzleModelError, match="layer 1: 1 KV heads are not divisible by tensor_model_parallel_size=2"
    ):
        puzzle_transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=2))
    blocks[1] = BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(65))
    cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=blocks)
    with pytest.raises(PuzzleModelError, match="layer 1: FFN width 65"):
        puzzle_transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=2))


def test_uneven_pipeline_needs_a_layout() -> None:
    cfg = every_kind_config()
    with pytest.raises(PuzzleModelError, match=r"pipeline_layout .*\[2, 2, 1, 1\]"):
        puzzle_transformer_config(cfg, ParallelConfig(pipeline_model_parallel_size=4))
    with pytest.raises(PuzzleModelError, match="summing to 6 layers"):
        puzzle_transformer_config(cfg, ParallelConfig(pipeline_model_parallel_size=2, pipeline_layout=[1, 2]))
    config = puzzle_transformer_config(cfg, ParallelConfig(pipeline_model_parallel_size=2, pipeline_layout=[2, 4]))
    assert config.pipeline_model_parallel_layout is not None


def test_transformer_engine_request_without_te_is_an_honest_error() -> None:
    config = puzzle_transformer_config(every_kind_config())
    with pytest.raises(LayerSpecError, match="Transformer Engine is not importable"):
        puzzle_layer_spec(config, use_transformer_engine=True)


def test_layer_specs_are_registered() -> None:
    from nemotron_plugins.puzzle.layer_specs import puzzle_local_layer_spec, puzzle_te_layer_spec
    from nemotron_plugins.registry import LAYER_SPECS

    assert LAYER_SPECS.get("puzzle_local") is puzzle_local_layer_spec
    assert LAYER_SPECS.get("puzzle_te") is puzzle_te_layer_spec


def test_padded_vocab_size() -> None:
    assert padded_vocab_size(128256, 8) == 128256
    assert padded_vocab_size(100, 2) == 128
    assert padded_vocab_size(130, 256) == 256
    assert padded_vocab_size(100, 3, divisible_by=1) == 102
