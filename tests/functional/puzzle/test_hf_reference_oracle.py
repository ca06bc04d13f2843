"""The plain-PyTorch DeciLM reference (tests/reference) agrees with transformers' LlamaForCausalLM on a Llama model.

This validates the oracle that the heterogeneous parity tests rely on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.hf_checkpoint import expected_hf_tensors, read_hf_state_dict
from tests.reference.decilm_reference import decilm_forward

transformers = pytest.importorskip("transformers")


def test_reference_matches_transformers_llama(tmp_path: Path) -> None:
    torch.set_num_threads(2)
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
        rope_theta=50000.0,
        tie_word_embeddings=False,
        initializer_range=0.25,  # large enough weights that RoPE details change the logits visibly
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)

    weights = read_hf_state_dict(tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
        got = decilm_forward(weights, hf_config, ids)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4

    # The oracle needs the right rope base: a wrong one must be visible.
    wrong = dict(hf_config, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, rope_theta=10000.0)
    with torch.no_grad():
        assert (decilm_forward(weights, wrong, ids) - expected).abs().max().item() > 100 * max(diff, 1e-6)


def test_llama_checkpoint_names_match_the_importer_expectations(tmp_path: Path) -> None:
    """A transformers-saved Llama is the all-standard DeciLM case: same tensor names as our config implies."""
    from nemotron_plugins.puzzle.block_config import load_hf_config

    config = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    cfg = load_hf_config(tmp_path)
    assert set(read_hf_state_dict(tmp_path)) == set(expected_hf_tensors(cfg))
