"""Decoupled BLD lowers every child block's normalised MSE to its parent block on held-out tokens."""

from __future__ import annotations

import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.search.bld import blockwise_distill, evaluate
from nemotron_plugins.puzzle.search.library import build_library
from tests.reference.tiny_checkpoints import random_hf_weights


def test_bld_lowers_normalized_mse_on_held_out_tokens() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_bld()
    finally:
        torch.set_num_threads(threads)


def _check_bld() -> None:
    blocks = [BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(64)) for _ in range(2)]
    cfg = make_config(hidden_size=32, num_attention_heads=4, vocab_size=40, blocks=blocks, rms_norm_eps=1e-5)
    w = random_hf_weights(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    train, held = torch.randint(0, 40, (64, 12), generator=gen), torch.randint(0, 40, (8, 12), generator=gen)
    lib = [v for v in build_library(cfg, w, train[:8], ffn_fractions=(1.0, 0.25)) if v.name != "no_op"]
    before = evaluate(cfg, w, lib, held)
    trained, _ = blockwise_distill(cfg, w, lib, train, batch_size=8, epochs=4, lr=1e-2)
    after = evaluate(cfg, w, trained, held)
    assert before["0.ffn.swiglu64"] < 1e-10 and before["1.attention.gqa2"] < 1e-10  # the parent's own blocks
    for key in ("0.ffn.swiglu16", "1.ffn.swiglu16", "0.attention.gqa1", "0.attention.linear", "1.ffn.linear"):
        assert after[key] < 0.9 * before[key], (key, before[key], after[key])
    assert after["0.ffn.swiglu64"] < 0.05  # training from the exact solution stays near it
