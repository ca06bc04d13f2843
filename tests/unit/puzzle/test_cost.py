"""Parameter, KV-cache and FLOP counts of Puzzle architectures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    load_hf_config,
    make_config,
)
from nemotron_plugins.puzzle.cost import estimate_cost

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "puzzle"


def test_super_49b_totals() -> None:
    cost = estimate_cost(load_hf_config(FIXTURES / "llama-3_3-nemotron-super-49b-v1.json"))
    assert cost.total_params == 49_867_145_216
    assert cost.kv_cache_bytes_per_token == 200_704
    assert cost.num_layers == 80
    assert cost.embedding_params == cost.lm_head_params == 128256 * 8192
    assert cost.final_norm_params == 8192
    assert sum(layer.params for layer in cost.layers) + 2 * 128256 * 8192 + 8192 == cost.total_params


def test_nano_8b_matches_llama_3_1_8b() -> None:
    cfg = load_hf_config(FIXTURES / "nano-8b-like.json")
    cost = estimate_cost(cfg)
    assert cost.total_params == 8_030_261_248
    assert cost.kv_cache_bytes_per_token == 32 * 2 * 8 * 128 * 2  # 131072
    assert {cfg.ffn_width(i) for i in range(32)} == {14336}
    assert {cfg.kv_heads(i) for i in range(32)} == {8}


def test_ultra_253b_like_counts_and_total() -> None:
    cfg = load_hf_config(FIXTURES / "ultra-253b-like.json")
    h, heads, hd, vocab = 16384, 128, 128, 128256
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (162, h, heads)
    kinds = Counter(b.attention.kind for b in cfg.blocks)
    assert kinds == {"gqa": 64, "no_op": 98}
    assert sum(b.ffn.kind == "no_op" for b in cfg.blocks) == 81
    widths = [cfg.ffn_width(i) for i in range(162) if cfg.ffn_width(i) is not None]
    assert max(widths) == 425_984  # ffn_mult 39.0
    # Independent closed form: 64 GQA attentions + SwiGLU FFNs + embeddings/head/final norm.
    gqa = h + h * (heads + 2 * 8) * hd + heads * hd * h
    expected = 64 * gqa + sum(h + 3 * w * h for w in widths) + 2 * vocab * h + h
    cost = estimate_cost(cfg)
    assert cost.total_params == expected == 252_897_951_744
    assert cost.kv_cache_bytes_per_token == 64 * 2 * 8 * hd * 2


def test_matches_a_transformers_llama_parameter_count() -> None:
    """An independent oracle: a homogeneous config counts like transformers' LlamaForCausalLM."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    for tie in (False, True):
        hf_cfg = transformers.LlamaConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            num_hidden_layers=3,
            vocab_size=101,
            tie_word_embeddings=tie,
        )
        model = transformers.LlamaForCausalLM(hf_cfg)
        hf_params = sum(p.numel() for p in model.parameters())  # tied weights are one Parameter
        cfg = make_config(
            hidden_size=64,
            num_attention_heads=4,
            vocab_size=101,
            tie_word_embeddings=tie,
            blocks=[BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96))] * 3,
        )
        assert estimate_cost(cfg).total_params == hf_params


def _tiny(blocks: list[BlockConfig], **overrides: object):
    return make_config(hidden_size=64, num_attention_heads=4, vocab_size=100, blocks=blocks, **overrides)


def test_per_layer_counts_by_kind() -> None:
    cfg = _tiny(
        [
            BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)),
            BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.linear()),
            BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
            BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.no_op()),
        ]
    )
    cost = estimate_cost(cfg, seq_len=10)
    h, hd = 64, 16
    l0, l1, l2, l3 = cost.layers
    assert l0.attention_params == h + h * (4 + 2 * 2) * hd + 4 * hd * h
    assert l0.ffn_params == h + 3 * 256 * h
    assert (l1.attention_params, l1.ffn_params) == (h + h * h, h + h * h)
    assert (l2.params, l2.kv_cache_bytes_per_token, l2.flops_per_token) == (0, 0, 0)
    assert l3.ffn_params == 0 and l3.kv_heads == 4 and l3.ffn_width is None
    assert [layer.kv_cache_bytes_per_token for layer in cost.layers] == [2 * 2 * hd * 2, 0, 0, 2 * 4 * hd * 2]
    # FLOPs: 2 per matmul weight (norms excluded) + 4 * heads * head_dim * seq_len per GQA layer.
    assert l0.flops_per_token == 2 * (l0.params - 2 * h) + 4 * 4 * hd * 10
    assert l1.flops_per_token == 2 * 2 * h * h
    assert cost.flops_per_token == sum(x.flops_per_token for x in cost.layers) + 2 * 100 * h
    assert cost.total_params == sum(x.params for x in cost.layers) + 2 * 100 * h + h
    d = cost.to_dict()
    assert d["num_layers"] == 4 and d["layers"][1]["attention_kind"] == "linear"


def test_seq_len_window_tied_and_dtype() -> None:
    gqa = BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(128))
    windowed = BlockConfig(
        attention=AttentionConfig(kind="gqa", num_key_value_heads=2, window_length=32), ffn=FFNConfig.swiglu(128)
    )
    cfg = _tiny([gqa, windowed])
    short, long = estimate_cost(cfg, seq_len=16), estimate_cost(cfg, seq_len=1024)
    per_key = 4 * 4 * 16  # 4 * heads * head_dim
    assert long.layers[0].flops_per_token - short.layers[0].flops_per_token == per_key * (1024 - 16)
    assert long.layers[1].flops_per_token - short.layers[1].flops_per_token == per_key * (32 - 16)
    assert short.total_params == long.total_params
    tied = estimate_cost(_tiny([gqa, gqa], tie_word_embeddings=True))
    untied = estimate_cost(_tiny([gqa, gqa]))
    assert tied.lm_head_params == 0 and untied.total_params - tied.total_params == 100 * 64
    assert tied.flops_per_token == untied.flops_per_token  # the output matmul runs either way
    assert estimate_cost(cfg, dtype_bytes=1).kv_cache_bytes_per_token * 2 == short.kv_cache_bytes_per_token
    assert short.memory_bytes(batch_size=3, seq_len=5) == short.total_params * 2 + 15 * short.kv_cache_bytes_per_token


@pytest.mark.parametrize("kwargs", [{"seq_len": 0}, {"seq_len": 2.5}, {"dtype_bytes": 0}])
def test_bad_arguments(kwargs: dict) -> None:
    cfg = _tiny([BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op())])
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        estimate_cost(cfg, **kwargs)
