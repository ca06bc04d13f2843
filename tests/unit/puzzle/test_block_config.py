"""The Puzzle block-config schema: parsing, validation, exact write-back, style conversion."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    BlockConfigError,
    FFNConfig,
    ffn_mult_to_intermediate_size,
    intermediate_size_to_ffn_mult,
    load_hf_config,
    make_config,
    parse_hf_config,
    reject_unimplemented,
    save_hf_config,
    to_hf_config,
    to_megatron_block_configs,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "puzzle"
SUPER = FIXTURES / "llama-3_3-nemotron-super-49b-v1.json"


@pytest.fixture(scope="module")
def super_dict() -> dict:
    return json.loads(SUPER.read_text())


def _puzzletron_attention(kv: int | None, *, no_op: bool = False, linear: bool = False) -> dict:
    return {
        "no_op": no_op,
        "replace_with_linear": linear,
        "sparsify": None,
        "weights_precision": "bf16",
        "num_key_value_heads": kv,
        "llama4": None,
        "mamba": None,
    }


def _puzzletron_ffn(width: int | None, *, no_op: bool = False, linear: bool = False) -> dict:
    return {
        "no_op": no_op,
        "replace_with_linear": linear,
        "sparsify": None,
        "weights_precision": "bf16",
        "moe": None,
        "intermediate_size": width,
    }


@pytest.fixture
def puzzletron_dict() -> dict:
    """A small puzzletron-style config as Model Optimizer writes it (dataclasses.asdict order per block)."""
    blocks = [
        {"attention": _puzzletron_attention(4), "ffn": _puzzletron_ffn(1536), "parallel_blocks": None},
        {"attention": _puzzletron_attention(2), "ffn": _puzzletron_ffn(768), "parallel_blocks": None},
        {"attention": _puzzletron_attention(None, no_op=True), "ffn": _puzzletron_ffn(512), "parallel_blocks": None},
        {
            "attention": _puzzletron_attention(None, linear=True),
            "ffn": _puzzletron_ffn(None, linear=True),
            "parallel_blocks": None,
        },
        {
            "attention": _puzzletron_attention(None, no_op=True),
            "ffn": _puzzletron_ffn(None, no_op=True),
            "parallel_blocks": None,
        },
    ]
    return {
        "architectures": ["LlamaForCausalLM"],
        "block_configs": blocks,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 512,
        "intermediate_size": 1536,
        "max_position_embeddings": 8192,
        "model_type": "llama",
        "num_attention_heads": 8,
        "num_hidden_layers": len(blocks),
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "vocab_size": 1000,
    }


# ---------------------------------------------------------------------------------------------------- real config


def test_super_config_facts(super_dict: dict) -> None:
    cfg = parse_hf_config(super_dict)
    assert cfg.field_style == "decilm"
    assert cfg.num_hidden_layers == len(cfg.blocks) == 80
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.vocab_size) == (8192, 64, 128, 128256)
    kinds = [b.attention.kind for b in cfg.blocks]
    assert kinds.count("gqa") == 49 and kinds.count("no_op") == 31
    assert {cfg.kv_heads(i) for i in range(80) if kinds[i] == "gqa"} == {8}
    assert all(cfg.kv_heads(i) is None for i in range(80) if kinds[i] == "no_op")
    widths = {cfg.ffn_width(i) for i in range(80)}
    assert len(widths) == 6
    assert {28672, 14336} <= widths  # ffn_mult 5.25 and 2.625
    assert cfg.ffn_width(0) == 14336 and cfg.ffn_width(1) == 28672
    assert cfg.tie_word_embeddings is False
    assert cfg.rope_scaling["rope_type"] == "llama3"


def test_super_round_trip_is_exact(super_dict: dict) -> None:
    original = copy.deepcopy(super_dict)
    out = to_hf_config(parse_hf_config(super_dict))
    assert out == original
    assert json.dumps(out, indent=2) == json.dumps(original, indent=2)  # key order too
    assert super_dict == original  # the input was not modified


def test_super_to_puzzletron_and_back(super_dict: dict) -> None:
    cfg = parse_hf_config(super_dict)
    puzzletron = to_hf_config(cfg, field_style="puzzletron")
    attn0, ffn0 = puzzletron["block_configs"][0]["attention"], puzzletron["block_configs"][0]["ffn"]
    assert attn0["num_key_value_heads"] == 8 and "n_heads_in_group" not in attn0
    assert ffn0["intermediate_size"] == 14336 and "ffn_mult" not in ffn0
    # decilm-only keys at their defaults are dropped, not carried into the other style
    assert "num_sink_tokens" not in attn0 and "unshifted_sink" not in attn0
    again = parse_hf_config(puzzletron)
    assert again.field_style == "puzzletron"
    assert again.architecture() == cfg.architecture()
    decilm = to_hf_config(again, field_style="decilm")
    assert parse_hf_config(decilm).architecture() == cfg.architecture()
    # Widths with an exact multiplier come back as the original ffn_mult.
    assert decilm["block_configs"][0]["ffn"]["ffn_mult"] == 2.625
    assert decilm["block_configs"][1]["ffn"]["ffn_mult"] == 5.25


# ---------------------------------------------------------------------------------------------------- puzzletron


def test_puzzletron_round_trip_is_exact(puzzletron_dict: dict) -> None:
    original = copy.deepcopy(puzzletron_dict)
    cfg = parse_hf_config(puzzletron_dict)
    assert cfg.field_style == "puzzletron"
    assert [b.attention.kind for b in cfg.blocks] == ["gqa", "gqa", "no_op", "linear", "no_op"]
    assert [b.ffn.kind for b in cfg.blocks] == ["swiglu", "swiglu", "swiglu", "linear", "no_op"]
    assert [cfg.kv_heads(i) for i in range(5)] == [4, 2, None, None, None]
    assert [cfg.ffn_width(i) for i in range(5)] == [1536, 768, 512, None, None]
    out = to_hf_config(cfg)
    assert out == original
    assert json.dumps(out) == json.dumps(original)
    # Optional keys absent from the source stay absent.
    del puzzletron_dict["block_configs"][4]["parallel_blocks"]
    del puzzletron_dict["block_configs"][1]["attention"]["weights_precision"]
    assert to_hf_config(parse_hf_config(puzzletron_dict)) == puzzletron_dict


def test_puzzletron_to_decilm_and_back(puzzletron_dict: dict) -> None:
    cfg = parse_hf_config(puzzletron_dict)
    decilm = to_hf_config(cfg, field_style="decilm")
    block0 = decilm["block_configs"][0]
    assert block0["attention"]["n_heads_in_group"] == 2  # 8 heads / 4 KV heads
    assert ffn_mult_to_intermediate_size(block0["ffn"]["ffn_mult"], 512) == 1536
    assert "parallel_blocks" not in block0 and "weights_precision" not in block0["ffn"]
    parsed = parse_hf_config(decilm)
    assert parsed.field_style == "decilm"
    assert parsed.architecture() == cfg.architecture()
    assert to_hf_config(parsed, field_style="puzzletron") == puzzletron_dict


def test_unrepresentable_width_in_decilm_style_names_block() -> None:
    cfg = make_config(
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=100,
        blocks=[
            BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)),
            BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(100)),
        ],
    )
    assert cfg.field_style == "puzzletron"
    with pytest.raises(BlockConfigError, match=r"block_configs\[1\]\.ffn\.intermediate_size: width 100"):
        to_hf_config(cfg, field_style="decilm")


def test_sliding_window_is_decilm_only(super_dict: dict) -> None:
    data = copy.deepcopy(super_dict)
    data["block_configs"][3]["attention"]["window_length"] = 4096
    cfg = parse_hf_config(data)
    assert cfg.blocks[3].attention.window_length == 4096
    assert to_hf_config(cfg) == data
    with pytest.raises(BlockConfigError, match=r"block_configs\[3\]\.attention\.window_length"):
        to_hf_config(cfg, field_style="puzzletron")


def test_sliding_window_is_rejected_wherever_a_model_is_built(super_dict: dict) -> None:
    """window_length parses (round trips, cost estimates) but is never accepted and ignored by a model build."""
    data = copy.deepcopy(super_dict)
    data["block_configs"][3]["attention"]["window_length"] = 4096
    cfg = parse_hf_config(data)
    with pytest.raises(BlockConfigError, match=r"block_configs\[3\]\.attention\.window_length.*not implemented"):
        to_megatron_block_configs(cfg)
    with pytest.raises(BlockConfigError, match=r"^cfg.json: block_configs\[3\].*layer 3"):
        reject_unimplemented(cfg, source="cfg.json")
    data["block_configs"][3]["attention"]["window_length"] = None
    reject_unimplemented(parse_hf_config(data))  # null means full attention


def test_non_default_decilm_extra_is_not_dropped_silently(super_dict: dict) -> None:
    data = copy.deepcopy(super_dict)
    data["block_configs"][2]["attention"]["num_sink_tokens"] = 4
    cfg = parse_hf_config(data)
    assert to_hf_config(cfg) == data
    with pytest.raises(BlockConfigError, match=r"block_configs\[2\]\.attention\.num_sink_tokens"):
        to_hf_config(cfg, field_style="puzzletron")


def test_plain_llama_config_becomes_homogeneous_blocks() -> None:
    data = {
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 768,
        "num_hidden_layers": 3,
        "vocab_size": 500,
        "model_type": "llama",
    }
    cfg = parse_hf_config(data)
    assert cfg.architecture() == (("gqa", 2, "swiglu", 768),) * 3
    out = to_hf_config(cfg)
    assert {k: v for k, v in out.items() if k != "block_configs"} == data
    assert parse_hf_config(out).architecture() == cfg.architecture()


# ---------------------------------------------------------------------------------------------------- validation


def _mutate(data: dict, path: tuple, value: object) -> dict:
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("block_configs", 12, "attention", "n_heads_in_group"),
            7,
            r"block_configs\[12\]\.attention\.n_heads_in_group: 7 ",
        ),
        (("block_configs", 3, "attention", "n_heads_in_group"), 0, r"block_configs\[3\]\.attention\.n_heads_in_group"),
        (
            ("block_configs", 3, "attention", "n_heads_in_group"),
            2.0,
            r"block_configs\[3\]\.attention\.n_heads_in_group",
        ),
        (
            ("block_configs", 0, "attention", "n_heads_in_group"),
            None,
            r"block_configs\[0\]\.attention\.n_heads_in_group: is required",
        ),
        (
            ("block_configs", 6, "attention", "replace_with_linear"),
            True,
            r"block_configs\[6\]\.attention\.replace_with_linear: cannot be true together with no_op",
        ),
        (("block_configs", 5, "ffn", "ffn_mult"), 0, r"block_configs\[5\]\.ffn\.ffn_mult: must be a positive number"),
        (("block_configs", 5, "ffn", "ffn_mult"), -1.5, r"block_configs\[5\]\.ffn\.ffn_mult"),
        (("block_configs", 5, "ffn", "ffn_mult"), "5.25", r"block_configs\[5\]\.ffn\.ffn_mult"),
        (
            ("block_configs", 9, "attention", "heads_per_group"),
            8,
            r"block_configs\[9\]\.attention\.heads_per_group: unknown key",
        ),
        (("block_configs", 9, "ffn", "width"), 8, r"block_configs\[9\]\.ffn\.width: unknown key"),
        (("block_configs", 9, "mlp"), {}, r"block_configs\[9\]\.mlp: unknown key"),
        (("block_configs", 9, "ffn"), _DELETE, r"block_configs\[9\]\.ffn: is required"),
        (("block_configs", 4, "ffn", "no_op"), "yes", r"block_configs\[4\]\.ffn\.no_op: must be true or false"),
        (("block_configs", 4, "ffn", "intermediate_size"), 1024, r"block_configs\[4\]: mixes decilm keys"),
        (("block_configs", 4, "parallel_blocks"), [], r"block_configs\[4\]\.parallel_blocks"),
        (("num_hidden_layers",), 79, r"block_configs: has 80 entries but num_hidden_layers is 79"),
        (("hidden_act",), "gelu", r"hidden_act: only 'silu'"),
        (("hidden_size",), -8192, r"hidden_size: hidden_size must be a positive integer"),
        (("vocab_size",), _DELETE, r"vocab_size: is required"),
        (("nemotron_plugins",), {"fused": {}}, r"nemotron_plugins\.fused: unknown key"),
    ],
)
def test_invalid_decilm_configs_name_the_field(super_dict: dict, path: tuple, value: object, expected: str) -> None:
    with pytest.raises(BlockConfigError, match=expected):
        parse_hf_config(_mutate(super_dict, path, value), source="super.json")


def test_error_message_starts_with_source(super_dict: dict) -> None:
    data = _mutate(super_dict, ("block_configs", 12, "attention", "n_heads_in_group"), 7)
    with pytest.raises(BlockConfigError) as info:
        parse_hf_config(data, source="super.json")
    message = str(info.value)
    assert message.startswith("super.json: block_configs[12].attention.n_heads_in_group: 7 does not divide")
    assert "[1, 2, 4, 8, 16, 32, 64]" in message  # what would be valid
    assert info.value.path == "super.json: block_configs[12].attention.n_heads_in_group"


@pytest.mark.parametrize(
    ("block", "key", "value", "expected"),
    [
        (
            1,
            "attention",
            {"num_key_value_heads": 3},
            r"block_configs\[1\]\.attention\.num_key_value_heads: 3 does not divide",
        ),
        (0, "attention", {"llama4": {"use_rope": True}}, r"block_configs\[0\]\.attention\.llama4: is not supported"),
        (0, "ffn", {"moe": {"num_local_experts": 8}}, r"block_configs\[0\]\.ffn\.moe: is not supported"),
        (2, "ffn", {"intermediate_size": 0}, r"block_configs\[2\]\.ffn\.intermediate_size"),
        (2, "ffn", {"intermediate_size": None}, r"block_configs\[2\]\.ffn\.intermediate_size: is required"),
        (4, "ffn", {"no_op": True, "replace_with_linear": True}, r"block_configs\[4\]\.ffn\.replace_with_linear"),
    ],
)
def test_invalid_puzzletron_configs_name_the_field(
    puzzletron_dict: dict, block: int, key: str, value: dict, expected: str
) -> None:
    puzzletron_dict["block_configs"][block][key].update(value)
    with pytest.raises(BlockConfigError, match=expected):
        parse_hf_config(puzzletron_dict)


def test_mixed_styles_across_blocks_rejected(super_dict: dict, puzzletron_dict: dict) -> None:
    data = copy.deepcopy(super_dict)
    data["block_configs"][10] = {"attention": _puzzletron_attention(8), "ffn": _puzzletron_ffn(28672)}
    with pytest.raises(BlockConfigError, match=r"block_configs\[10\]: is written in puzzletron style"):
        parse_hf_config(data)


def test_dataclass_validation() -> None:
    with pytest.raises(BlockConfigError, match="num_key_value_heads"):
        AttentionConfig(kind="gqa")
    with pytest.raises(BlockConfigError, match="num_key_value_heads"):
        AttentionConfig(kind="no_op", num_key_value_heads=8)
    with pytest.raises(BlockConfigError, match="kind"):
        AttentionConfig(kind="mamba")
    with pytest.raises(BlockConfigError, match="intermediate_size"):
        FFNConfig(kind="swiglu", intermediate_size=-4)
    with pytest.raises(BlockConfigError, match="fused_from"):
        FFNConfig(kind="swiglu", intermediate_size=300, fused_from=(100, 100))
    with pytest.raises(BlockConfigError, match=r"block_configs\[0\]\.attention\.num_key_value_heads: 3 KV heads"):
        make_config(
            hidden_size=64,
            num_attention_heads=4,
            vocab_size=10,
            blocks=[BlockConfig(attention=AttentionConfig.gqa(3), ffn=FFNConfig.no_op())],
        )
    with pytest.raises(BlockConfigError, match=r"block_configs\[0\]\.ffn\.ffn_mult: ffn_mult 1.0 gives width"):
        make_config(
            hidden_size=64,
            num_attention_heads=4,
            vocab_size=10,
            blocks=[
                BlockConfig(
                    attention=AttentionConfig.no_op(),
                    ffn=FFNConfig(kind="swiglu", intermediate_size=512, ffn_mult=1.0),
                )
            ],
        )


# ---------------------------------------------------------------------------------------------------- files


def test_load_accepts_file_or_directory(tmp_path: Path, super_dict: dict) -> None:
    (tmp_path / "config.json").write_text(json.dumps(super_dict))
    assert load_hf_config(tmp_path) == load_hf_config(tmp_path / "config.json") == parse_hf_config(super_dict)


def test_non_json_file_error_names_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "hidden_size": 64,\n  "num_attention_heads": 4,,\n}\n')
    with pytest.raises(BlockConfigError) as info:
        load_hf_config(bad)
    message = str(info.value)
    assert str(bad) in message and "line 3, column 28" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BlockConfigError, match="no such file"):
        load_hf_config(tmp_path / "nope.json")


def test_top_level_must_be_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(BlockConfigError, match="must be a JSON object"):
        load_hf_config(path)


def test_save_and_load(tmp_path: Path, super_dict: dict) -> None:
    cfg = parse_hf_config(super_dict)
    save_hf_config(cfg, tmp_path)  # a directory gets config.json
    assert json.loads((tmp_path / "config.json").read_text()) == super_dict
    save_hf_config(cfg, tmp_path / "p.json", field_style="puzzletron")
    assert load_hf_config(tmp_path / "p.json").architecture() == cfg.architecture()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


# ---------------------------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("mult", "hidden", "width"),
    [(5.25, 8192, 28672), (2.625, 8192, 14336), (1.0, 8192, 5632), (0.5, 8192, 2816), (39.0, 16384, 425984)],
)
def test_ffn_mult_to_intermediate_size(mult: float, hidden: int, width: int) -> None:
    assert ffn_mult_to_intermediate_size(mult, hidden) == width


@given(units=st.integers(1, 2000), hidden=st.sampled_from([64, 256, 1000, 4096, 8192, 16384]))
def test_intermediate_size_to_ffn_mult_inverts(units: int, hidden: int) -> None:
    width = 256 * units
    mult = intermediate_size_to_ffn_mult(width, hidden)
    assert mult is not None and ffn_mult_to_intermediate_size(mult, hidden) == width


def test_intermediate_size_to_ffn_mult_rejects_non_multiples() -> None:
    assert intermediate_size_to_ffn_mult(1000, 4096) is None


def test_make_config_defaults_hash_and_equality() -> None:
    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(512)),
        BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.linear()),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
    ]
    cfg = make_config(hidden_size=128, num_attention_heads=4, vocab_size=300, blocks=blocks)
    assert cfg.field_style == "decilm" and cfg.head_dim == 32 and cfg.num_hidden_layers == 3
    assert cfg.blocks[2].is_no_op
    out = to_hf_config(cfg)
    assert out["model_type"] == "nemotron-nas"
    assert out["block_configs"][1]["attention"]["replace_with_linear"] is True
    back = parse_hf_config(out)
    assert back == cfg and hash(back) == hash(cfg)
    assert len({cfg, back}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3  # type: ignore[misc]
    assert to_hf_config(back) == out


def test_fused_from_extension_round_trip(super_dict: dict) -> None:
    data = copy.deepcopy(super_dict)
    data["nemotron_plugins"] = {"fused_from": {"6": [7168, 7168]}}
    cfg = parse_hf_config(data)
    assert cfg.blocks[6].ffn.fused_from == (7168, 7168)
    assert to_hf_config(cfg) == data


@pytest.mark.parametrize(
    ("ext", "expected"),
    [
        (
            {"fused_from": {"6": [7168, 7000]}},
            r"nemotron_plugins\.fused_from\['6'\]: widths \[7168, 7000\] sum to 14168",
        ),
        ({"fused_from": {"80": [1, 2]}}, r"nemotron_plugins\.fused_from\['80'\]: is not a layer index"),
        ({"fused_from": {"x": [1, 2]}}, r"nemotron_plugins\.fused_from\['x'\]: keys must be layer indices"),
        ({"fused_from": {"6": 14336}}, r"nemotron_plugins\.fused_from\['6'\]: must be a list"),
        ({"fused_from": {"6": [14336]}}, r"at least two positive integer widths"),
    ],
)
def test_fused_from_extension_errors(super_dict: dict, ext: dict, expected: str) -> None:
    data = copy.deepcopy(super_dict)
    data["nemotron_plugins"] = ext
    with pytest.raises(BlockConfigError, match=expected):
        parse_hf_config(data)


def test_megatron_heterogeneous_config_reads_our_block_configs() -> None:
    """megatron-core's own parser sees the same per-layer sizes, including widths decilm cannot spell."""
    pytest.importorskip("megatron.core")
    from megatron.core.transformer.heterogeneous.heterogeneous_config import HeterogeneousTransformerConfig

    cfg = make_config(
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=100,
        blocks=[
            BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96)),
            BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.linear()),
            BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
            BlockConfig(attention=AttentionConfig.gqa(1), ffn=FFNConfig.swiglu(160)),
        ],
    )
    mcfg = HeterogeneousTransformerConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        heterogeneous_layers_config_encoded_json=json.dumps(to_megatron_block_configs(cfg)),
    )
    seen = [
        (
            p.attention.no_op,
            p.attention.replace_with_linear,
            p.attention.num_query_groups,
            p.mlp.no_op,
            p.mlp.replace_with_linear,
            p.mlp.ffn_hidden_size,
        )
        for p in mcfg.per_block_parameters
    ]
    assert seen == [
        (False, False, 2, False, False, 96),
        (False, True, None, False, True, None),
        (True, False, None, True, False, None),
        (False, False, 1, False, False, 160),
    ]
    assert (mcfg.get_config_for_layer(4).num_query_groups, mcfg.get_config_for_layer(4).ffn_hidden_size) == (1, 160)


def test_transformers5_rope_parameters_are_read():
    from nemotron_plugins.puzzle.block_config import parse_hf_config

    data = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "vocab_size": 100,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0},
    }
    cfg = parse_hf_config(data)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling["rope_type"] == "llama3"
    plain = parse_hf_config({**data, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert plain.rope_theta == 1e6 and plain.rope_scaling is None
