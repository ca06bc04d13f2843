"""The paper recipes' code path end to end on CPU with real-format inputs.

The fixture (a nemotron-nas checkpoint with every block kind, a byte-level BPE tokenizer, Post-Training-format rows)
goes through the Ultra SFT recipe, then the Ultra GRPO recipe starting from the SFT output, then
``nemotron-plugins export``; the exported Hugging Face checkpoint, loaded back into the Megatron model, gives the
trained policy's logits. Only the layout and sizes are scaled down (one CPU process, a few steps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.dispatch import run_recipe

ULTRA_SFT = "llama_nemotron_ultra_253b_sft_576gpu_h100_bf16"
ULTRA_GRPO = "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16"

SCALED_DOWN = [
    "model.config_path=null",
    "model.params_dtype=float32",
    "model.seq_length=256",
    "data.max_seq_length=192",
    "data.splits=[]",
    "optimizer.bf16=false",
    "optimizer.lr=1e-4",
    "optimizer.warmup_steps=1",
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
]
"""Only the layout, the sizes and the precision change: trainers, data readers and rewards are the paper's."""


@pytest.mark.slow
def test_sft_then_grpo_then_export_reloads_to_the_same_logits(tmp_path: Path) -> None:
    from nemotron_plugins.fixtures import write_fixtures

    fixture = write_fixtures(tmp_path / "fixture")
    runs = tmp_path / "runs"

    sft = build_recipe(
        ULTRA_SFT,
        [
            *SCALED_DOWN,
            f"output_dir={runs / 'sft'}",
            f"model.checkpoint={fixture.checkpoint}",
            f"data.path={fixture.sft_dir}",
            "train_steps=4",
            "micro_batch_size=2",
            "global_batch_size=4",
        ],
    )
    sft_result = run_recipe(sft)
    assert sft_result.steps_done == 4
    losses = list(sft_result.losses.values())
    assert all(torch.isfinite(torch.tensor(losses)))

    grpo = build_recipe(
        ULTRA_GRPO,
        [
            *SCALED_DOWN,
            f"output_dir={runs / 'grpo'}",
            "model.checkpoint=null",
            f"init_checkpoint={runs / 'sft' / 'checkpoints'}",
            f"data.path={fixture.rl['train']}",
            f"data.eval_path={fixture.rl['validation']}",
            "data.max_seq_length=128",
            "evaluation.num_samples=4",
            "evaluation.accuracy_reward=math",
            "generation.engine=megatron",
            "generation.tensor_model_parallel_size=1",
            "generation.fp8=false",
            "generation.max_new_tokens=16",
            "algorithm.num_prompts_per_rollout=2",
            "algorithm.num_generations=4",
            "algorithm.skip_uniform_groups=false",
            "rewards=[{'name': 'math'}, {'name': 'mcq'}, {'name': 'think_format', 'weight': 0.5}]",
            "sampler.pass_rate_responses=1",
            "sampler.drop_pass_rate_at_least=null",
            "train_steps=2",
            "micro_batch_size=4",
            "global_batch_size=8",
        ],
    )
    grpo_result = run_recipe(grpo)
    assert grpo_result.steps == 2 and grpo_result.after
    assert {"reward/math", "reward/mcq", "reward/think_format", "loss"} <= set(grpo_result.history[-1])

    hf = tmp_path / "hf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nemotron_plugins.cli.main",
            "export",
            str(runs / "grpo" / "checkpoints"),
            "--hf",
            str(hf),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and "block_configs" in config
    assert (hf / "tokenizer.json").is_file() and (hf / "generation_config.json").is_file()

    # The exported checkpoint, loaded into the Megatron model, gives the trained policy's logits.
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import load_hf_checkpoint
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import distributed_context
    from nemotron_plugins.training.setup import read_init_checkpoint

    arch = load_hf_config(hf)
    tokens = torch.randint(0, arch.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(24).expand(2, 24)
    with distributed_context(ParallelConfig(), seed=0):
        trained = build_puzzle_model(arch, seq_length=256, perform_initialization=False)
        trained.load_state_dict(read_init_checkpoint(runs / "grpo" / "checkpoints").state)
        reloaded = build_puzzle_model(arch, seq_length=256, perform_initialization=False)
        load_hf_checkpoint(reloaded, hf, progress=False)
        with torch.no_grad():
            a = trained(tokens, positions, None)[..., : arch.vocab_size]
            b = reloaded(tokens, positions, None)[..., : arch.vocab_size]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
