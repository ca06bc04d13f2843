"""The refit stream in one process: bucket planning and its memory bound, TP slicing, and clear errors.

The multi-process cases (TP2, TP2 x PP2, logits of an HF model built from the stream) are in
``tests/functional/rl/test_refit_stream.py``.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch

from nemotron_plugins.puzzle.hf_checkpoint import HFCheckpointError, expected_hf_tensors, hf_export_layout
from nemotron_plugins.rl.refit import hf_tp_slice, plan_refit, stream_hf_weights
from tests.reference.tiny_checkpoints import tiny_heterogeneous_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def dist():
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(torch.cuda, "is_available", lambda: False)
        warnings.simplefilter("ignore")
        with distributed_context() as ctx:
            yield ctx


@pytest.fixture(scope="module")
def policy(dist):
    from nemotron_plugins.puzzle.model import build_puzzle_model

    cfg = tiny_heterogeneous_config()
    torch.manual_seed(0)
    return cfg, build_puzzle_model(cfg, device="cpu")


def test_buckets_are_bounded_and_keep_fused_groups_together(policy):
    cfg, model = policy
    plan = plan_refit(model, config=cfg, bucket_bytes=10_000)
    largest_unit = max(u.nbytes for b in plan.buckets for u in b)
    assert largest_unit > 10_000  # a padded gate (256 x 32 fp32) exceeds the bucket: alone
    assert plan.max_bucket_nbytes <= max(10_000, largest_unit)
    assert all(len(b) == 1 for b in plan.buckets if sum(u.nbytes for u in b) > 10_000)
    assert plan.names == list(expected_hf_tensors(hf_export_layout(cfg).export_cfg))
    units = [u.names for b in plan.buckets for u in b]
    assert ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight") in units  # fmt: skip
    # gate and up come from one Megatron tensor but stream (and are gathered) one at a time: wide FFNs are the
    # largest tensors of a Puzzle model
    assert ("model.layers.0.mlp.gate_proj.weight",) in units and ("model.layers.0.mlp.up_proj.weight",) in units
    streamed = [[n for n, _ in bucket] for bucket in stream_hf_weights(model, config=cfg, bucket_bytes=10_000)]
    assert streamed == [[n for u in b for n in u.names] for b in plan.buckets]
    one = plan_refit(model, config=cfg, bucket_bytes=1 << 30)
    assert len(one.buckets) == 1 and one.total_nbytes == plan.total_nbytes


def test_the_stream_holds_no_bucket_it_handed_out(policy):
    cfg, model = policy
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    previous: list[weakref.ref] = []
    alive = 0
    buckets = 0
    for bucket in stream_hf_weights(model, config=cfg, bucket_bytes=4096, dtype=torch.bfloat16):
        gc.collect()
        alive += sum(r() is not None for r in previous)
        previous = [weakref.ref(t) for _, t in bucket if t.untyped_storage().data_ptr() not in params]
        assert previous  # bf16 copies: every tensor is the stream's own
        buckets += 1
        del bucket
    assert alive == 0 and buckets > 5


def test_tp_slices_reassemble(policy):
    cfg, model = policy
    full = {n: t for b in stream_hf_weights(model, config=cfg) for n, t in b}
    slices = [{n: t for b in stream_hf_weights(model, config=cfg, tp_shard=(r, 2)) for n, t in b} for r in (0, 1)]
    for name, tensor in full.items():
        a, b = slices[0][name], slices[1][name]
        if name.endswith("norm.weight"):
            assert torch.equal(a, tensor) and torch.equal(b, tensor)
        else:
            dim = 1 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0
            assert torch.equal(torch.cat([a, b], dim=dim), tensor), name
    plan = plan_refit(model, config=cfg, tp_shard=(1, 2))
    assert plan.total_nbytes < plan_refit(model, config=cfg).total_nbytes


def test_hf_tp_slice():
    vocab = torch.arange(50.0).unsqueeze(1)
    parts = [hf_tp_slice(vocab, 0, r, 4, name="lm_head.weight") for r in range(4)]
    assert [p.shape[0] for p in parts] == [13, 13, 13, 11] and torch.equal(torch.cat(parts), vocab)
    with pytest.raises(HFCheckpointError, match="model.layers.0.mlp.gate_proj.weight: dimension 0 of size 96"):
        hf_tp_slice(torch.zeros(96, 4), 0, 0, 5, name="model.layers.0.mlp.gate_proj.weight")
    norm = torch.ones(4)
    assert hf_tp_slice(norm, None, 1, 2) is norm


def test_bad_arguments_are_named(policy):
    cfg, model = policy
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_refit(model, config=cfg, bucket_bytes=0)
    with pytest.raises(ValueError, match="tp_shard"):
        plan_refit(model, config=cfg, tp_shard=(2, 2))
    with pytest.raises(ValueError, match="dtype 'int3'"):
        plan_refit(model, config=cfg, dtype="int3")
    assert {t.dtype for b in stream_hf_weights(model, config=cfg, dtype="bfloat16") for _, t in b} == {torch.bfloat16}


def test_a_model_that_does_not_match_the_config_is_named(policy):
    import dataclasses

    from nemotron_plugins.puzzle.block_config import FFNConfig

    cfg, model = policy
    blocks = list(cfg.blocks)
    blocks[0] = dataclasses.replace(blocks[0], ffn=FFNConfig.swiglu(64))
    wrong = dataclasses.replace(cfg, blocks=tuple(blocks))
    with pytest.raises(HFCheckpointError, match=r"decoder.layers.0.mlp.linear_fc1.weight \(layer 0\).*gate_proj"):
        plan_refit(model, config=wrong)
