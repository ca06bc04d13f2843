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


ONE_CPU_PROCESS = [
    "model.config_path=null",
    "model.params_dtype=float32",
    "model.seq_length=256",
    "optimizer.bf16=false",
    "parallel.tensor_model_parallel_size=1",
    "parallel.pipeline_model_parallel_size=1",
    "parallel.context_parallel_size=1",
    "parallel.sequence_parallel=false",
    "parallel.pipeline_layout=null",
    "parallel.use_distributed_optimizer=false",
    "cluster.nodes=1",
    "cluster.devices_per_node=1",
    "cluster.device=cpu",
    "recompute=none",
    "torch_threads=2",
    "data.splits=[]",
]
"""A paper recipe's layout and precision scaled down to one CPU process (nothing else changes)."""

MEGATRON_ROLLOUTS = [
    "generation.engine=megatron",
    "generation.tensor_model_parallel_size=1",
    "generation.fp8=false",
    "generation.max_num_seqs=null",
    "generation.kv_cache_dtype=auto",
    "generation.gpu_memory_utilization=0.6",
    "generation.max_new_tokens=64",
    "rewards=[{'name': 'math'}, {'name': 'mcq'}]",
]
"""RL generation by the CPU-capable megatron engine, with the rewards the fixture's RL rows name."""


def paper_on_fixture(name: str, fixture, *overrides: str) -> RecipeConfig:
    """Paper recipe ``name`` on the fixture checkpoint and Post-Training-format data, one CPU process."""
    config = build_recipe(name)
    data = fixture.sft_dir if config.task == "sft" else fixture.rl["train"]
    scaled = [*ONE_CPU_PROCESS, f"model.checkpoint={fixture.checkpoint}", f"data.path={data}"]
    online_rpo = config.task == "rpo" and config.preference is not None and config.preference.mode == "online"
    if config.is_rl or online_rpo:
        scaled += MEGATRON_ROLLOUTS
        if config.sampler is not None:
            scaled.append("sampler.drop_pass_rate_at_least=null")
    return build_recipe(name, [*scaled, *overrides])
