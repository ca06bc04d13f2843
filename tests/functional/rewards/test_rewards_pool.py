"""The worker pool: hung, crashing and memory-hungry samples are contained; results stay in input order."""

from __future__ import annotations

import pytest
from rewards_hostile import MisbehavingReward

from nemotron_plugins.rewards.base import RewardSample, RewardStatus, build_reward
from nemotron_plugins.rewards.math import MathReward
from nemotron_plugins.rewards.pool import PooledReward

pytestmark = pytest.mark.timeout(120)


def samples(texts):
    return [RewardSample(completion=t) for t in texts]


def test_hung_worker_is_killed_replaced_and_order_kept():
    texts = ["a", "bb", "hang", "ccc", "sleep", "dddd", "eeeee"] + ["x" * i for i in range(1, 20)]
    with PooledReward(MisbehavingReward(), workers=2, timeout_s=2.0, chunk_size=3) as pool:
        results = pool.score(samples(texts))
        assert len(results) == len(texts)
        for text, result in zip(texts, results, strict=True):
            if text in ("hang", "sleep"):
                assert result.status is RewardStatus.TIMEOUT
                assert "longer than 2 s" in result.message
            else:
                assert result.ok and result.score == len(text)
        assert pool.killed == 2
        # The pool recovered: a second batch runs on live workers, with the same (deterministic) outcome.
        again = pool.score(samples(texts))
        assert [(r.score, r.status) for r in again] == [(r.score, r.status) for r in results]
        assert len(pool._pool) == 2 and all(w.proc.poll() is None for w in pool._pool)


def test_crash_raise_and_memory_hog_become_statuses():
    texts = ["ok", "crash", "raise", "hog", "fine"]
    with PooledReward(MisbehavingReward(), workers=2, timeout_s=20, memory_limit_mb=256) as pool:
        results = pool.score(samples(texts))
    assert [r.status for r in results] == [
        RewardStatus.OK,
        RewardStatus.ERROR,
        RewardStatus.ERROR,
        RewardStatus.ERROR,
        RewardStatus.OK,
    ]
    assert "exit code 7" in results[1].message
    assert "told to raise" in results[2].message
    assert "memory" in results[3].message.lower()
    assert [results[0].score, results[4].score] == [2.0, 4.0]


def test_work_is_spread_over_workers():
    with PooledReward(MisbehavingReward(), workers=2, timeout_s=20, chunk_size=1) as pool:
        pool.score(samples(["x"]))  # workers are up
        results = pool.score(samples(["nap"] * 40))
    assert len({r.components["pid"] for r in results}) == 2


def test_pooled_math_matches_serial_and_times_out_a_slow_expansion():
    serial = MathReward()
    batch = [RewardSample(completion=f"<think></think>\\boxed{{{i}/2}}", ground_truth=str(i / 2)) for i in range(12)]
    slow = RewardSample(completion="\\boxed{(x+1)^{9999}}", ground_truth="x^{9999}")
    batch.insert(4, slow)
    with build_reward({"pool": {"reward": "math", "timeout_s": 600}, "workers": 2, "timeout_s": 3}) as pooled:
        results = pooled.score(batch)
    assert results[4].status is RewardStatus.TIMEOUT
    rest = [r for i, r in enumerate(results) if i != 4]
    assert [r.score for r in rest] == [r.score for r in serial.score(batch[:4] + batch[5:])] == [1.0] * 12


def test_bad_pool_options():
    with pytest.raises(ValueError, match="workers"):
        PooledReward(MathReward(), workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        PooledReward(MathReward(), timeout_s=0)
    pool = PooledReward(MathReward(), workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(samples(["1"]))
