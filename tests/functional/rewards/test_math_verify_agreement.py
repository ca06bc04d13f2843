"""``math`` against Math-Verify's own regression cases (vendored in ``tests/unit/rewards/data``, Apache-2.0).

Every ``(gold, pred, expected)`` row of Math-Verify's ``compare_strings`` tests is scored with the gold *as written*
as ground truth and the prediction as the completion. The two rows we disagree on are listed with the reason; any
other disagreement fails the test, and so does agreement below 97%.
"""

from __future__ import annotations

import json
from pathlib import Path

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.math import MathReward

CASES = Path(__file__).parents[2] / "unit" / "rewards" / "data" / "math_verify_cases.jsonl"

#: (source test, gold prefix) -> why we differ on purpose.
KNOWN_DIFFERENCES = {
    ("tests/test_all.py::test_complex_math_expressions", "$\\begin{pmatrix}-\\\x0crac"): (
        "the upstream case is a non-raw Python string, so '\\f' became a form-feed control character; we reject "
        "control characters in a ground truth as invalid input"
    ),
    ("tests/test_numina_cases.py::test_numina_cases", "\\\\boxed{W(n) = 1"): (
        "the gold has an unclosed \\boxed{ (unbalanced braces): invalid input for us, a lenient parse upstream"
    ),
}


def load_cases() -> list[dict]:
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]


def agreement(cases: list[dict]) -> tuple[int, list[tuple[dict, object]]]:
    """How many cases agree, and the disagreeing cases with what we returned (a score, or the failure status)."""
    rewards: dict[tuple, MathReward] = {}
    misses = []
    for case in cases:
        key = (case.get("float_rounding", 6), case.get("allow_set_relation_comp", False))
        # A generous math-verify timeout: on a loaded machine its alarm must not turn a slow parse into a "no".
        reward = rewards.setdefault(
            key, MathReward(float_rounding=key[0], allow_set_relation_comp=key[1], timeout_s=60.0)
        )
        [result] = reward.score([RewardSample(completion=case["pred"], ground_truth=case["gold"])])
        got = result.score if result.status is RewardStatus.OK else result.status.value
        if got != case["expected"]:
            misses.append((case, got))
    return len(cases) - len(misses), misses


def test_agreement_with_math_verify_regression_cases():
    cases = load_cases()
    assert len(cases) == 249
    agreed, misses = agreement(cases)
    unexplained = [
        (c["source"], c["gold"][:60], c["pred"][:60], c["expected"], got)
        for c, got in misses
        if not any(c["source"] == src and c["gold"].startswith(prefix) for src, prefix in KNOWN_DIFFERENCES)
    ]
    assert not unexplained, unexplained
    assert agreed / len(cases) >= 0.97, f"{agreed}/{len(cases)}"
