"""SDPA core attention: equal to megatron's local attention, packed == unpacked, the layer-spec registry honoured."""

from __future__ import annotations

import warnings

import pytest
import torch

from nemotron_plugins.puzzle.attention import (
    SDPACoreAttention,
    block_diagonal_causal_mask,
    packed_seq_params_from_segment_ids,
)
from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.model import PuzzleModelError, build_puzzle_model, init_weights_layout_invariant_

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def dist():
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed_context(seed=1) as ctx:
            yield ctx


def every_kind_config():
    """One layer of each attention / FFN kind, GQA with 1, 2 and 4 KV heads (4 query heads)."""
    gqa, linear, no_op = AttentionConfig.gqa, AttentionConfig.linear, AttentionConfig.no_op
    blocks = [
        BlockConfig(attention=gqa(2), ffn=FFNConfig.swiglu(128)),
        BlockConfig(attention=gqa(4), ffn=FFNConfig.swiglu(64)),
        BlockConfig(attention=linear(), ffn=FFNConfig.linear()),
        BlockConfig(attention=no_op(), ffn=FFNConfig(kind="swiglu", intermediate_size=192, fused_from=(128, 64))),
        BlockConfig(attention=gqa(1), ffn=FFNConfig.no_op()),
        BlockConfig(attention=gqa(2), ffn=FFNConfig.swiglu(96)),
    ]
    return make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=blocks)


def _core_attention_types(model) -> list[str]:
    return [
        type(m.self_attention.core_attention).__name__
        for m in model.decoder.layers
        if hasattr(getattr(m, "self_attention", None), "core_attention")
    ]


def _build(layer_spec: str | None, **kwargs):
    model = build_puzzle_model(every_kind_config(), layer_spec=layer_spec, seq_length=64, **kwargs)
    init_weights_layout_invariant_(model, seed=3)
    return model.eval()


def _logits(model, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, None, None, **kwargs).float()


def _megatron_local(q, k, v, mask=None):
    """megatron-core's DotProductAttention on the same inputs (fp32, causal)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    config = _layer_config(q.shape[2], k.shape[2], q.shape[3])
    module = DotProductAttention(config, 1, AttnMaskType.causal, "self")
    return module(q, k, v, mask)


def _layer_config(heads: int, groups: int, head_dim: int, **overrides):
    from megatron.core.transformer.transformer_config import TransformerConfig

    values = dict(
        num_layers=1,
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        attention_dropout=0.0,
        use_cpu_initialization=True,
    )
    values.update(overrides)
    return TransformerConfig(**values)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_core_attention_equals_megatron_local(dist, groups: int) -> None:
    from megatron.core.transformer.enums import AttnMaskType

    torch.manual_seed(0)
    s, b, heads, d = 17, 3, 4, 16
    q = torch.randn(s, b, heads, d, device=DEVICE)
    k, v = torch.randn(2, s, b, groups, d, device=DEVICE).unbind(0)
    ours = SDPACoreAttention(_layer_config(heads, groups, d), 1, AttnMaskType.causal, "self").to(DEVICE)
    expected = _megatron_local(q, k, v)
    got = ours(q, k, v, None)
    assert got.shape == expected.shape == (s, b, heads * d)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)

    # megatron's boolean mask (True = masked) replaces the causal one; a fully masked row attends uniformly.
    mask = torch.rand(b, 1, s, s, device=DEVICE) < 0.4
    mask[1, :, 5, :] = True
    torch.testing.assert_close(ours(q, k, v, mask), _megatron_local(q, k, v, mask), atol=2e-6, rtol=1e-5)


def test_kv_cache_decoding_is_bottom_right_causal(dist) -> None:
    """With a cache, queries are the last ``sq`` positions of the ``sk`` keys: equal to the full causal rows."""
    from megatron.core.transformer.enums import AttnMaskType

    torch.manual_seed(1)
    sk, b, heads, groups, d = 12, 2, 4, 2, 8
    q = torch.randn(sk, b, heads, d, device=DEVICE)
    k, v = torch.randn(2, sk, b, groups, d, device=DEVICE).unbind(0)
    ours = SDPACoreAttention(_layer_config(heads, groups, d), 1, AttnMaskType.causal, "self").to(DEVICE)
    full = ours(q, k, v, None)
    torch.testing.assert_close(ours(q[-3:], k, v, None), full[-3:], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours(q[-1:], k, v, None), full[-1:], atol=2e-6, rtol=1e-5)


def test_attention_dropout_applies_in_training_only(dist) -> None:
    from megatron.core.transformer.enums import AttnMaskType

    torch.manual_seed(2)
    q, k, v = torch.randn(3, 16, 2, 4, 8, device=DEVICE).unbind(0)
    ours = SDPACoreAttention(_layer_config(4, 4, 8, attention_dropout=0.5), 1, AttnMaskType.causal, "self")
    ours.eval()
    reference = ours(q, k, v, None)
    ours.train()
    dropped = ours(q, k, v, None)
    assert not torch.allclose(dropped, reference)
    ours.eval()
    torch.testing.assert_close(ours(q, k, v, None), reference)


def test_packed_seq_params_from_segment_ids() -> None:
    params = packed_seq_params_from_segment_ids(torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0], [0, 1, 1, 2]]))
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.dtype == torch.int32
    assert params.cu_seqlens_q.tolist() == [0, 2, 3, 4, 8, 9, 11, 12]
    assert params.cu_seqlens_kv.tolist() == params.cu_seqlens_q.tolist()
    assert params.max_seqlen_q == params.max_seqlen_kv == 4
    with pytest.raises(ValueError, match="segment_ids must be"):
        packed_seq_params_from_segment_ids(torch.tensor([0, 0, 1]))
    assert block_diagonal_causal_mask(torch.tensor([0, 2, 3])).int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_puzzle_sdpa_logits_equal_megatron_local_for_every_block_kind(dist) -> None:
    local, sdpa = _build("puzzle_local"), _build("puzzle_sdpa")
    assert set(_core_attention_types(local)) == {"DotProductAttention"}
    assert set(_core_attention_types(sdpa)) == {"SDPACoreAttention"}
    assert len(_core_attention_types(sdpa)) == 4  # the four GQA layers
    tokens = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    expected = _logits(local, tokens)
    got = _logits(sdpa, tokens)
    assert got.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_default_spec_is_sdpa_without_transformer_engine(dist) -> None:
    from nemotron_plugins.puzzle.layer_specs import have_transformer_engine

    model = build_puzzle_model(every_kind_config(), seq_length=64)
    expected = (
        "TEDotProductAttention" if have_transformer_engine() and torch.cuda.is_available() else "SDPACoreAttention"
    )
    assert set(_core_attention_types(model)) == {expected}
    assert set(_core_attention_types(build_puzzle_model(every_kind_config(), use_transformer_engine=False))) == {
        "SDPACoreAttention"
    }
    with pytest.raises(PuzzleModelError, match="not both"):
        build_puzzle_model(every_kind_config(), layer_spec="puzzle_sdpa", use_transformer_engine=False)
    with pytest.raises(PuzzleModelError, match="puzzle_sdpa"):
        build_puzzle_model(every_kind_config(), layer_spec="no_such_spec")


def test_registered_third_party_spec_takes_effect(dist) -> None:
    from nemotron_plugins.puzzle.layer_specs import puzzle_layer_spec
    from nemotron_plugins.registry import LAYER_SPECS

    calls = []

    def custom_spec(config, *, vp_stage=None, pp_rank=None):
        calls.append(config.num_layers)
        return puzzle_layer_spec(config, core_attention="local", vp_stage=vp_stage, pp_rank=pp_rank)

    LAYER_SPECS.register("test_custom_local", custom_spec)
    try:
        model = build_puzzle_model(every_kind_config(), layer_spec="test_custom_local")
    finally:
        LAYER_SPECS.unregister("test_custom_local")
    assert calls == [6]
    assert set(_core_attention_types(model)) == {"DotProductAttention"}


@pytest.mark.parametrize("backend", ["mask", "loop"])
def test_packed_logits_equal_each_document_alone(dist, backend: str) -> None:
    model = _build("puzzle_sdpa")
    for module in model.modules():
        if isinstance(module, SDPACoreAttention):
            module.packed_backend = backend
    g = torch.Generator().manual_seed(5)
    s = 24
    # Row 0: documents of 10 and 9 tokens, 5 padding; row 1: 7, 11 and 6 tokens.
    lengths = [[10, 9], [7, 11, 6]]
    segment_ids = torch.full((2, s), -1, dtype=torch.long)
    for row, docs in enumerate(lengths):
        start = 0
        for index, n in enumerate(docs):
            segment_ids[row, start : start + n] = index
            start += n
    tokens = torch.randint(0, 128, (2, s), generator=g)
    params = packed_seq_params_from_segment_ids(segment_ids.to(DEVICE))
    packed = _logits(model, tokens.reshape(1, -1).to(DEVICE), packed_seq_params=params).reshape(2, s, -1)
    for row, docs in enumerate(lengths):
        start = 0
        for n in docs:
            alone = _logits(model, tokens[row : row + 1, start : start + n].to(DEVICE))[0]
            torch.testing.assert_close(packed[row, start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n
    # The documents do see each other without the packing (the check above can fail).
    unpacked = _logits(model, tokens.to(DEVICE))
    assert not torch.allclose(unpacked[0, 10:19], packed[0, 10:19], atol=1e-3)
