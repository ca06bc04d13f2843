"""``launchers/judge_server.sbatch`` outside Slurm, in its "existing URL" mode: it health-checks the judge, writes the
URL file and submits training with the judge wired in; an unhealthy judge fails the job and submits nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_plugins.launch.build import build_recipe

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "launchers" / "judge_server.sbatch"
SERVER = Path(__file__).with_name("fake_openai_server.py")
RECIPE = "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16"


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run_launcher(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the launcher with a fake ``sbatch`` that records its arguments and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "sbatch.txt"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" "RECIPE=$RECIPE" "OVERRIDES=$OVERRIDES" > {record}\n')
    fake.chmod(0o755)
    full_env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHON": sys.executable,
        "WORKDIR": str(REPO),
        "JUDGE_URL_FILE": str(tmp_path / "judge_url.txt"),
        "JUDGE_READY_TIMEOUT_S": "3",
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    full_env.update(env)
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, cwd=REPO)
    return result, record


def test_healthy_judge_writes_url_and_submits_training_wired_to_it(server, tmp_path):
    result, record = run_launcher(
        tmp_path,
        JUDGE_URL=server,
        JUDGE_SERVED_NAME="judge",
        RECIPE=RECIPE,
        OVERRIDES="train_steps=2",
        TRAIN_SBATCH_ARGS="--nodes=72 --account=acct",
    )
    assert result.returncode == 0, result.stderr
    assert "judge healthy" in result.stdout
    assert (tmp_path / "judge_url.txt").read_text().strip() == server
    args = record.read_text().splitlines()
    assert args[:3] == ["--nodes=72", "--account=acct", "--export=ALL"]
    assert args[3].endswith("launchers/train.sbatch") and args[4] == f"RECIPE={RECIPE}"
    overrides = args[5].removeprefix("OVERRIDES=").split()
    assert overrides[0] == "train_steps=2"
    # The overrides are ones the recipe accepts, and they point the llm_judge reward at the healthy judge.
    config = build_recipe(RECIPE, overrides)
    judge = config.rewards[0]
    assert judge.name == "llm_judge"
    assert judge.options["base_url"] == server and judge.options["model"] == "judge"
    assert judge.options["wait_ready_s"] == 3


def test_unhealthy_judge_fails_and_submits_nothing(server, tmp_path):
    result, record = run_launcher(tmp_path, JUDGE_URL=server, JUDGE_SERVED_NAME="chatty", RECIPE=RECIPE)
    assert result.returncode == 1
    assert "not a lone YES/NO" in result.stderr and "no training submitted" in result.stderr
    assert not record.exists() and not (tmp_path / "judge_url.txt").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result, record = run_launcher(tmp_path, JUDGE_URL=f"http://127.0.0.1:{port}/v1", RECIPE=RECIPE)
    assert result.returncode == 1 and "connection refused" in result.stderr and not record.exists()
