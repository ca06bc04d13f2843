"""``nemotron-plugins rewards score`` as a real process: stdin, a worker pool, ordering, bad lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def run_cli(args, stdin):
    return subprocess.run(
        [sys.executable, "-m", "nemotron_plugins.cli.main", "rewards", "score", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_cli_pool_from_stdin_keeps_order_and_times_out_slow_samples():
    rows = []
    for i in range(30):
        rows.append({"completion": f"<think>t</think>\\boxed{{{i}}}", "ground_truth": str(i if i % 3 else i + 1)})
    rows.insert(7, {"completion": "\\boxed{(x+1)^{9999}}", "ground_truth": "x^{9999}"})
    stdin = "".join(json.dumps(r) + "\n" for r in rows)
    proc = run_cli(["--reward", "math", "--workers", "2", "--timeout", "3"], stdin)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == len(rows)
    assert out[7]["status"] == "timeout"
    rest = out[:7] + out[8:]
    assert [r["score"] for r in rest] == [0.0 if i % 3 == 0 else 1.0 for i in range(30)]
    assert all(r["status"] == "ok" for r in rest)


def test_cli_bad_line_exits_with_line_number():
    stdin = json.dumps({"completion": "1", "ground_truth": "1"}) + "\n\n" + '{"completion": 1}\n'
    proc = run_cli(["--reward", "math"], stdin)
    assert proc.returncode == 2
    assert "stdin line 3: 'completion' must be a string" in proc.stderr
    assert proc.stdout == ""
