"""NeMo-Run end to end: the local executor runs a recipe to completion; the `nemo_run.cli` entry point module
exposes `train` with one factory per recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nemo_run")


@pytest.mark.slow
def test_local_executor_runs_tiny_sft(tmp_path: Path) -> None:
    out_dir = tmp_path / "runs" / "tiny_sft"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nemotron_plugins.cli.main",
            "launch",
            "tiny_puzzle_sft_cpu",
            "--executor",
            "local",
            "train_steps=2",
            "data.num_train_samples=64",
            "evaluation.num_samples=0",
            "micro_batch_size=16",
            "global_batch_size=16",
            f"output_dir={out_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**__import__("os").environ, "NEMORUN_HOME": str(tmp_path / "nemo_run_home"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stderr
    ckpt = out_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "iter_0000002"  # a megatron distributed checkpoint
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert rows, "the trainer wrote no metrics"


def test_nemo_run_cli_entrypoint_builds_recipes() -> None:
    import fiddle as fdl

    from nemotron_plugins.launch import nemo_run_cli
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.registry import RECIPES

    assert sorted(nemo_run_cli.RECIPE_FACTORIES) == RECIPES.names()
    partial = nemo_run_cli.train.cli_entrypoint.parse_partial(
        ["recipe=llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16", "recipe.train_steps=3", "recipe.optimizer.lr=2e-7"]
    )
    built = fdl.build(partial)
    recipe = built.keywords["recipe"]
    assert isinstance(recipe, RecipeConfig)
    assert recipe.train_steps == 3 and recipe.optimizer.lr == 2e-7
    assert recipe.parallel.pipeline_model_parallel_size == 18 and recipe.generation.tensor_model_parallel_size == 8


def test_nemo_run_cli_lists_our_namespace(tmp_path: Path) -> None:
    code = (
        "import nemotron_plugins.launch.nemo_run_cli\n"
        "from nemo_run.cli.api import list_entrypoints\n"
        "print(sorted(list_entrypoints()['nemotron_plugins']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "'train'" in result.stdout


def test_nemo_cli_finds_recipes_through_the_entry_point(tmp_path: Path) -> None:
    """A throwaway dist-info declares the `nemo_run.cli` entry point the package will ship; NeMo-Run's own CLI
    (`nemo nemotron_plugins train ...`) then resolves our recipe factory and applies overrides."""
    import os

    dist = tmp_path / "site" / "nemotron_plugins_ep-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nemotron-plugins-ep\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[nemo_run.cli]\nnemotron_plugins = nemotron_plugins.launch.nemo_run_cli\n")
    code = (
        "import sys\n"
        "sys.argv = ['nemo', 'nemotron_plugins', 'train', 'recipe=tiny_puzzle_sft_cpu', 'recipe.train_steps=3',"
        " '--dryrun', '--yes']\n"
        "from nemo_run.__main__ import app\n"
        "app()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(dist.parent), os.environ.get("PYTHONPATH", "")]),
        "NEMORUN_HOME": str(tmp_path / "home"),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "train_steps=3" in result.stdout and "name='tiny_puzzle_sft_cpu'" in result.stdout
