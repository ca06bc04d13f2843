"""The paper recipes' code path end to end on CPU with real-format inputs.

The fixture (a nemotron-nas checkpoint with every block kind, a byte-level BPE tokenizer, Post-Training-format rows)
goes through the Ultra SFT recipe, then the Ultra GRPO recipe starting from the SFT output, then
``nemotron-plugins export``; the exported Hugging Face checkpoint, loaded back into the Megatron model, gives the
trained policy's logits. Only the layout and sizes are scaled down (``tests.run_configs.paper_on_fixture``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemotron_plugins.launch.dispatch import run_recipe
from tests.run_configs import paper_on_fixture

ULTRA_SFT = "llama_nemotron_ultra_253b_sft_576gpu_h100_bf16"
ULTRA_GRPO = "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16"


@pytest.mark.slow
def test_sft_then_grpo_then_export_reloads_to_the_same_logits(tmp_path: Path) -> None:
    from nemotron_plugins.fixtures import write_fixtures

    fixture = write_fixtures(tmp_path / "fixture")
    runs = tmp_path / "runs"

    common = ["data.max_seq_length=192", "optimizer.lr=1e-4", "optimizer.warmup_steps=1"]
    sft = paper_on_fixture(
        ULTRA_SFT,
        fixture,
        *common,
        f"output_dir={runs / 'sft'}",
        "train_steps=4",
        "micro_batch_size=2",
        "global_batch_size=4",
    )
    sft_result = run_recipe(sft)
    assert sft_result.steps_done == 4
    losses = list(sft_result.losses.values())
    assert all(torch.isfinite(torch.tensor(losses)))

    grpo = paper_on_fixture(
        ULTRA_GRPO,
        fixture,
        *common,
        f"output_dir={runs / 'grpo'}",
        "model.checkpoint=null",
        f"init_checkpoint={runs / 'sft' / 'checkpoints'}",
        f"data.eval_path={fixture.rl['validation']}",
        "data.max_seq_length=128",
        "evaluation.num_samples=4",
        "evaluation.accuracy_reward=math",
        "generation.max_new_tokens=16",
        "algorithm.num_prompts_per_rollout=2",
        "algorithm.num_generations=4",
        "algorithm.skip_uniform_groups=false",
        "rewards=[{'name': 'math'}, {'name': 'mcq'}, {'name': 'think_format', 'weight': 0.5}]",
        "sampler.pass_rate_responses=1",
        "train_steps=2",
        "micro_batch_size=4",
        "global_batch_size=8",
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
    from nemotron_plugins.training.checkpointing import load_checkpoint

    arch = load_hf_config(hf)
    tokens = torch.randint(0, arch.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(24).expand(2, 24)
    with distributed_context(ParallelConfig(), seed=0):
        trained = build_puzzle_model(arch, seq_length=256, perform_initialization=False)
        load_checkpoint(runs / "grpo" / "checkpoints", model=[trained], load_rng=False)
        reloaded = build_puzzle_model(arch, seq_length=256, perform_initialization=False)
        load_hf_checkpoint(reloaded, hf, progress=False)
        with torch.no_grad():
            a = trained(tokens, positions, None)[..., : arch.vocab_size]
            b = reloaded(tokens, positions, None)[..., : arch.vocab_size]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
