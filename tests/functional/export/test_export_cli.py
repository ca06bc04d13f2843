"""``nemotron-plugins export CHECKPOINT --hf DIR``: what other loaders read from the written directory.

Oracles: transformers' ``LlamaForCausalLM`` where the written config is plain Llama, the independent DeciLM
reference (``tests/reference/decilm_reference.py``) where it is nemotron-nas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemotron_plugins.cli.main import main
from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, load_hf_config, make_config
from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from tests.reference.decilm_reference import decilm_forward
from tests.reference.tiny_checkpoints import (
    random_hf_weights,
    tensor_hashes,
    tiny_heterogeneous_config,
    write_hf_checkpoint,
)

transformers = pytest.importorskip("transformers")
IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(3))


def _export(src: Path, out: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["export", str(src), "--hf", str(out), "--max-shard-size", "20KB", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _written(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / "config.json").read_text()), read_hf_state_dict(out)


def test_standard_blocks_with_width_96_export_as_llama_that_transformers_loads(tmp_path: Path, capsys) -> None:
    """The issue's case: widths that are not multiples of 256 used to be labelled Llama without global sizes."""
    block = BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(96))
    cfg = make_config(hidden_size=32, num_attention_heads=4, vocab_size=50, blocks=[block] * 3)
    assert cfg.field_style == "puzzletron"  # no ffn_mult exists for width 96
    weights = random_hf_weights(cfg, seed=5)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights, shards=2)
    (src / "tokenizer.json").write_text("{}")  # any tokenizer file is copied verbatim

    summary = _export(src, tmp_path / "out", capsys=capsys)
    assert summary["kind"] == "hf" and summary["architectures"] == ["LlamaForCausalLM"]
    config, exported = _written(tmp_path / "out")
    assert (config["intermediate_size"], config["num_key_value_heads"]) == (96, 2)
    assert "block_configs" not in config
    assert tensor_hashes(exported) == tensor_hashes(weights)
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"

    llama = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        got = llama(IDS).logits
    expected = decilm_forward(weights, json.loads((src / "config.json").read_text()), IDS)
    assert (got - expected).abs().max().item() <= 1e-5


def test_heterogeneous_export_is_nemotron_nas_with_padded_ffns(tmp_path: Path, capsys) -> None:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg, seed=6)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights)
    (src / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')

    summary = _export(src, tmp_path / "out", capsys=capsys)
    assert summary["model_type"] == "nemotron-nas"
    config, exported = _written(tmp_path / "out")
    assert config["architectures"] == ["DeciLMForCausalLM"]
    # Every SwiGLU width is written as a DeciLM ffn_mult whose rounded width is the (padded) tensor width.
    for i, block in enumerate(config["block_configs"]):
        if "ffn_mult" in block["ffn"] and block["ffn"]["ffn_mult"] is not None:
            width = exported[f"model.layers.{i}.mlp.gate_proj.weight"].shape[0]
            assert width % 256 == 0 and -(-int(2 * block["ffn"]["ffn_mult"] * 32 / 3) // 256) * 256 == width
    expected = decilm_forward(weights, json.loads((src / "config.json").read_text()), IDS)
    assert (decilm_forward(exported, config, IDS) - expected).abs().max().item() <= 1e-5
    # Exporting the export again changes nothing (widths are multiples of 256 now).
    _export(tmp_path / "out", tmp_path / "again", capsys=capsys)
    assert tensor_hashes(read_hf_state_dict(tmp_path / "again")) == tensor_hashes(exported)
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == config


def test_fixture_checkpoint_exports_with_tokenizer_and_generation_config(tmp_path: Path, capsys) -> None:
    from nemotron_plugins.fixtures import write_fixture_checkpoint

    src = write_fixture_checkpoint(tmp_path / "fixture", seed=1)
    summary = _export(src, tmp_path / "out", "--dtype", "float32", "--max-shard-size", "50MB", capsys=capsys)
    out = tmp_path / "out"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors.index.json"):
        assert name in summary["files"], name
        if name != "model.safetensors.index.json":
            assert (out / name).read_bytes() == (src / name).read_bytes()
    config, exported = _written(out)
    source_config = json.loads((src / "config.json").read_text())
    assert config["block_configs"] == source_config["block_configs"]
    assert config["torch_dtype"] == "float32"
    source = read_hf_state_dict(src)
    assert all(exported[k].dtype == torch.float32 and torch.equal(exported[k], v.float()) for k, v in source.items())
    tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tok.convert_tokens_to_ids("<|eot_id|>") == 5
    assert load_hf_config(out).architecture() == load_hf_config(src).architecture()


def test_single_rank_sft_checkpoint_exports(tmp_path: Path, capsys) -> None:
    """An SFT-trainer checkpoint (single-rank Megatron state + puzzle_config) goes through the pure mapping."""
    from nemotron_plugins.puzzle.block_config import to_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import hf_to_megatron_tensor, plan_megatron_tensors
    from nemotron_plugins.runtime.checkpoint import save_training_state

    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg, seed=7)
    state = {
        p.megatron_name: hf_to_megatron_tensor(p, weights, cfg, padded_vocab_size=64)
        for p in plan_megatron_tensors(cfg)
    }
    save_training_state(
        tmp_path / "sft",
        step=4,
        model_state=state,
        extra={"puzzle_config": to_hf_config(cfg), "tokenizer": "tiny"},
        rng=False,
    )
    summary = _export(tmp_path / "sft", tmp_path / "out", capsys=capsys)
    assert summary["kind"] == "sft"
    config, exported = _written(tmp_path / "out")
    expected = decilm_forward(weights, to_hf_config(cfg), IDS)
    assert (decilm_forward(exported, config, IDS) - expected).abs().max().item() <= 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    assert len(tok) == 106  # the tiny character tokenizer the run trained with
    assert "generation_config.json" in summary["files"]


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        main(["export", str(tmp_path / "empty"), "--hf", str(tmp_path / "out")])
    assert err.value.code == 1
    assert "is not a checkpoint this command reads" in capsys.readouterr().err
