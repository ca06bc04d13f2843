"""FFN Fusion: the exact weight construction and the config transformation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    load_hf_config,
    make_config,
    parse_hf_config,
    to_hf_config,
)
from nemotron_plugins.puzzle.cost import estimate_cost
from nemotron_plugins.puzzle.ffn_fusion import (
    FFNFusionError,
    SwiGLUWeights,
    fuse_block_configs,
    fuse_swiglu,
    split_swiglu,
    swiglu_forward,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "puzzle"
HIDDEN = 48
EPS = 1e-5


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    return out if weight is None else out * weight


def _reference_swiglu(w: SwiGLUWeights, x: torch.Tensor) -> torch.Tensor:
    """Written out independently of the module: down @ (silu(gate @ x) * (up @ x))."""
    g = x @ w.gate.T
    return (g * torch.sigmoid(g) * (x @ w.up.T)) @ w.down.T


def _random_ffn(width: int, gen: torch.Generator, *, norm: bool) -> SwiGLUWeights:
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) / shape[-1] ** 0.5

    return SwiGLUWeights(
        gate=rnd(width, HIDDEN),
        up=rnd(width, HIDDEN),
        down=rnd(HIDDEN, width),
        norm=(1 + 0.5 * torch.randn(HIDDEN, generator=gen, dtype=torch.float64)) if norm else None,
    )


@pytest.mark.parametrize("with_norms", [False, True])
def test_fused_ffn_equals_sum_of_parallel_ffns(with_norms: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    ffns = [_random_ffn(w, gen, norm=with_norms) for w in (16, 40, 8, 24)]
    fused = fuse_swiglu(ffns)
    assert fused.width == 88 and fused.gate.dtype == torch.float64
    x = torch.randn(3, 7, HIDDEN, generator=gen, dtype=torch.float64)

    expected = x + sum(_reference_swiglu(f, _rms_norm(x, f.norm)) for f in ffns)
    got = x + swiglu_forward(fused, _rms_norm(x, fused.norm))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if with_norms:
        assert torch.equal(fused.norm, torch.ones(HIDDEN, dtype=torch.float64))
    # The parallel form is not the sequential one (that is what distillation fixes afterwards).
    sequential = x
    for f in ffns:
        sequential = sequential + _reference_swiglu(f, _rms_norm(sequential, f.norm))
    assert not torch.allclose(sequential, expected)


def test_split_inverts_fuse() -> None:
    gen = torch.Generator().manual_seed(1)
    ffns = [_random_ffn(w, gen, norm=False) for w in (5, 11, 3)]
    parts = split_swiglu(fuse_swiglu(ffns), (5, 11, 3))
    assert len(parts) == 3
    for part, original in zip(parts, ffns, strict=True):
        assert torch.equal(part.gate, original.gate)
        assert torch.equal(part.up, original.up)
        assert torch.equal(part.down, original.down)
    # With folded norms the parts compute the same functions.
    normed = [_random_ffn(w, gen, norm=True) for w in (5, 11, 3)]
    x = torch.randn(4, HIDDEN, generator=gen, dtype=torch.float64)
    for part, original in zip(split_swiglu(fuse_swiglu(normed), (5, 11, 3)), normed, strict=True):
        torch.testing.assert_close(
            swiglu_forward(part, _rms_norm(x, part.norm)), swiglu_forward(original, _rms_norm(x, original.norm))
        )


def test_weight_errors() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = _random_ffn(4, gen, norm=True), _random_ffn(4, gen, norm=False)
    with pytest.raises(FFNFusionError, match="norm weights given for some FFNs"):
        fuse_swiglu([a, b])
    with pytest.raises(FFNFusionError, match="at least one"):
        fuse_swiglu([])
    with pytest.raises(FFNFusionError, match="sum to 7"):
        split_swiglu(fuse_swiglu([a, a]), (3, 4))
    with pytest.raises(FFNFusionError, match="down must be"):
        SwiGLUWeights(gate=torch.zeros(4, 8), up=torch.zeros(4, 8), down=torch.zeros(4, 8))
    other = SwiGLUWeights(gate=torch.zeros(4, 9), up=torch.zeros(4, 9), down=torch.zeros(9, 4))
    with pytest.raises(FFNFusionError, match="hidden size 9"):
        fuse_swiglu([b, other])


def _cfg():
    ffn_only = [BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.swiglu(w)) for w in (256, 512, 768)]
    return make_config(
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=100,
        blocks=[
            BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)),
            *ffn_only,
            BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
            BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.swiglu(256)),
            BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.linear()),
        ],
    )


def test_fuse_block_configs() -> None:
    cfg = _cfg()
    fused = fuse_block_configs(cfg, [range(1, 4)])
    assert fused.num_hidden_layers == cfg.num_hidden_layers  # layer count kept
    assert fused.blocks[1].ffn == FFNConfig(kind="swiglu", intermediate_size=1536, fused_from=(256, 512, 768))
    assert fused.blocks[2].is_no_op and fused.blocks[3].is_no_op
    assert fused.blocks[0] == cfg.blocks[0] and fused.blocks[4:] == cfg.blocks[4:]
    before, after = estimate_cost(cfg), estimate_cost(fused)
    assert before.total_params - after.total_params == 2 * 64  # two FFN norms fewer, same FFN weights

    # A no-op FFN inside a run contributes nothing; fusing a fused FFN again flattens its parts.
    again = fuse_block_configs(fused, [range(1, 6)])
    assert again.blocks[1].ffn.fused_from == (256, 512, 768, 256)
    assert all(b.is_no_op for b in again.blocks[2:6])

    # The extension survives HF round trips in both styles.
    out = to_hf_config(again)
    assert out["nemotron_plugins"] == {"fused_from": {"1": [256, 512, 768, 256]}}
    assert parse_hf_config(out) == again
    assert parse_hf_config(to_hf_config(again, field_style="decilm")).architecture() == again.architecture()


def test_fuse_real_super_run_writes_decilm() -> None:
    cfg = load_hf_config(FIXTURES / "llama-3_3-nemotron-super-49b-v1.json")
    run = range(42, 46)
    assert all(cfg.blocks[i].attention.kind == "no_op" for i in run)
    fused = fuse_block_configs(cfg, [run])
    width = sum(cfg.ffn_width(i) for i in run)
    out = to_hf_config(fused)
    assert out["block_configs"][42]["ffn"]["ffn_mult"] * 2 * 8192 / 3 == width
    assert out["block_configs"][43]["ffn"] == {
        "ffn_mult": None,
        "no_op": True,
        "replace_with_linear": False,
        "sparsify": None,
    }
    assert parse_hf_config(out) == fused


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([range(0, 3)], r"block_configs\[0\]\.attention is 'gqa'; FFN Fusion only fuses attention-free blocks"),
        ([range(5, 7)], r"block_configs\[6\]\.attention is 'gqa'"),
        ([range(1, 3), range(2, 4)], "layer 2 is in both runs"),
        ([range(1, 2)], "needs at least 2"),
        ([range(5, 9)], "outside layers"),
        ([range(1, 4, 2)], "step 1"),
    ],
)
def test_fuse_block_configs_errors(runs: list[range], expected: str) -> None:
    with pytest.raises(FFNFusionError, match=expected):
        fuse_block_configs(_cfg(), runs)


def test_linear_ffn_in_run_rejected() -> None:
    cfg = make_config(
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=10,
        blocks=[
            BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.swiglu(256)),
            BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.linear()),
        ],
    )
    with pytest.raises(FFNFusionError, match=r"block_configs\[1\]\.ffn is 'linear'"):
        fuse_block_configs(cfg, [range(0, 2)])
