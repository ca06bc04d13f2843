"""Stage 6: global knowledge distillation (cosine on hidden states + KL on logits) on the megatron training stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, load_hf_config, make_config
from nemotron_plugins.puzzle.hf_checkpoint import export_hf_state_dict, read_hf_state_dict
from nemotron_plugins.puzzle.search import hf_forward
from nemotron_plugins.puzzle.search.distill import (
    DistillError,
    DistillSettings,
    _batch_rows,
    cosine_distance_sum,
    distill,
    distill_loss_terms,
    run_distill,
)
from nemotron_plugins.puzzle.search.library import attention_variants, ffn_variants, substitute
from nemotron_plugins.puzzle.search.score import kl_to_parent
from tests.reference.tiny_checkpoints import random_hf_weights, write_hf_checkpoint


def _parent_and_child(tmp_path: Path, *, tied: bool = False) -> tuple[Path, Path]:
    blocks = [BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(64)) for _ in range(3)]
    cfg = make_config(
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=64,
        blocks=blocks,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
    )
    weights = random_hf_weights(cfg, seed=0)
    weights = {k: v * 4 if "proj" in k else v for k, v in weights.items()}  # a parent far from the identity
    parent = write_hf_checkpoint(tmp_path / "parent", cfg, weights)
    gen = torch.Generator().manual_seed(1)
    contrib = torch.rand(64, generator=gen)
    chosen = [
        ffn_variants(cfg, weights, 0, [16], contrib)[0],  # swiglu16
        attention_variants(cfg, weights, 1, [2])[0],  # gqa2 (mean-pooled; TP2 needs even KV heads)
        attention_variants(cfg, weights, 2, [])[0],  # linear attention (W_o W_v)
        ffn_variants(cfg, weights, 2, [], None)[-1],  # no_op FFN
    ]
    child_cfg, child_w = substitute(cfg, weights, chosen)
    child = export_hf_state_dict(child_w, child_cfg, tmp_path / "child")
    return parent, child


def _layer_outputs(cfg, weights, ids) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = hf_forward.embed(cfg, weights, ids)
    outs = []
    for i in range(cfg.num_hidden_layers):
        x = hf_forward.run_layers(cfg, weights, x, [i])
        outs.append(x.transpose(0, 1))  # megatron's [seq, batch, hidden]
    return hf_forward.lm_head(cfg, weights, x), outs


def test_loss_terms_are_zero_for_identical_models_and_kl_matches_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen)
    hidden = [torch.randn(5, 2, 8, generator=gen) for _ in range(3)]
    kl, cos = distill_loss_terms(logits, logits, hidden, hidden)
    assert kl.shape == cos.shape == (2, 5)
    torch.testing.assert_close(kl, torch.zeros_like(kl), atol=1e-6, rtol=0)
    torch.testing.assert_close(cos, torch.zeros_like(cos), atol=1e-6, rtol=0)
    other = torch.randn(2, 5, 11, generator=gen)
    kl, cos = distill_loss_terms(logits, other, hidden, [-h for h in hidden], temperature=2.0)
    p, q = (logits / 2).softmax(-1), (other / 2).softmax(-1)
    torch.testing.assert_close(kl, 4 * (p * (p.log() - q.log())).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cos, torch.full_like(cos, 2.0))  # opposite hidden states: 1 - (-1)


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(DistillError, match="global_batch_size 6 must split"):
        DistillSettings(global_batch_size=6, micro_batch_size=4).validate(16)
    with pytest.raises(DistillError, match="more than the 4 training sequences"):
        DistillSettings(global_batch_size=8).validate(4)
    with pytest.raises(DistillError, match="temperature"):
        DistillSettings(temperature=0).validate(16)
    with pytest.raises(DistillError, match="not both 0"):
        DistillSettings(kl_weight=0, cosine_weight=0).validate(16)


def test_pipeline_settings_are_validated_naming_the_field() -> None:
    with pytest.raises(DistillError, match="pipeline_model_parallel_size must be >= 1, got 0"):
        DistillSettings(pipeline_model_parallel_size=0).validate(16)
    with pytest.raises(DistillError, match="pipeline_model_parallel_size 4 is larger than the model's 3 layers"):
        DistillSettings(pipeline_model_parallel_size=4).validate(16, 3)
    DistillSettings(pipeline_model_parallel_size=3).validate(16, 3)  # one layer per stage
    settings = DistillSettings(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, data_parallel_size=3)
    assert settings.world_size == 12
    uneven = settings.parallel_config(3)
    assert (uneven.tensor_model_parallel_size, uneven.pipeline_model_parallel_size) == (2, 2)
    assert uneven.pipeline_layout == [2, 1]
    assert settings.parallel_config(4).pipeline_layout is None  # an even split needs no layout


def test_cosine_share_of_each_stage_adds_up_to_the_mean_over_all_layers() -> None:
    gen = torch.Generator().manual_seed(0)
    parent = [torch.randn(5, 2, 8, generator=gen) for _ in range(5)]
    child = [torch.randn(5, 2, 8, generator=gen) for _ in range(5)]
    _, mean = distill_loss_terms(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), parent, child)
    stages = cosine_distance_sum(parent[:3], child[:3]) + cosine_distance_sum(parent[3:], child[3:])
    torch.testing.assert_close(stages / 5, mean)
    with pytest.raises(DistillError, match="0 parent layer outputs"):
        cosine_distance_sum([], [])


def test_a_process_group_of_another_pipeline_size_is_refused(tmp_path: Path) -> None:
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import distributed_context

    parent, child = _parent_and_child(tmp_path)
    tokens = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(2))
    with (
        distributed_context(ParallelConfig()),
        pytest.raises(DistillError, match="pipeline_model_parallel_size 2 but"),
    ):
        distill(parent, child, tokens, tmp_path / "out", DistillSettings(pipeline_model_parallel_size=2))


def test_distill_first_step_loss_matches_an_independent_forward_and_kl_falls(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    parent, child = _parent_and_child(tmp_path)
    gen = torch.Generator().manual_seed(2)
    train = torch.randint(0, 64, (16, 12), generator=gen)
    held = torch.randint(0, 64, (8, 12), generator=gen)
    settings = DistillSettings(
        steps=25, global_batch_size=8, micro_batch_size=4, lr=3e-3, lr_schedule="constant", seed=3
    )
    result = run_distill(parent, child, train, tmp_path / "out", settings)
    assert len(result.losses) == 25 and result.layout == "TP1 DP1"

    # step 1's loss (before any update) is the KL + cosine of the HF-tensor forward on the same rows
    p_cfg, p_w = load_hf_config(parent), read_hf_state_dict(parent)
    c_cfg, c_w = load_hf_config(child), read_hf_state_dict(child)
    ids = train[_batch_rows(16, 0, 8, 3)]
    p_logits, p_hidden = _layer_outputs(p_cfg, p_w, ids)
    c_logits, c_hidden = _layer_outputs(c_cfg, c_w, ids)
    kl, cos = distill_loss_terms(p_logits, c_logits, p_hidden, c_hidden)
    first = result.losses[0]
    assert first["kl"] > 0.01 and first["cosine"] > 0.001
    assert first["kl"] == pytest.approx(kl.mean().item(), rel=1e-4)
    assert first["cosine"] == pytest.approx(cos.mean().item(), rel=1e-4)
    assert first["loss"] == pytest.approx(first["kl"] + first["cosine"], rel=1e-6)

    # the written child is the trained one: its held-out KL to the parent fell
    out_cfg, out_w = load_hf_config(tmp_path / "out"), read_hf_state_dict(tmp_path / "out")
    assert out_cfg.blocks == c_cfg.blocks

    before = kl_to_parent(p_cfg, p_w, c_cfg, c_w, held, batch_size=3)
    after = kl_to_parent(p_cfg, p_w, out_cfg, out_w, held)
    assert after < 0.8 * before, (before, after)
    # zero-padded FFN channels of the export (swiglu16 stored at 256) stay zero through training
    down = out_w["model.layers.0.mlp.down_proj.weight"]
    assert down.shape[1] == 256 and torch.count_nonzero(down[:, 16:]) == 0
