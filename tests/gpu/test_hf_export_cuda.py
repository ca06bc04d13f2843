"""The Puzzle model (SDPA attention, bf16 on CUDA) against its Hugging Face export loaded in transformers'
``LlamaForCausalLM``: same logits in fp32, and bf16 errors of the same size as transformers' own bf16 error.
Run on a GPU machine: ``pytest -m gpu tests/gpu``."""

from __future__ import annotations

import json

import pytest
import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]


def plain_llama(layers: int = 4):
    """Every block standard GQA + SwiGLU of one width: exported as a plain ``LlamaForCausalLM`` config."""
    blocks = [BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(704)) for _ in range(layers)]
    return make_config(hidden_size=256, num_attention_heads=8, vocab_size=512, blocks=blocks, rope_theta=500000.0)


def test_puzzle_model_equals_its_hf_export_in_bf16(dist, tmp_path) -> None:
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint

    cfg = plain_llama()
    model = build_puzzle_model(cfg, params_dtype=torch.float32, seq_length=512)
    init_weights_layout_invariant_(model, seed=5, std=0.05)
    model.eval()
    assert next(model.parameters()).is_cuda
    out = export_hf_checkpoint(model, cfg, tmp_path / "hf", progress=False)
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["model_type"] == "llama", hf_config.get("model_type")

    tokens = torch.randint(0, 512, (2, 384), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ours32 = model(tokens, None, None).float()
    hf32 = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="sdpa")
    hf32 = hf32.cuda().eval()
    with torch.no_grad():
        theirs32 = hf32(input_ids=tokens, use_cache=False).logits.float()
    torch.testing.assert_close(ours32, theirs32, atol=2e-4, rtol=2e-4)

    model_bf16 = build_puzzle_model(cfg, params_dtype=torch.bfloat16, seq_length=512)
    with torch.no_grad():
        for p16, p32 in zip(model_bf16.parameters(), model.parameters(), strict=True):
            p16.copy_(p32)
    model_bf16.eval()
    hf16 = hf32.to(torch.bfloat16)
    with torch.no_grad():
        ours16 = model_bf16(tokens, None, None).float()
        theirs16 = hf16(input_ids=tokens, use_cache=False).logits.float()
    ours_err = (ours16 - ours32).abs()
    theirs_err = (theirs16 - theirs32).abs()
    between = (ours16 - theirs16).abs()
    agree = (ours16.argmax(-1) == theirs16.argmax(-1)).float().mean().item()
    print(
        f"[gpu] bf16 logits vs fp32: ours max {ours_err.max():.4f} mean {ours_err.mean():.5f}; transformers max "
        f"{theirs_err.max():.4f} mean {theirs_err.mean():.5f}; ours vs transformers mean {between.mean():.5f}, "
        f"argmax agreement {agree:.4f}"
    )
    assert ours_err.mean() <= 1.5 * theirs_err.mean() + 1e-4
    assert between.mean() <= 2.0 * theirs_err.mean() + 1e-4
    assert agree > 0.95
