"""``ifeval`` against Google's IFEval reference checker on Google's published GPT-4 sample responses.

The data (``data/ifeval_gpt4_sample_reference.jsonl.gz``, see ``data/README.md``) holds the 541 prompts' instructions,
GPT-4's responses and the reference checker's strict verdict for each of the 834 instructions. Agreement is counted
per instruction; the issue's target is 99.5 %, and every disagreement must be listed in :data:`KNOWN_DIFFERENCES`
with its reason (none remain).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.ifeval import VERIFIERS, IFEvalReward

DATA = Path(__file__).parent / "data" / "ifeval_gpt4_sample_reference.jsonl.gz"

#: (prompt key, instruction id) -> why we differ from the reference checker. Empty: we agree on every instruction.
KNOWN_DIFFERENCES: dict[tuple[int, str], str] = {}


def load_rows() -> list[dict]:
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def disagreements(rows: list[dict]) -> tuple[int, list[tuple[int, str, bool, bool]]]:
    """Instructions checked and ``(key, instruction_id, ours, reference)`` for each one where we differ."""
    reward = IFEvalReward()
    samples = [
        RewardSample(
            completion=row["response"],
            ground_truth={"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]},
        )
        for row in rows
    ]
    checked, differ = 0, []
    for row, result in zip(rows, reward.score(samples), strict=True):
        assert result.status is RewardStatus.OK, (row["key"], result)
        ours = [v == 1.0 for v in result.components.values()]
        assert len(ours) == len(row["reference"])
        for iid, got, ref in zip(row["instruction_id_list"], ours, row["reference"], strict=True):
            checked += 1
            if got != ref:
                differ.append((row["key"], iid, got, ref))
    return checked, differ


def test_the_vendored_reference_is_intact():
    rows = load_rows()
    assert len(rows) == 541
    verdicts = [v for row in rows for v in row["reference"]]
    assert len(verdicts) == 834 and sum(verdicts) == 698  # GPT-4: 83.7 % of instructions followed (strict)
    assert sum(all(row["reference"]) for row in rows) == 417
    types = {iid for row in rows for iid in row["instruction_id_list"]}
    assert len(types) == 25 and types <= set(VERIFIERS)


def test_instruction_level_agreement_with_googles_checker(langdetect):
    checked, differ = disagreements(load_rows())
    assert checked == 834
    unexplained = [d for d in differ if (d[0], d[1]) not in KNOWN_DIFFERENCES]
    assert not unexplained, unexplained
    agreement = (checked - len(differ)) / checked
    assert agreement >= 0.995, f"{checked - len(differ)}/{checked} = {agreement:.2%}"
    assert len(differ) == len(KNOWN_DIFFERENCES)  # a fixed difference must leave the list too
