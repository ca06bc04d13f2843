"""FFN Fusion planner: the search forward against the independent reference, exact checkpoint-level fusion (fp64),
and the Ultra-style plan on a synthetic parent whose dependency metric asks for it."""

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
    to_hf_config,
)
from nemotron_plugins.puzzle.ffn_fusion import FFNFusionError
from nemotron_plugins.puzzle.hf_checkpoint import export_hf_state_dict, read_hf_state_dict
from nemotron_plugins.puzzle.search.fuse_planner import (
    attention_free_runs,
    fuse_checkpoint,
    plan_fusion,
)
from nemotron_plugins.puzzle.search.hf_forward import forward
from tests.reference.decilm_reference import decilm_forward
from tests.reference.tiny_checkpoints import random_hf_weights, tiny_heterogeneous_config


def _parent():
    blocks = [BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(64))]
    blocks += [
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.swiglu(w)) for w in (256, 256, 512, 256, 256, 256)
    ]
    blocks += [BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(64))]
    return make_config(hidden_size=32, num_attention_heads=4, vocab_size=50, blocks=blocks, rms_norm_eps=1e-5)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(seed))


def test_search_forward_matches_the_reference() -> None:
    cfg = tiny_heterogeneous_config()  # every block kind
    weights = random_hf_weights(cfg, seed=3)
    ref = decilm_forward(weights, to_hf_config(cfg), _ids())
    ours = forward(cfg, weights, _ids())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_fused_checkpoint_equals_parallel_form_in_fp64(tmp_path: Path) -> None:
    cfg = _parent()
    weights = random_hf_weights(cfg, seed=1, dtype=torch.float64)
    groups = [range(1, 4), range(4, 6)]
    fused_cfg, fused = fuse_checkpoint(cfg, weights, groups)
    # Ultra form: wide FFN in the first block of each group, the others fully no-op, the layer count kept
    assert fused_cfg.num_hidden_layers == 8
    assert fused_cfg.blocks[1].ffn.intermediate_size == 256 + 256 + 512
    assert fused_cfg.blocks[1].ffn.fused_from == (256, 256, 512)
    assert fused_cfg.blocks[4].ffn.fused_from == (256, 256)
    assert all(fused_cfg.blocks[i].is_no_op for i in (2, 3, 5))
    export_hf_state_dict(fused, fused_cfg, tmp_path / "fused")
    loaded_cfg = load_hf_config(tmp_path / "fused")
    loaded = read_hf_state_dict(tmp_path / "fused")
    assert loaded["model.layers.1.mlp.gate_proj.weight"].dtype == torch.float64
    got = forward(loaded_cfg, loaded, _ids())
    want = forward(cfg, weights, _ids(), parallel_runs=groups)
    assert (got - want).abs().max().item() <= 1e-10
    # and fusion is not the identity on the sequential model
    assert (got - forward(cfg, weights, _ids())).abs().max().item() > 1e-4


def test_planner_produces_the_ultra_shape_when_the_metric_says_so() -> None:
    cfg = _parent()
    weights = random_hf_weights(cfg, seed=2, dtype=torch.float64)
    for layer in range(1, 6):  # small residual updates: later blocks barely depend on earlier ones
        weights[f"model.layers.{layer}.mlp.down_proj.weight"] *= 0.02
    assert attention_free_runs(cfg) == [range(1, 7)]
    plan = plan_fusion(cfg, weights, _ids(), threshold=0.05)
    assert plan.groups == ((1, 6),)  # all but the run's last block, as in the paper
    fused_cfg, _ = fuse_checkpoint(cfg, weights, plan.fused_ranges())
    assert fused_cfg.blocks[1].ffn.fused_from == (256, 256, 512, 256, 256)
    assert [b.is_no_op for b in fused_cfg.blocks] == [False, False, True, True, True, True, False, False]

    # a block that rewrites the residual stream makes its successors depend on it: the group splits there
    weights[f"model.layers.{3}.mlp.down_proj.weight"] *= 2000.0
    plan = plan_fusion(cfg, weights, _ids(), threshold=0.05)
    dep = torch.tensor(plan.dependencies[0])
    assert dep[2, 3] > 0.05  # layer 4 depends on layer 3
    assert plan.groups == ((1, 4), (4, 6))


def test_fusion_refuses_attention_inside_a_group() -> None:
    cfg = _parent()
    weights = random_hf_weights(cfg, seed=0, dtype=torch.float64)
    with pytest.raises(FFNFusionError, match=r"block_configs\[0\].attention is 'gqa'"):
        fuse_checkpoint(cfg, weights, [range(0, 2)])
