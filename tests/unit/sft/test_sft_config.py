"""SFT config validation, recipe conversion and the tiny Puzzle config."""

from __future__ import annotations

import pytest

from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
from nemotron_plugins.runtime.config import ParallelConfig
from nemotron_plugins.sft.config import SFTConfigError, SFTRunConfig, from_recipe


def test_tiny_config_has_every_block_kind() -> None:
    cfg = tiny_puzzle_config(106)
    kinds = {(b.attention.kind, b.ffn.kind) for b in cfg.blocks}
    attn = {b.attention.kind for b in cfg.blocks}
    ffn = {b.ffn.kind for b in cfg.blocks}
    assert attn == {"gqa", "linear", "no_op"} and ffn == {"swiglu", "linear", "no_op"}
    assert {cfg.kv_heads(i) for i in range(cfg.num_layers) if cfg.kv_heads(i)} == {2, 4}
    assert {cfg.ffn_width(i) for i in range(cfg.num_layers) if cfg.ffn_width(i)} == {256, 384}
    assert cfg.head_dim == 32 and cfg.hidden_size == 128 and ("no_op", "no_op") not in kinds
    with pytest.raises(ValueError, match="num_layers"):
        tiny_puzzle_config(106, num_layers=7)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: setattr(c, "train_steps", 0), "train_steps"),
        (lambda c: setattr(c, "global_batch_size", 6), "global_batch_size"),
        (lambda c: setattr(c, "stop_after_steps", 999), "stop_after_steps"),
        (lambda c: setattr(c.model, "architecture", "huge"), "model.architecture"),
        (lambda c: setattr(c.data, "dataset", "nope"), "data.dataset"),
        (lambda c: setattr(c.data, "corrupt_fraction", 1.5), "corrupt_fraction"),
        (lambda c: setattr(c.data, "reasoning", "maybe"), "data.reasoning"),
        (lambda c: setattr(c.eval, "num_prompts", 10_000), "eval.num_prompts"),
        (lambda c: setattr(c.optimizer, "lr", 0.0), "optimizer.lr"),
        (lambda c: setattr(c.optimizer, "lr_schedule", "step"), "lr_schedule"),
        (lambda c: setattr(c, "parallel", ParallelConfig(context_parallel_size=2)), "context_parallel_size"),
        (lambda c: setattr(c.data, "path", "/does/not/exist"), "data.path"),
    ],
)
def test_bad_config_names_the_field(change, match: str) -> None:
    cfg = SFTRunConfig(micro_batch_size=4, global_batch_size=8)
    cfg.validate()
    change(cfg)
    with pytest.raises(SFTConfigError, match=match):
        cfg.validate()


def test_layout_must_fit_world() -> None:
    cfg = SFTRunConfig(parallel=ParallelConfig(tensor_model_parallel_size=2), micro_batch_size=4, global_batch_size=8)
    with pytest.raises(SFTConfigError, match="world size 3"):
        cfg.validate(3)
    cfg.validate(2)
    with pytest.raises(SFTConfigError, match="micro_batch_size \\* DP"):
        SFTRunConfig(micro_batch_size=4, global_batch_size=12).validate(2)


def test_from_recipe() -> None:
    from nemotron_plugins.launch.recipe_config import DataConfig, RecipeConfig
    from nemotron_plugins.runtime.config import ModelConfig

    recipe = RecipeConfig(
        name="x",
        task="sft",
        model=ModelConfig(architecture="tiny_puzzle", seq_length=128),
        data=DataConfig(
            num_train_samples=50, num_eval_samples=20, max_seq_length=128, options={"corrupt_fraction": 0.5}
        ),
        train_steps=7,
        micro_batch_size=2,
        global_batch_size=4,
    )
    cfg = from_recipe(recipe)
    assert cfg.train_steps == 7 and cfg.data.num_train_problems == 50 and cfg.data.corrupt_fraction == 0.5
    assert cfg.eval.num_prompts == 20 and cfg.data.num_heldout_problems == 20
    assert cfg.data.reasoning == "both" and cfg.data.dynamic_padding
    cfg.validate()
    recipe.data.reasoning = "on"
    assert from_recipe(recipe).data.reasoning == "on"
    recipe.data.options = {"bogus": 1}
    with pytest.raises(SFTConfigError, match="bogus"):
        from_recipe(recipe)
    recipe.task = "grpo"
    with pytest.raises(SFTConfigError, match="task"):
        from_recipe(recipe)
