"""A small GRPO run (random-init tiny Puzzle policy, synthetic addition) that checkpoints every step.

``python grpo_kill_resume_run.py OUTPUT_DIR STEPS``: used by the kill-and-resume test, which SIGKILLs it mid-run and
starts it again on the same directory.
"""

from __future__ import annotations

import sys

import torch


def main(output_dir: str, steps: int) -> None:
    """Run (or resume) the tiny GRPO run in ``output_dir`` for ``steps`` steps."""
    from nemotron_plugins.rl.config import GRPOConfig
    from nemotron_plugins.rl.trainer import GRPOTrainConfig, run_grpo

    torch.set_num_threads(1)
    run_grpo(
        GRPOTrainConfig(
            grpo=GRPOConfig(
                num_prompts_per_rollout=2,
                num_generations=4,
                global_batch_size=4,
                micro_batch_size=2,
                max_new_tokens=10,
            ),
            train_steps=steps,
            num_train_prompts=8,
            num_heldout_prompts=0,
            pass_rate_samples=1,
            skip_uniform_groups=False,
            lr=1e-3,
            seq_length=128,
            output_dir=output_dir,
            progress=False,
            torch_threads=1,
            save_interval=1,
            keep_last=2,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
