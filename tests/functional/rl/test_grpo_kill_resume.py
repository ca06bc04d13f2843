"""Kill-and-resume with a real signal: a GRPO run SIGKILLed right after a checkpoint and started again on the same
directory ends with exactly the metrics (rewards, loss, KL, clip fraction, grad norm, ...) of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemotron_plugins.runtime.metrics import read_jsonl
from nemotron_plugins.training.checkpointing import latest_checkpoint as latest_step

SCRIPT = Path(__file__).with_name("grpo_kill_resume_run.py")
STEPS = 6
KILL_AFTER = 2


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(STEPS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: megatron's checkpoint-writer process goes down with it
    )


def _strip(rows):
    return [
        {k: v for k, v in r.items() if k != "timestamp" and not k.startswith(("time/", "tokens_per_s/"))} for r in rows
    ]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    straight = _start(tmp_path / "straight")
    out, _ = straight.communicate(timeout=400)
    assert straight.returncode == 0, out[-3000:]

    run = tmp_path / "killed"
    proc = _start(run)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints").exists() and (latest_step(run / "checkpoints") or 0) >= KILL_AFTER:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its checkpoint-writer process, as a node failure would
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = latest_step(run / "checkpoints")
    assert killed_at is not None and KILL_AFTER <= killed_at < STEPS

    resumed = _start(run)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resumed from step {killed_at}" in out
    want = _strip(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    got = _strip(read_jsonl(run / "metrics.jsonl"))
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == want
