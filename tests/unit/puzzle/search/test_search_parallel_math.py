"""The vocab-parallel KL and LM loss of the Megatron search path, on one rank, against the reference formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.puzzle.search.parallel import (
    SearchParallel,
    SearchParallelError,
    stage_layer_counts,
    vocab_parallel_token_kl,
    vocab_parallel_token_nll,
)
from nemotron_plugins.puzzle.search.score import _token_kl
from nemotron_plugins.runtime.config import ParallelConfig
from nemotron_plugins.runtime.distributed import distributed_context


def test_padding_is_masked_out_of_the_kl_and_the_lm_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = 11
    p, q = torch.randn(2, 5, vocab, generator=gen), torch.randn(2, 5, vocab, generator=gen)
    ids = torch.randint(0, vocab, (2, 5), generator=gen)
    # three padded vocabulary entries with large logits: counted, they would dominate both softmaxes
    pad = torch.full((2, 5, 3), 9.0)
    with distributed_context(ParallelConfig(), seed=0):
        kl = vocab_parallel_token_kl(torch.cat([p, pad], -1), torch.cat([q, -pad], -1), vocab)
        nll = vocab_parallel_token_nll(torch.cat([q, pad], -1), ids, vocab)
    torch.testing.assert_close(kl, _token_kl(p, q), rtol=1e-12, atol=1e-12)
    ref = F.cross_entropy(q[:, :-1].double().flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(2, 4)
    torch.testing.assert_close(nll, ref, rtol=1e-12, atol=1e-12)


def test_settings_are_refused_naming_the_field() -> None:
    with pytest.raises(SearchParallelError, match="data_parallel_size must be >= 1"):
        SearchParallel(data_parallel_size=0).validate()
    with pytest.raises(SearchParallelError, match="micro_batch_size must be >= 1"):
        SearchParallel(micro_batch_size=0).validate()
    assert SearchParallel(tensor_model_parallel_size=2, data_parallel_size=3).world_size == 6
    with pytest.raises(SearchParallelError, match="pipeline_model_parallel_size must be >= 1, got 0"):
        SearchParallel(pipeline_model_parallel_size=0).validate()
    settings = SearchParallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, data_parallel_size=3)
    assert (settings.world_size, settings.layout) == (12, "TP2 PP2 DP3")
    assert SearchParallel(tensor_model_parallel_size=2).layout == "TP2 DP1"  # the run directories' spelling at PP1


def test_pipeline_stages_hold_at_least_one_layer_each() -> None:
    cfg = make_config(
        hidden_size=16,
        num_attention_heads=2,
        vocab_size=11,
        blocks=[BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(8))] * 3,
    )
    with pytest.raises(
        SearchParallelError, match="pipeline_model_parallel_size 4 is larger than the model's 3 layers"
    ):
        SearchParallel(pipeline_model_parallel_size=4).check_cfg(cfg)
    SearchParallel(pipeline_model_parallel_size=3).check_cfg(cfg)
    assert stage_layer_counts(3, 2) == [2, 1]
    assert stage_layer_counts(7, 3) == [3, 2, 2]
    assert stage_layer_counts(162, 4) == [41, 41, 40, 40]
    assert stage_layer_counts(4, 4) == [1, 1, 1, 1]
