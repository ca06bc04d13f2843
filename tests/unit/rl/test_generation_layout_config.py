"""``generation.megatron_layout``: the megatron engine at the training layout or at its own, used or refused."""

from __future__ import annotations

import pytest

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.validation import validate_recipe
from nemotron_plugins.rl.engines.base import EngineLayout
from nemotron_plugins.rl.generation import engine_settings


def _errors(*overrides: str) -> list[str]:
    return validate_recipe(build_recipe("tiny_puzzle_grpo_cpu", list(overrides))).errors


def test_own_layout_lifts_the_training_layout_rules() -> None:
    two = ["cluster.devices_per_node=2"]
    # At the training layout the generation TP must be the training TP and PP is refused ...
    assert any(
        "generates with the policy at its training TP" in e
        for e in _errors(*two, "generation.tensor_model_parallel_size=2")
    )
    pp = [*two, "parallel.pipeline_model_parallel_size=2"]
    assert any("generation.megatron_layout='training'" in e for e in _errors(*pp))
    # ... a copy at its own layout takes any of them.
    own = "generation.megatron_layout=generation"
    for errors in (_errors(*two, own, "generation.tensor_model_parallel_size=2"), _errors(*pp, own)):
        assert not any("megatron_layout" in e or "training TP" in e for e in errors), errors


def test_megatron_layout_is_refused_where_nothing_reads_it() -> None:
    errors = _errors("generation.engine=vllm", "generation.megatron_layout=generation")
    assert any("generation.megatron_layout='generation' is a megatron-engine setting" in e for e in errors), errors


def test_engine_settings_carry_the_generation_tp_only_for_a_copy() -> None:
    colocated = build_recipe("tiny_puzzle_grpo_cpu")
    assert "tensor_parallel_size" not in engine_settings(colocated, 106)
    copy = build_recipe("tiny_puzzle_grpo_cpu", ["generation.megatron_layout=generation"])
    assert engine_settings(copy, 106)["tensor_parallel_size"] == 1


def test_engine_layout_groups_consecutive_ranks() -> None:
    layout = EngineLayout(world_size=8, rank=5, tp_size=2)
    assert (layout.tp_rank, layout.dp_size, layout.dp_rank) == (1, 4, 2)
    with pytest.raises(ValueError, match="must divide the world size 8"):
        EngineLayout(world_size=8, rank=0, tp_size=3)
