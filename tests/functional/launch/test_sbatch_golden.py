"""NeMo-Run renders our sbatch scripts exactly as the golden files say; the scripts are valid bash.

Regenerate the golden files after an intended change with ``UPDATE_GOLDEN=1 python -m pytest tests/functional/launch``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nemo_run")

from nemotron_plugins.launch.build import build_recipe  # noqa: E402
from nemotron_plugins.launch.nemo_run_launch import SlurmOptions, render_sbatch  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
ULTRA = "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16"
OPTIONS = dict(account="acct", partition="batch", job_dir="/lustre/jobs", container_mounts=["/lustre:/lustre"])

CASES = {
    "ultra_253b_grpo_576gpu.sbatch": (ULTRA, [], SlurmOptions(**OPTIONS)),
    "super_49b_sft_64gpu_2nodes.sbatch": (
        "llama_nemotron_super_49b_sft_64gpu_h100_bf16",
        ["cluster.nodes=2", "global_batch_size=64", "output_dir=/lustre/runs/super sft"],
        SlurmOptions(**OPTIONS, env={"NCCL_DEBUG": "WARN"}, time="01:00:00"),
    ),
    "tiny_grpo_cpu_no_container.sbatch": ("tiny_puzzle_grpo_cpu", ["train_steps=5"], SlurmOptions(**OPTIONS)),
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_rendered_sbatch_matches_golden(golden: str, tmp_path: Path) -> None:
    recipe, overrides, options = CASES[golden]
    script = render_sbatch(recipe, build_recipe(recipe, overrides), overrides, options)
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(script, encoding="utf-8")
    assert script == path.read_text(encoding="utf-8"), f"rendered script differs from {path}"
    rendered = tmp_path / golden
    rendered.write_text(script)
    result = subprocess.run(["bash", "-n", str(rendered)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ultra_dry_run_through_the_cli() -> None:
    command = [
        sys.executable,
        "-m",
        "nemotron_plugins.cli.main",
        "launch",
        ULTRA,
        "--executor",
        "slurm",
        "--dry-run",
        "--account",
        "acct",
        "--job-dir",
        "/lustre/jobs",
    ]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "model.checkpoint is not set" in refused.stderr and "data.path is not set" in refused.stderr
    # Rendering the script for a cluster whose paths this machine cannot see: validation skipped explicitly.
    result = subprocess.run([*command, "--skip-validation"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("#!/bin/bash")
    assert "#SBATCH --nodes=72" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=8" in script
    (train_line,) = [line for line in script.splitlines() if " torchrun " in line]
    assert re.search(r"--nnodes 72 --nproc-per-node 8", train_line)
    assert "--rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500" in train_line
    assert "--container-image nvcr.io/nvidia/nemo:25.04" in train_line
    for pin in (
        "parallel.tensor_model_parallel_size=8",
        "parallel.pipeline_model_parallel_size=18",
        "parallel.context_parallel_size=2",
        "parallel.sequence_parallel=true",
        "generation.tensor_model_parallel_size=8",
        "cluster.nodes=72",
    ):
        assert pin in train_line
    assert "submitted" not in result.stderr
