"""Our rewards against other projects' own test cases (vendored in ``data/``, Apache-2.0; see ``data/README.md``).

* TRL's ``accuracy_reward`` / ``reasoning_accuracy_reward`` tests: ``math`` agrees on every row, ``None`` (TRL skips
  the sample: a gold it cannot parse) being our ``invalid_input``.
* Google's IFEval reference checker tests: every instruction-level verdict agrees.

Math-Verify's 249 regression cases run in ``tests/functional/rewards/test_math_verify_agreement.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.ifeval import VERIFIERS, parse_instructions
from nemotron_plugins.rewards.math import MathReward

DATA = Path(__file__).parent / "data"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


TRL = rows("trl_accuracy_cases.jsonl")
IFEVAL = rows("ifeval_cases.jsonl")


@pytest.mark.parametrize("case", TRL, ids=[f"{i}-{c['source'].split('::')[1][:40]}" for i, c in enumerate(TRL)])
def test_trl_accuracy_reward_cases(case):
    [r] = MathReward().score([RewardSample(completion=case["completion"], ground_truth=case["solution"])])
    if case["expected"] is None:
        assert r.status is RewardStatus.INVALID_INPUT, r
    else:
        assert r.status is RewardStatus.OK and r.score == case["expected"], r


def test_ifeval_reference_checker_cases(langdetect):
    assert len(IFEVAL) == 49
    misses = []
    for case in IFEVAL:
        gt = {"instruction_id_list": [case["instruction_id"]], "kwargs": [case["kwargs"]]}
        [(iid, kwargs)] = parse_instructions(gt)
        if bool(VERIFIERS[iid].check(case["response"], **kwargs)) != case["expected"]:
            misses.append((case["source"], case["instruction_id"], case["kwargs"]))
    assert not misses, misses
