"""Tiny runs on CrossThink-style blends: GRPO on an as-is math file + an MCQ-templated file; SFT on two files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from nemotron_plugins.rl.controller import run_grpo
from tests.run_configs import tiny_grpo


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_grpo_trains_on_a_weighted_blend_of_math_and_mcq_sources(tmp_path, capsys) -> None:
    think = "detailed thinking on"
    math_rows = [
        {
            "input": [{"role": "user", "content": f"{a}+{a + 3}=?"}],
            "system_prompt": think,
            "ground_truth": str(2 * a + 3),
        }
        for a in range(10, 22)
    ]
    math_rows.append(
        {"input": [{"role": "user", "content": "Say hi"}], "system_prompt": think, "ground_truth": "hi there friend"}
    )
    mcq_rows = [
        {
            "question": f"{a}*2=?",
            "options": [str(2 * a), str(2 * a + 1), str(a)],
            "answer": "A",
            "system_prompt": think,
        }
        for a in range(10, 22)
    ]
    mcq_rows.append({"question": "No options?", "answer": "A", "system_prompt": think})
    blend = (
        f"data.blend=[{{'path': '{_jsonl(tmp_path / 'math.jsonl', math_rows)}', 'weight': 1, 'reward': 'math'}}, "
        f"{{'path': '{_jsonl(tmp_path / 'mcq.jsonl', mcq_rows)}', 'weight': 3, 'template': 'mcq', 'reward': 'mcq', "
        "'domain': 'science'}]"
    )
    out = tmp_path / "run"
    config = tiny_grpo(
        out,
        "data.dataset=post_training",
        "data.synthetic=null",
        "rewards=[{'name': 'math'}, {'name': 'think_format', 'weight': 0.5}, {'name': 'mcq'}]",
        blend,
        "data.num_train_samples=8",
        "data.max_seq_length=200",
        "model.seq_length=256",
        "generation.max_new_tokens=8",
        "train_steps=2",
        "checkpoint.save_interval=0",
    )
    result = run_grpo(config)
    assert result.steps == 2 and len(result.history) == 2

    printed = capsys.readouterr().out
    assert "data blend: 8 rows from 2 sources" in printed
    report = json.loads((out / "data_blend_report.json").read_text())
    math_source, mcq_source = report["sources"]
    assert (math_source["kept"], math_source["dropped"], math_source["drawn"]) == (12, {"unverifiable": 1}, 2)
    assert (mcq_source["kept"], mcq_source["dropped"], mcq_source["drawn"]) == (12, {"no_options": 1}, 6)
    assert report["domains"]["science"]["drawn"] == 6
    # The rows the run trained on are the blend's: ids of both sources in the sampled proportion.
    from nemotron_plugins.rl.controller import load_prompt_rows

    rows, _ = load_prompt_rows(config)
    assert Counter(r["reward"] for r in rows) == {"math": 2, "mcq": 6}


def test_sft_trains_on_a_weighted_blend_of_post_training_files(tmp_path, capsys) -> None:
    from nemotron_plugins.sft.trainer import run_sft
    from tests.run_configs import tiny_sft

    def rows(a0: int, category: str) -> list[dict]:
        return [
            {
                "input": [{"role": "user", "content": f"{a}+1=?"}],
                "output": str(a + 1),
                "reasoning": "off",
                "system_prompt": "detailed thinking off",
                "category": category,
            }
            for a in range(a0, a0 + 10)
        ]

    first, second = _jsonl(tmp_path / "a.jsonl", rows(10, "math")), _jsonl(tmp_path / "b.jsonl", rows(50, "code"))
    out = tmp_path / "sft"
    config = tiny_sft(
        out,
        "data.dataset=post_training",
        "data.synthetic=null",
        "data.reasoning=both",
        f"data.blend=[{{'path': '{first}', 'weight': 1}}, {{'path': '{second}', 'weight': 3}}]",
        "data.num_train_samples=8",
        "train_steps=2",
    )
    result = run_sft(config)
    assert len(result.losses) == 2
    printed = capsys.readouterr().out
    assert "8 examples from data.blend (2 sources)" in printed
    report = json.loads((out / "data_blend_report.json").read_text())
    assert [s["drawn"] for s in report["sources"]] == [2, 6]
