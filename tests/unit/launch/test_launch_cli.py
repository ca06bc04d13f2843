"""The `recipes`, `train` and `launch` commands (fast paths: no training, no NeMo-Run submission)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_plugins.cli.main import main

REPO = Path(__file__).resolve().parents[3]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # fail() exits
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_recipes_list(capsys) -> None:
    code, out, _ = run_cli(capsys, "recipes", "list")
    assert code == 0
    assert "tiny_puzzle_grpo_cpu" in out and "TP8 PP18 CP2 DP2 +SP on 72x8 cuda" in out


def test_recipes_show_json_and_yaml(capsys) -> None:
    code, out, _ = run_cli(capsys, "recipes", "show", "tiny_puzzle_sft_cpu", "optimizer.lr=0.002", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["optimizer"]["lr"] == 0.002 and data["task"] == "sft"
    code, out, _ = run_cli(capsys, "recipes", "show", "--format", "yaml", "tiny_puzzle_sft_cpu", "seed=7")
    assert code == 0 and "seed: 7" in out


def test_recipes_show_unknown_key(capsys) -> None:
    code, _, err = run_cli(capsys, "recipes", "show", "tiny_puzzle_sft_cpu", "optimiser.lr=1")
    assert code == 2 and "did you mean optimizer.lr" in err


def test_recipes_validate_reports_and_exits_nonzero(capsys) -> None:
    code, out, _ = run_cli(capsys, "recipes", "validate", "tiny_puzzle_sft_cpu")
    assert code == 0 and out.startswith("ok")
    code, out, _ = run_cli(
        capsys,
        "recipes",
        "validate",
        "tiny_puzzle_sft_cpu",
        "--set",
        "parallel.tensor_model_parallel_size=8",
        "--set",
        "cluster.devices_per_node=8",
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert not report["ok"]
    assert "layer 0 has 2 KV heads, not divisible by tensor_model_parallel_size=8" in report["errors"]


def test_train_dry_run_in_process_and_torchrun(capsys) -> None:
    code, out, _ = run_cli(capsys, "train", "tiny_puzzle_sft_cpu", "train_steps=1", "--dry-run")
    assert code == 0 and "(in process) sft trainer" in out
    code, out, _ = run_cli(
        capsys, "train", "--dry-run", "tiny_puzzle_sft_cpu", "cluster.devices_per_node=2", "micro_batch_size=32"
    )
    assert code == 0
    cmd = shlex.split(out.strip())
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[-4:] == ["train", "tiny_puzzle_sft_cpu", "cluster.devices_per_node=2", "micro_batch_size=32"]


def test_train_refuses_invalid_and_multinode(capsys) -> None:
    code, _, err = run_cli(capsys, "train", "tiny_puzzle_sft_cpu", "parallel.sequence_parallel=true")
    assert code == 2 and "sequence_parallel=true needs tensor_model_parallel_size > 1" in err
    code, _, err = run_cli(capsys, "train", "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16", "--dry-run")
    assert code == 2 and "model.checkpoint is not set" in err and "data.path is not set" in err
    code, _, err = run_cli(
        capsys, "train", "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16", "--dry-run", "--skip-validation"
    )
    assert code == 2 and "needs 72 nodes" in err


def test_launch_local_dry_run(capsys, tmp_path) -> None:
    pytest.importorskip("nemo_run")
    code, out, _ = run_cli(
        capsys, "launch", "tiny_puzzle_sft_cpu", "--executor", "local", "--dry-run", f"output_dir={tmp_path / 'r'}"
    )
    assert code == 0
    cmd = shlex.split(out.strip())
    assert cmd[1:5] == ["-m", "nemotron_plugins.cli.main", "train", "tiny_puzzle_sft_cpu"]
    assert f"output_dir={tmp_path / 'r'}" in cmd and "parallel.tensor_model_parallel_size=1" in cmd


def test_launch_rejects_unknown_option(capsys) -> None:
    code, _, err = run_cli(capsys, "launch", "tiny_puzzle_sft_cpu", "seed=1", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err


def test_every_launcher_script_parses() -> None:
    scripts = sorted(p for p in (REPO / "launchers").iterdir() if p.suffix in (".sh", ".sbatch"))
    assert scripts, "launchers/ has no scripts"
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_sbatch_launcher_requires_recipe() -> None:
    # Outside Slurm the script stops at its first check and says what to set.
    result = subprocess.run(
        ["bash", str(REPO / "launchers" / "train.sbatch")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0 and "set RECIPE" in result.stderr


def test_validate_script(tmp_path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "launchers" / "validate.sh"), "tiny_puzzle_sft_cpu", "seed=3"],
        capture_output=True,
        text=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
