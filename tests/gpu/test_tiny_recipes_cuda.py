"""The tiny SFT -> GRPO recipes end to end on CUDA (the same trainers and stack as on CPU): batches, generation,
rewards and evaluation on the GPU, held-out accuracy rising under GRPO. Run on a GPU machine: ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.dispatch import run_recipe

pytestmark = pytest.mark.gpu

SFT_STEPS = 800  # the recipes' own schedules (400 SFT steps leave a policy too weak for 30 GRPO steps to lift)
GRPO_STEPS = 80


def test_sft_then_grpo_on_cuda(tmp_path) -> None:
    assert torch.cuda.is_available()
    common = ["cluster.device=cuda", "logging.log_interval=100"]
    sft = build_recipe(
        "tiny_puzzle_sft_cpu", [*common, f"output_dir={tmp_path / 'tiny_puzzle_sft_cpu'}", f"train_steps={SFT_STEPS}"]
    )
    sft_result = run_recipe(sft)
    assert sft_result.steps_done == SFT_STEPS and sft_result.eval is not None
    losses = list(sft_result.losses.values())
    assert losses[-1] < losses[0] / 4, (losses[0], losses[-1])
    assert sft_result.eval["on/think_format"] > 0.9

    grpo = build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            *common,
            f"output_dir={tmp_path / 'tiny_puzzle_grpo_cpu'}",
            f"train_steps={GRPO_STEPS}",
            "evaluation.interval=0",
        ],
    )
    result = run_recipe(grpo)
    assert result.steps == GRPO_STEPS
    print(f"[gpu] SFT eval {sft_result.eval}; GRPO before {result.before}; after {result.after}", flush=True)
    assert result.after["accuracy_sampled"] > result.before["accuracy_sampled"] + 0.1
    assert torch.cuda.max_memory_allocated() > 0
