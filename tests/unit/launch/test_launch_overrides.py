"""Dotted overrides: type checking, suggestions for unknown keys, lists, dicts, None blocks, round trips."""

from __future__ import annotations

import json

import pytest

from nemotron_plugins.launch.build import UnknownRecipeError, build_recipe
from nemotron_plugins.launch.overrides import OverrideError, apply_overrides, from_dict, render, to_dict
from nemotron_plugins.launch.recipe_config import RecipeConfig


def tiny(*overrides: str) -> RecipeConfig:
    return build_recipe("tiny_puzzle_grpo_cpu", list(overrides))


def test_typed_values() -> None:
    cfg = tiny(
        "optimizer.lr=3e-7",
        "train_steps=7",
        "parallel.sequence_parallel=false",
        "parallel.pipeline_layout=[3,3]",
        "cluster.time_limit=04:00:00",
        "data.splits=math,code",
        "optimizer.lr_schedule=cosine",
        "model.overrides.vocab_size=256",
        "rewards.0.weight=2",
        "generation.max_num_seqs=null",
        'data.synthetic={"min_value": 5}',
    )
    assert cfg.optimizer.lr == 3e-7 and isinstance(cfg.optimizer.lr, float)
    assert cfg.train_steps == 7
    assert cfg.parallel.sequence_parallel is False
    assert cfg.parallel.pipeline_layout == [3, 3]
    assert cfg.cluster.time_limit == "04:00:00"
    assert cfg.data.splits == ["math", "code"]
    assert cfg.optimizer.lr_schedule == "cosine"
    assert cfg.model.overrides == {"vocab_size": 256}
    assert cfg.rewards[0].weight == 2.0
    assert cfg.generation.max_num_seqs is None
    assert cfg.data.synthetic.min_value == 5 and cfg.data.synthetic.max_value == 999  # a block from a dict


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train_steps=ten", "train_steps: expected an int, got 'ten'"),
        ("train_steps=1.5", "expected an int"),
        ("optimizer.lr=fast", "optimizer.lr: expected a float"),
        ("parallel.sequence_parallel=2", "expected a bool"),
        ("optimizer.lr_schedule=cosin", "is not one of 'constant', 'cosine', 'linear'"),
        ("parallel.pipeline_layout=[1,x]", "parallel.pipeline_layout[1]: expected an int"),
        ("optimizer=3", "optimizer is a OptimizerConfig block: set its fields instead"),
        ("rewards.5.weight=1", "is a list of 2 items"),
        ("train_steps", "must look like key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(OverrideError, match=None) as info:
        tiny(override)
    assert fragment in str(info.value)


def test_unknown_key_suggests_nearest() -> None:
    with pytest.raises(OverrideError) as info:
        tiny("optimizer.lrr=1")
    assert "unknown key 'optimizer.lrr'" in str(info.value)
    assert "did you mean optimizer.lr" in str(info.value)
    with pytest.raises(OverrideError) as info:
        tiny("parallel.tensor_parallel_size=2")
    assert "parallel.tensor_model_parallel_size" in str(info.value)


def test_unset_block_cannot_be_overridden_and_the_error_says_how_to_turn_it_on() -> None:
    with pytest.raises(OverrideError, match="sampler is not set in this recipe") as info:
        tiny("sampler.width=0.2")
    assert 'sampler={} (its defaults) or sampler={"width": ...}' in str(info.value)


def test_unknown_recipe_suggests_names() -> None:
    with pytest.raises(UnknownRecipeError, match="did you mean tiny_puzzle_sft_cpu"):
        build_recipe("tiny_puzzle_sft_cp")


def test_round_trip_through_json() -> None:
    cfg = tiny("optimizer.lr=1e-4")
    data = json.loads(render(cfg, "json"))
    assert data == to_dict(cfg)
    again = from_dict(RecipeConfig, data)
    assert again == cfg
    data["optimizer"]["lrr"] = 1
    with pytest.raises(OverrideError, match="did you mean optimizer.lr"):
        from_dict(RecipeConfig, data)


def test_yaml_render() -> None:
    pytest.importorskip("yaml")
    import yaml

    cfg = tiny()
    assert yaml.safe_load(render(cfg, "yaml")) == to_dict(cfg)


def test_apply_overrides_on_plain_dataclass() -> None:
    from nemotron_plugins.runtime.config import ParallelConfig

    p = apply_overrides(ParallelConfig(), ["tensor_model_parallel_size=4", "data_parallel_size=none"])
    assert p.tensor_model_parallel_size == 4 and p.data_parallel_size is None
