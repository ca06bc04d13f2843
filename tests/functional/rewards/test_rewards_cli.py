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


def test_cli_bounds_scoring_by_default():
    # No --workers: the default pool still kills the sample that would hang an in-process scorer.
    rows = [
        {"completion": "\\boxed{4}", "ground_truth": "4"},
        {"completion": "\\boxed{(x+1)^{9999}}", "ground_truth": "x^{9999}"},
        {"completion": "\\boxed{5}", "ground_truth": "4"},
    ]
    proc = run_cli(["--reward", "math", "--timeout", "3"], "".join(json.dumps(r) + "\n" for r in rows))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["status"] for r in out] == ["ok", "timeout", "ok"]
    assert [out[0]["score"], out[2]["score"]] == [1.0, 0.0]


def test_cli_in_process_is_explicit_and_states_the_risk():
    from nemotron_plugins.cli.main import build_parser
    from nemotron_plugins.cli.rewards import _build
    from nemotron_plugins.rewards.math import MathReward
    from nemotron_plugins.rewards.pool import PooledReward

    parser = build_parser()
    args = parser.parse_args(["rewards", "score", "--reward", "math"])
    reward = _build(args)
    assert isinstance(reward, PooledReward) and reward.workers == 2
    args = parser.parse_args(["rewards", "score", "--reward", "math", "--in-process"])
    assert isinstance(_build(args), MathReward)
    for extra in (["--workers", "2"], ["--timeout", "5"]):
        with pytest.raises(SystemExit):
            _build(parser.parse_args(["rewards", "score", "--reward", "math", "--in-process", *extra]))
    with pytest.raises(SystemExit):
        _build(parser.parse_args(["rewards", "score", "--reward", "math", "--workers", "0"]))
    proc = subprocess.run(
        [sys.executable, "-m", "nemotron_plugins.cli.main", "rewards", "score", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "RISK: score in this process with no time or memory bound" in " ".join(proc.stdout.split())
