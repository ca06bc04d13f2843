"""Tiny run configs for tests: the tiny recipes with overrides, exactly as a user would build them."""

from __future__ import annotations

from pathlib import Path

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.recipe_config import RecipeConfig


def tiny_sft(out: str | Path, *overrides: str) -> RecipeConfig:
    """``tiny_puzzle_sft_cpu`` sized for a test: 40 problems of operands 1..99, 96-token rows, no evaluation."""
    return build_recipe(
        "tiny_puzzle_sft_cpu",
        [
            f"output_dir={out}",
            "data.synthetic.problems=40",
            "data.synthetic.heldout_problems=4",
            "data.synthetic.min_value=1",
            "data.synthetic.max_value=99",
            "data.synthetic.corrupt_fraction=0.0",
            "data.max_seq_length=96",
            "model.seq_length=96",
            "optimizer.lr=1e-3",
            "optimizer.warmup_steps=0",
            "evaluation.num_samples=0",
            "evaluation.max_new_tokens=3",
            "evaluation.batch_size=4",
            "logging.log_interval=100",
            "micro_batch_size=2",
            "global_batch_size=4",
            "torch_threads=2",
            "seed=7",
            *overrides,
        ],
    )


def tiny_grpo(out: str | Path, *overrides: str) -> RecipeConfig:
    """``tiny_puzzle_grpo_cpu`` from a random initialisation: 2 prompts x 4 samples, 12 new tokens, 8 prompts."""
    return build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            f"output_dir={out}",
            "init_from_recipe=null",
            "model.init=random",
            "data.synthetic.problems=8",
            "data.synthetic.heldout_problems=0",
            "data.num_train_samples=8",
            "evaluation.num_samples=0",
            "evaluation.interval=0",
            "algorithm.num_prompts_per_rollout=2",
            "algorithm.num_generations=4",
            "algorithm.skip_uniform_groups=false",
            "global_batch_size=8",
            "micro_batch_size=8",
            "generation.max_new_tokens=12",
            "optimizer.lr=1e-3",
            "checkpoint.save_interval=1",
            "torch_threads=1",
            *overrides,
        ],
    )
