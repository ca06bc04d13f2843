"""A small GRPO run (random-init tiny Puzzle policy, synthetic addition) that checkpoints every step.

``python grpo_kill_resume_run.py OUTPUT_DIR STEPS``: used by the kill-and-resume test, which SIGKILLs it mid-run and
starts it again on the same directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root, for tests.run_configs


def main(output_dir: str, steps: int) -> None:
    """Run (or resume) the tiny GRPO run in ``output_dir`` for ``steps`` steps."""
    from nemotron_plugins.rl.trainer import run_grpo
    from tests.run_configs import tiny_grpo

    torch.set_num_threads(1)
    run_grpo(
        tiny_grpo(
            output_dir,
            f"train_steps={steps}",
            "global_batch_size=4",
            "micro_batch_size=2",
            "generation.max_new_tokens=10",
            "model.seq_length=128",
            "data.max_seq_length=96",
            "checkpoint.keep_last=2",
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
