"""Library variants are the stated functions of the parent's weights; replace-1-block scores follow from them."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.search.hf_forward import forward
from nemotron_plugins.puzzle.search.library import build_library, channel_contributions, substitute
from nemotron_plugins.puzzle.search.score import build_problem, score_variants
from tests.reference.tiny_checkpoints import random_hf_weights


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parent():
    blocks = [BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(64)) for _ in range(3)]
    return make_config(hidden_size=32, num_attention_heads=8, vocab_size=40, blocks=blocks, rms_norm_eps=1e-5)


def _ids(seq: int = 10) -> torch.Tensor:
    return torch.randint(0, 40, (2, seq), generator=torch.Generator().manual_seed(0))


def _variant(lib, layer, part, name):
    (v,) = [v for v in lib if (v.layer, v.part, v.name) == (layer, part, name)]
    return v


def test_pruning_drops_channels_that_contribute_nothing() -> None:
    cfg = _parent()
    w = random_hf_weights(cfg, seed=0, dtype=torch.float64)
    dead = torch.arange(0, 64, 2)  # half the channels write nothing to the residual stream
    w["model.layers.1.mlp.down_proj.weight"][:, dead] = 0.0
    contrib = channel_contributions(cfg, w, _ids())
    assert torch.all(contrib[1][dead] == 0) and torch.all(contrib[1][1::2] > 0)
    lib = build_library(cfg, w, _ids(), ffn_fractions=(1.0, 0.5))
    half = _variant(lib, 1, "ffn", "swiglu32")
    torch.testing.assert_close(half.tensors["mlp.gate_proj.weight"], w["model.layers.1.mlp.gate_proj.weight"][1::2])
    child_cfg, child_w = substitute(cfg, w, [half])
    assert child_cfg.blocks[1].ffn.intermediate_size == 32
    torch.testing.assert_close(forward(child_cfg, child_w, _ids()), forward(cfg, w, _ids()), rtol=0, atol=1e-12)


def test_kv_pooling_is_exact_when_pooled_heads_agree_and_linear_attention_on_one_token() -> None:
    cfg = _parent()
    w = random_hf_weights(cfg, seed=1, dtype=torch.float64)
    for name in ("k_proj", "v_proj"):  # KV heads 0=1 and 2=3 in layer 0: pooling to 2 heads changes nothing
        t = w[f"model.layers.0.self_attn.{name}.weight"].view(4, 4, 32)
        t[1], t[3] = t[0].clone(), t[2].clone()
    lib = build_library(cfg, w, _ids())
    assert {v.name for v in lib if v.layer == 0 and v.part == "attention"} == {
        "gqa4",
        "gqa2",
        "gqa1",
        "linear",
        "no_op",
    }
    child_cfg, child_w = substitute(cfg, w, [_variant(lib, 0, "attention", "gqa2")])
    torch.testing.assert_close(forward(child_cfg, child_w, _ids()), forward(cfg, w, _ids()), rtol=0, atol=1e-12)
    # pooling to one head is a mean: not exact here
    child_cfg, child_w = substitute(cfg, w, [_variant(lib, 0, "attention", "gqa1")])
    assert (forward(child_cfg, child_w, _ids()) - forward(cfg, w, _ids())).abs().max() > 1e-6
    # a one-token sequence attends only to itself: attention == W_o W_v exactly
    for layer in range(3):
        child_cfg, child_w = substitute(cfg, w, [_variant(lib, layer, "attention", "linear")])
        torch.testing.assert_close(forward(child_cfg, child_w, _ids(1)), forward(cfg, w, _ids(1)), rtol=0, atol=1e-12)


def test_linear_ffn_is_down_times_up() -> None:
    cfg = _parent()
    w = random_hf_weights(cfg, seed=2, dtype=torch.float64)
    lib = build_library(cfg, w, _ids())
    lin = _variant(lib, 2, "ffn", "linear")
    p = "model.layers.2."
    torch.testing.assert_close(
        lin.tensors["mlp.linear_mlp.weight"], w[p + "mlp.down_proj.weight"] @ w[p + "mlp.up_proj.weight"]
    )
    assert torch.equal(lin.tensors["post_attention_layernorm.weight"], w[p + "post_attention_layernorm.weight"])


def test_replace_one_block_scores_and_problem() -> None:
    cfg = _parent()
    w = random_hf_weights(cfg, seed=3)
    lib = build_library(cfg, w, _ids(), ffn_fractions=(1.0, 0.5))
    scores = score_variants(cfg, w, lib, _ids(), batch_sizes=(1,), seq_len=8)
    by = {(s.layer, s.part, s.name): s for s in scores}
    for layer in range(3):  # the parent's own blocks score 0; removing them scores > 0
        assert by[(layer, "attention", "gqa4")].score < 1e-6 and by[(layer, "ffn", "swiglu64")].score < 1e-6
        assert by[(layer, "attention", "no_op")].score > 1e-4 and by[(layer, "ffn", "no_op")].score > 1e-4
        assert by[(layer, "attention", "gqa4")].kv_bytes_per_token == 2 * 4 * 4 * 2
        assert by[(layer, "ffn", "no_op")].params == 0 and by[(layer, "ffn", "no_op")].runtime_s[1] == 0.0
    problem = build_problem(cfg, scores)
    assert len(problem.layers[0]) == 5 * 4  # (gqa4, gqa2, gqa1, linear, no_op) x (64, 32, linear, no_op)
    parent = next(o for o in problem.layers[0] if o.name == "attn=gqa4 ffn=swiglu64")
    assert parent.params == by[(0, "attention", "gqa4")].params + by[(0, "ffn", "swiglu64")].params
