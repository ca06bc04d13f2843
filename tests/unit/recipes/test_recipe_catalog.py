"""Every builtin recipe builds on CPU (no torch) and passes the pre-launch validation, and the shipped model
configs have the published sizes."""

from __future__ import annotations

import re

import pytest

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.recipe_config import RecipeConfig
from nemotron_plugins.launch.validation import validate_recipe
from nemotron_plugins.puzzle.block_config import load_hf_config
from nemotron_plugins.puzzle.cost import estimate_cost
from nemotron_plugins.registry import RECIPES, import_target
from recipes import plugins as recipe_plugins
from recipes.common import NANO_8B_CONFIG, SUPER_49B_CONFIG, ULTRA_253B_CONFIG, model_config_path
from tests.run_configs import paper_on_fixture

BUILTIN = sorted(recipe_plugins.BUILTIN_RECIPES)
GPU_NAME = re.compile(
    r"^(?P<model>[a-z0-9_]+)_(?P<task>sft|grpo|rloo|rpo)_(?P<n>\d+)gpu_h100_(?P<precision>bf16|fp8)$"
)
ULTRA_GRPO = "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16"


def test_required_recipes_are_registered() -> None:
    names = set(RECIPES.names())
    for model in ("nano_8b", "super_49b", "ultra_253b"):
        for task in ("sft", "grpo", "rloo"):
            assert any(n.startswith(f"llama_nemotron_{model}_{task}_") for n in names), (model, task)
    assert {"tiny_puzzle_sft_cpu", "tiny_puzzle_grpo_cpu", ULTRA_GRPO} <= names


PAPER = [n for n in BUILTIN if not n.endswith("_cpu")]
GENERATED_INPUTS = {
    name: ("runs/preference_data", "runs/tiny_reward_model_cpu")
    for name in ("tiny_preference_sft_cpu", "tiny_reward_model_cpu", "tiny_rpo_online_cpu", "tiny_rpo_offline_cpu")
}
GENERATED_INPUTS.update({name: ("runs/tool_data",) for name in ("tiny_tool_sft_cpu", "tiny_tool_grpo_cpu")})
GENERATED_INPUTS.update({name: ("runs/ifrl_data",) for name in ("tiny_ifrl_sft_cpu", "tiny_ifrl_rloo_cpu")})
"""Tiny recipes whose inputs are written first (`python -m nemotron_plugins.preference.synthetic write`, the tiny
reward model's run, `python -m nemotron_plugins.data.synthetic_tools write`, `python -m
nemotron_plugins.data.synthetic_instructions write`); validation refuses them, naming those paths, until then."""


@pytest.fixture(scope="module")
def fixture_paths(tmp_path_factory):
    from nemotron_plugins.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixture"))


@pytest.mark.parametrize("name", BUILTIN)
def test_recipe_builds_and_validates(name: str) -> None:
    """Tiny recipes validate as they are; paper recipes validate their layout and memory but refuse to run without
    the checkpoint and data they train on, naming the fields and how to get them."""
    target = recipe_plugins.BUILTIN_RECIPES[name]
    assert target.endswith(f":{name}_config"), "the function is named <recipe>_config"
    config = build_recipe(name)
    assert isinstance(config, RecipeConfig)
    assert config.name == name
    report = validate_recipe(config)
    assert report.memory is not None and report.memory.peak <= config.cluster.gpu_memory_gb * 1e9
    if config.cluster.device == "cuda":
        assert not report.ok
        assert any(e.startswith("model.checkpoint is not set") and config.model.hub_id in e for e in report.errors)
        assert any(e.startswith("data.path is not set") and "huggingface-cli download" in e for e in report.errors)
        match = GPU_NAME.match(name)
        assert match, f"{name} does not follow <model>_<task>_<N>gpu_h100_<precision>"
        assert int(match["n"]) == config.world_size
        assert match["task"] == config.task
        assert config.optimizer.bf16 == (match["precision"] == "bf16")
    else:
        if name in GENERATED_INPUTS:  # their files come from documented commands (recipes/preference.py)
            assert all(any(p in e for p in GENERATED_INPUTS[name]) for e in report.errors), report.errors
            assert validate_recipe(config, inputs=False, plugins=False).ok
        else:
            assert report.ok, report.errors
        assert name.endswith("_cpu") and not config.optimizer.bf16


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_validates_on_the_fixture_scaled_down(name: str, fixture_paths) -> None:
    """The paper recipe's code path with the fixture checkpoint and Post-Training-format data, on one CPU process."""
    config = paper_on_fixture(
        name, fixture_paths, "model.seq_length=512", "data.max_seq_length=256", "micro_batch_size=1"
    )
    report = validate_recipe(config)
    assert report.ok, report.errors


def test_recipe_functions_return_fresh_configs() -> None:
    fn = import_target(recipe_plugins.BUILTIN_RECIPES["tiny_puzzle_sft_cpu"])
    a, b = fn(), fn()
    a.optimizer.lr = 123.0
    assert b.optimizer.lr != 123.0


def test_register_is_idempotent() -> None:
    recipe_plugins.register()
    recipe_plugins.register()
    assert "tiny_puzzle_grpo_cpu" in RECIPES


def test_ultra_grpo_matches_the_paper() -> None:
    config = build_recipe(ULTRA_GRPO)
    p = config.parallel
    assert (config.cluster.nodes, config.cluster.devices_per_node) == (72, 8)
    assert (p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size) == (8, 18, 2)
    assert p.sequence_parallel and config.data_parallel_size == 2
    assert config.generation.tensor_model_parallel_size == 8 and config.generation.fp8
    assert config.world_size // config.generation.tensor_model_parallel_size == 72
    alg = config.algorithm
    assert (alg.num_prompts_per_rollout, alg.num_generations, alg.updates_per_rollout(576)) == (72, 16, 2)
    assert config.global_batch_size == 576
    assert len(p.pipeline_layout) == 18 and sum(p.pipeline_layout) == 162 and min(p.pipeline_layout) >= 1
    # It validates at its paper layout, CP2 included: only the checkpoint and the data it trains on are missing.
    errors = validate_recipe(config).errors
    assert len(errors) == 2, errors
    assert errors[0].startswith("model.checkpoint is not set") and errors[1].startswith("data.path is not set")


def test_tiny_grpo_starts_from_the_tiny_sft_checkpoint(tmp_path) -> None:
    grpo = build_recipe("tiny_puzzle_grpo_cpu", [f"output_dir={tmp_path / 'grpo'}"])
    sft = build_recipe("tiny_puzzle_sft_cpu", [f"output_dir={tmp_path / 'tiny_puzzle_sft_cpu'}"])
    assert grpo.init_from_recipe == "tiny_puzzle_sft_cpu"
    assert grpo.init_checkpoint == sft.checkpoint.save_dir


def test_shipped_model_configs_have_published_sizes() -> None:
    nano = load_hf_config(model_config_path(NANO_8B_CONFIG))
    assert (nano.num_hidden_layers, nano.hidden_size, nano.num_attention_heads, nano.vocab_size) == (
        32,
        4096,
        32,
        128256,
    )
    assert set(nano.architecture()) == {("gqa", 8, "swiglu", 14336)}
    assert nano.rope_theta == 500000.0 and nano.rope_scaling["rope_type"] == "llama3"

    super_cost = estimate_cost(load_hf_config(model_config_path(SUPER_49B_CONFIG)))
    assert super_cost.total_params == 49_867_145_216
    assert super_cost.kv_cache_bytes_per_token == 200_704

    ultra = load_hf_config(model_config_path(ULTRA_253B_CONFIG))
    arch = ultra.architecture()
    assert len(arch) == 162 and ultra.hidden_size == 16384 and ultra.num_attention_heads == 128
    assert sum(a == "gqa" for a, *_ in arch) == 64
    assert {kv for a, kv, *_ in arch if a == "gqa"} == {8}
    assert sum(a == "no_op" for a, *_ in arch) == 98
    assert sum(f == "no_op" for *_, f, _w in arch) == 81
    assert max(w or 0 for *_, w in arch) == 425_984
    assert 250e9 < estimate_cost(ultra).total_params < 256e9
    assert "RECONSTRUCTION" in ultra.hf_extra["_description"]
