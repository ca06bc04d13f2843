"""The GRPO trainer: a 2-step run writes the expected metrics; an interrupted-then-resumed run matches a straight one."""

from __future__ import annotations

import torch

from nemotron_plugins.rl.trainer import run_grpo
from nemotron_plugins.runtime.metrics import read_jsonl
from tests.run_configs import tiny_grpo

EXPECTED = {
    "reward/total",
    "reward/math",
    "reward/think_format",
    "accuracy",
    "advantage/mean",
    "advantage/std",
    "groups/skipped_fraction",
    "response_length/mean",
    "tokens_per_s/rollout",
    "lr",
}


def _config(out, steps: int, *overrides: str):
    torch.set_num_threads(1)
    return tiny_grpo(out, f"train_steps={steps}", *overrides)


def _strip(rows):
    return [
        {k: v for k, v in r.items() if k != "timestamp" and not k.startswith(("time/", "tokens_per_s/"))} for r in rows
    ]


def test_two_steps_write_metrics(tmp_path):
    result = run_grpo(_config(tmp_path, 2))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert EXPECTED <= set(rows[-1])
    assert "loss" in rows[-1] and "clip_fraction" in rows[-1]
    assert result.steps == 2 and (tmp_path / "checkpoints").exists()


def test_resume_matches_uninterrupted(tmp_path):
    straight = run_grpo(_config(tmp_path / "a", 3))
    interrupted = run_grpo(_config(tmp_path / "b", 3, "stop_after_steps=2"))
    assert interrupted.steps == 2
    resumed = run_grpo(_config(tmp_path / "b", 3))
    assert resumed.resumed_from == 2
    assert _strip(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == _strip(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert _strip(straight.history)[-1] == _strip(resumed.history)[-1]
